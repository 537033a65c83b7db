//! TCP (L4) listeners: a `protocol: tcp` listener forwards bytes to a pool without reading them
//! as HTTP, optionally choosing the pool by the TLS ClientHello's server name (passthrough: the
//! TLS session stays end to end). The knobs are HAProxy's `mode tcp` and Envoy's `tcp_proxy`:
//! a default pool, SNI routes, a connection cap, connect retries, an idle timeout, and on the
//! pool PROXY protocol v2.
//!
//! The checks live here too, so that `validate.rs` only calls them: a tcp listener names pools
//! that exist, carries no HTTP-only setting, and its pools use a balancer that makes sense
//! without HTTP.

use serde::{Deserialize, Serialize};

use crate::model::{Config, Listener};
use crate::{Balancer, HashKey};

/// What a listener speaks to its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2, routed by `routes`.
    #[default]
    Http,
    /// Bytes forwarded to `pool` (or an `sni_routes` match), never parsed.
    Tcp,
}

impl ListenerProtocol {
    pub fn is_http(&self) -> bool {
        *self == Self::Http
    }
}

/// One TLS passthrough route of a tcp listener: connections whose ClientHello names a matching
/// server go to `pool`. The first match wins.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    #[serde(rename = "match")]
    pub matcher: SniMatch,
    pub pool: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniMatch {
    /// A host name (`api.example.com`) or a wildcard for one or more labels in front of a
    /// suffix (`*.example.com`); compared case-insensitively.
    pub sni: String,
}

impl SniMatch {
    /// Whether the ClientHello's server name (already lower-cased) matches.
    pub fn matches(&self, server_name: &str) -> bool {
        let pattern = self.sni.as_str();
        match pattern.strip_prefix('*') {
            // `*.example.com` needs at least one label in front: `example.com` itself is not a
            // match (as in Envoy's server_names and HAProxy's `req.ssl_sni -m end` with a dot).
            Some(suffix) => {
                server_name.len() > suffix.len()
                    && server_name
                        .get(server_name.len() - suffix.len()..)
                        .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
            }
            None => server_name.eq_ignore_ascii_case(pattern),
        }
    }
}

/// PROXY protocol header sent to a pool's endpoints ahead of the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The binary version 2 header (HAProxy's `send-proxy-v2`).
    V2,
}

/// The HTTP-only settings `l` sets to other than their defaults: a tcp listener refuses them
/// rather than silently ignoring a setting the user expects to apply. Values, not keys, are
/// compared, so the effective config (`/config`, every key written out) reads back valid.
fn http_settings(l: &Listener) -> Vec<&'static str> {
    let d: Listener = crate::yaml::from_str("{name: d, address: '0.0.0.0:0'}")
        .expect("a listener of defaults parses");
    [
        ("tls", l.tls.is_some()),
        ("max_header_bytes", l.max_header_bytes != d.max_header_bytes),
        ("max_headers", l.max_headers != d.max_headers),
        (
            "max_concurrent_streams",
            l.max_concurrent_streams != d.max_concurrent_streams,
        ),
        (
            "http2_keepalive_interval",
            l.http2_keepalive_interval != d.http2_keepalive_interval,
        ),
        (
            "http2_keepalive_timeout",
            l.http2_keepalive_timeout != d.http2_keepalive_timeout,
        ),
        ("access_log", l.access_log),
        ("trusted_headers", !l.trusted_headers.is_empty()),
        (
            "path_normalization",
            l.path_normalization != d.path_normalization,
        ),
        ("http3", l.http3),
        ("quic", l.quic != d.quic),
        (
            "forward_client_cert",
            l.forward_client_cert != d.forward_client_cert,
        ),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// The tcp-only settings an HTTP listener `l` sets.
fn tcp_settings(l: &Listener) -> Vec<&'static str> {
    [
        ("pool", l.pool.is_some()),
        ("sni_routes", !l.sni_routes.is_empty()),
        ("max_connections", l.max_connections.is_some()),
        ("connect_retries", l.connect_retries != 1),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// The most connect attempts past the first: each waits up to the pool's connect timeout.
pub const MAX_CONNECT_RETRIES: u32 = 10;

/// One problem: the key path, the message, and a pool name to suggest a correction for.
pub type Problem = (String, String, Option<String>);

/// Every problem with tcp listeners and the pools they use.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = |key: &str| format!("listeners[{i}].{key}");
        if l.protocol.is_http() {
            for key in tcp_settings(l) {
                out.push((
                    at(key),
                    "only a `protocol: tcp` listener reads this".into(),
                    None,
                ));
            }
            continue;
        }
        for key in http_settings(l) {
            out.push((
                at(key),
                "an HTTP setting: a `protocol: tcp` listener forwards bytes without reading \
                 HTTP (TLS is passed through, routed by `sni_routes`)"
                    .into(),
                None,
            ));
        }
        if l.pool.is_none() && l.sni_routes.is_empty() {
            out.push((
                at("protocol"),
                "a `protocol: tcp` listener needs a `pool` (or `sni_routes`)".into(),
                None,
            ));
        }
        if l.max_connections == Some(0) {
            out.push((at("max_connections"), "must be at least 1".into(), None));
        }
        if l.connect_retries > MAX_CONNECT_RETRIES {
            out.push((
                at("connect_retries"),
                format!("must be at most {MAX_CONNECT_RETRIES}"),
                None,
            ));
        }
        let named = l.pool.iter().map(|p| (at("pool"), p)).chain(
            l.sni_routes
                .iter()
                .enumerate()
                .map(|(j, r)| (at(&format!("sni_routes[{j}].pool")), &r.pool)),
        );
        for (path, name) in named {
            check_pool(config, &path, name, &mut out);
        }
        for (j, r) in l.sni_routes.iter().enumerate() {
            if let Err(msg) = check_sni_pattern(&r.matcher.sni) {
                out.push((at(&format!("sni_routes[{j}].match.sni")), msg, None));
            }
        }
    }
    for (i, p) in config.pools.iter().enumerate() {
        if p.proxy_protocol.is_none() {
            continue;
        }
        if let Some(r) = config.routes.iter().find(|r| {
            r.targets().iter().any(|t| t.pool == p.name)
                || r.mirror.iter().any(|m| m.pool == p.name)
        }) {
            out.push((
                format!("pools[{i}].proxy_protocol"),
                format!(
                    "only tcp listeners send the PROXY header, and route `{}` sends HTTP to this pool",
                    r.name
                ),
                None,
            ));
        }
    }
    out
}

fn check_pool(config: &Config, path: &str, name: &str, out: &mut Vec<Problem>) {
    let Some(pool) = config.pools.iter().find(|p| p.name == name) else {
        out.push((
            path.into(),
            format!("no pool named `{name}`"),
            Some(name.into()),
        ));
        return;
    };
    let refused = match &pool.balancer {
        Balancer::Inference { .. }
        | Balancer::PeakEwma { .. }
        | Balancer::WeightedLeastUtilization { .. } => Some(format!(
            "pool `{name}` balances with `{}`, which reads HTTP responses; a tcp listener's pool \
             uses round_robin, weighted_round_robin, random, least_request (open connections), \
             ring_hash or maglev",
            pool.balancer.kind()
        )),
        Balancer::RingHash { key, .. } | Balancer::Maglev { key, .. }
            if *key != HashKey::SourceIp =>
        {
            Some(format!(
                "pool `{name}` hashes on a header or cookie; a tcp listener can only hash on \
                 `key: source_ip`"
            ))
        }
        _ => None,
    };
    out.extend(refused.map(|msg| (path.to_string(), msg, None)));
}

/// A server name as it appears in a ClientHello (RFC 6066: a DNS host name, no trailing dot),
/// optionally with a leading `*.`.
fn check_sni_pattern(pattern: &str) -> Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "`{pattern}` is not a host name or `*.` followed by one"
        ));
    }
    Ok(())
}

impl Listener {
    /// Whether this listener forwards TCP rather than serving HTTP.
    pub fn is_tcp(&self) -> bool {
        self.protocol == ListenerProtocol::Tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match crate::load::parse(yaml, std::path::Path::new("c.yaml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    const POOLS: &str = "pools:\n  - {name: db, endpoints: ['127.0.0.1:6379']}\n  - {name: web, endpoints: ['127.0.0.1:8443']}\n";

    #[test]
    fn a_tcp_listener_with_a_pool_is_valid() {
        let yaml = format!(
            "{POOLS}listeners:\n  - name: t\n    address: 127.0.0.1:0\n    protocol: tcp\n    pool: db\n    max_connections: 10\n    connect_retries: 2\n    idle_timeout: 1h\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
        let c = crate::load::parse(&yaml, std::path::Path::new("c.yaml")).unwrap();
        assert!(c.listeners[0].is_tcp());
        assert_eq!(c.listeners[0].max_connections, Some(10));
    }

    #[test]
    fn a_tcp_listener_needs_an_existing_pool() {
        let e = errors(&format!(
            "{POOLS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: tcp}}\n  - {{name: u, address: '127.0.0.1:0', protocol: tcp, pool: dbb}}\n"
        ));
        assert!(
            e.iter()
                .any(|m| m
                    .contains("listeners[0].protocol: a `protocol: tcp` listener needs a `pool`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[1].pool: no pool named `dbb` (did you mean `db`?)")),
            "{e:?}"
        );
    }

    #[test]
    fn http_settings_on_a_tcp_listener_and_tcp_settings_on_an_http_one_are_refused() {
        let e = errors(&format!(
            "{POOLS}listeners:\n  - name: t\n    address: 127.0.0.1:0\n    protocol: tcp\n    pool: db\n    access_log: true\n    max_headers: 10\n  - name: h\n    address: 127.0.0.1:0\n    pool: db\n    max_connections: 3\n"
        ));
        assert!(
            e.iter()
                .any(|m| m.contains("c.yaml:9:5: listeners[0].access_log: an HTTP setting")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[0].max_headers: an HTTP setting")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[1].pool: only a `protocol: tcp` listener")),
            "{e:?}"
        );
        assert!(
            e.iter().any(
                |m| m.contains("listeners[1].max_connections: only a `protocol: tcp` listener")
            ),
            "{e:?}"
        );
    }

    #[test]
    fn limits_are_bounded() {
        let e = errors(&format!(
            "{POOLS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: tcp, pool: db, max_connections: 0, connect_retries: 11}}\n"
        ));
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[0].max_connections: must be at least 1")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[0].connect_retries: must be at most 10")),
            "{e:?}"
        );
    }

    #[test]
    fn http_only_balancers_and_header_hashing_are_refused_for_tcp_pools() {
        let e = errors(
            "pools:\n  - {name: a, balancer: peak_ewma}\n  - {name: b, balancer: {kind: ring_hash, key: {header: x-user}}}\n  - {name: c, balancer: {kind: maglev, key: source_ip}}\n  - {name: d, balancer: least_request}\nlisteners:\n  - {name: t, address: '127.0.0.1:0', protocol: tcp, pool: a}\n  - {name: u, address: '127.0.0.1:0', protocol: tcp, pool: b}\n  - {name: v, address: '127.0.0.1:0', protocol: tcp, pool: c}\n  - {name: w, address: '127.0.0.1:0', protocol: tcp, pool: d}\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("listeners[0].pool: pool `a` balances with `peak_ewma`"),
            "{e:?}"
        );
        assert!(
            e[1].contains("listeners[1].pool: pool `b` hashes on a header or cookie"),
            "{e:?}"
        );
    }

    #[test]
    fn sni_routes_name_pools_and_host_patterns() {
        let ok = format!(
            "{POOLS}listeners:\n  - name: t\n    address: 127.0.0.1:0\n    protocol: tcp\n    sni_routes:\n      - {{match: {{sni: '*.example.com'}}, pool: web}}\n      - {{match: {{sni: db.internal}}, pool: db}}\n"
        );
        assert_eq!(errors(&ok), Vec::<String>::new());
        let e = errors(&format!(
            "{POOLS}listeners:\n  - name: t\n    address: 127.0.0.1:0\n    protocol: tcp\n    pool: db\n    sni_routes:\n      - {{match: {{sni: 'a..b'}}, pool: web}}\n      - {{match: {{sni: ok.example}}, pool: nope}}\n      - {{match: {{host: x}}, pool: web}}\n"
        ));
        assert!(
            e.iter().any(|m| m.contains("unknown field `host`")),
            "{e:?}"
        );
        let e = errors(&format!(
            "{POOLS}listeners:\n  - name: t\n    address: 127.0.0.1:0\n    protocol: tcp\n    pool: db\n    sni_routes:\n      - {{match: {{sni: 'a..b'}}, pool: web}}\n      - {{match: {{sni: ok.example}}, pool: nope}}\n"
        ));
        assert!(
            e.iter()
                .any(|m| m.contains("sni_routes[0].match.sni: `a..b` is not a host name")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("sni_routes[1].pool: no pool named `nope`")),
            "{e:?}"
        );
    }

    #[test]
    fn the_proxy_header_is_refused_on_a_pool_that_routes_send_http_to() {
        let e = errors(
            "pools: [{name: p, proxy_protocol: v2}, {name: q, proxy_protocol: v2}]\nroutes: [{name: r, pool: p}]\nlisteners:\n  - {name: t, address: '127.0.0.1:0', protocol: tcp, pool: q}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(
                "pools[0].proxy_protocol: only tcp listeners send the PROXY header, and route `r`"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn the_effective_config_reads_back_valid() {
        // `/config` serializes the config; an HTTP listener must not come back with tcp keys.
        let yaml = format!(
            "{POOLS}listeners:\n  - {{name: h, address: '127.0.0.1:0'}}\n  - {{name: t, address: '127.0.0.1:0', protocol: tcp, pool: db, connect_retries: 3}}\n"
        );
        let c = crate::load::parse(&yaml, std::path::Path::new("c.yaml")).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back = crate::load::parse(&json, std::path::Path::new("c.json")).unwrap();
        assert_eq!(back, c);
        assert!(!serde_json::to_value(&c.listeners[0])
            .unwrap()
            .as_object()
            .unwrap()
            .contains_key("connect_retries"));
    }

    #[test]
    fn sni_wildcards_need_a_label_in_front() {
        let m = |p: &str| SniMatch { sni: p.into() };
        assert!(m("*.example.com").matches("a.example.com"));
        assert!(m("*.example.com").matches("a.b.example.com"));
        assert!(m("*.Example.com").matches("a.example.com"));
        assert!(!m("*.example.com").matches("example.com"));
        assert!(!m("*.example.com").matches("aexample.com"));
        assert!(m("API.example.com").matches("api.example.com"));
        assert!(!m("api.example.com").matches("api.example.com.evil"));
    }
}
