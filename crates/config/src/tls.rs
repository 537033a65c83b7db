//! TLS settings on both sides of the gateway: a pool's `tls` (the gateway as a TLS client of
//! its upstreams, Envoy's `UpstreamTlsContext`) and a listener's client certificates (Envoy's
//! `DownstreamTlsContext` with a validation context), with the route predicate and the
//! `x-forwarded-client-cert` policy that read the client's identity.
//!
//! No trust store is bundled or read from the system: a pool that verifies its upstreams names
//! the CA bundle it trusts (`ca`). Upstreams of a gateway are internal services, usually under a
//! private CA, and a silently trusted public root set would let any publicly certified host pass
//! for one of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a pool's connections to its endpoints are secured. Shared by every transport that
/// speaks TLS to upstreams (HTTP/1.1, HTTP/2, and HTTP/3 with ALPN `h3`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The server name sent (SNI) and checked against the certificate. Unset: the endpoint's IP
    /// address, which the certificate must then carry as an IP SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle of the CAs trusted to sign the upstreams' certificates; required when
    /// `verify` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain presented to upstreams that ask for one (mTLS); with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Verify the upstream's certificate chain, name and validity. `false` accepts any
    /// certificate (as Envoy does without a validation context): encrypted, not authenticated.
    #[serde(default = "yes")]
    pub verify: bool,
    /// ALPN protocols offered, in order of preference. Unset: `http/1.1` for `http1` pools, `h2`
    /// for `http2` pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl UpstreamTls {
    /// Problems as `(key relative to the pool's tls, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match (&self.cert, &self.key) {
            (Some(_), None) => out.push(("key".into(), "`cert` needs its `key`".into())),
            (None, Some(_)) => out.push(("cert".into(), "`key` needs its `cert`".into())),
            _ => {}
        }
        if self.verify && self.ca.is_none() {
            out.push((
                "ca".into(),
                "`verify: true` needs the CA bundle that signs the upstreams' certificates \
                 (no system trust store is used); or set `verify: false` to accept any certificate"
                    .into(),
            ));
        }
        for (key, p) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if let Some(p) = p {
                if !p.is_file() {
                    out.push((key.into(), format!("file `{}` does not exist", p.display())));
                }
            }
        }
        if let Some(sni) = &self.sni {
            if !valid_server_name(sni) {
                out.push((
                    "sni".into(),
                    format!("`{sni}` is not a DNS name or an IP address"),
                ));
            }
        }
        if let Some(alpn) = &self.alpn {
            if alpn.is_empty() {
                out.push(("alpn".into(), "must list at least one protocol".into()));
            }
            for (i, p) in alpn.iter().enumerate() {
                if p.is_empty() || p.len() > 255 {
                    out.push((
                        format!("alpn[{i}]"),
                        "a protocol name is 1 to 255 bytes".into(),
                    ));
                }
            }
        }
        out
    }
}

impl UpstreamTls {
    /// [`UpstreamTls::validate`], and an `alpn` the pool's protocol can speak: the transport
    /// speaks one protocol, so the upstream must not be offered another to choose.
    pub fn validate_for(&self, protocol: crate::Protocol) -> Vec<(String, String)> {
        let mut out = self.validate();
        let (name, speaks, wrong): (_, _, &[&str]) = match protocol {
            crate::Protocol::Http1 => ("http1", "http/1.1", &["h2", "h3"]),
            crate::Protocol::Http2 => ("http2", "h2", &["http/1.1", "h3"]),
            crate::Protocol::Http3 => ("http3", "h3", &["http/1.1", "h2"]),
        };
        if let Some(alpn) = &self.alpn {
            if alpn.iter().any(|p| wrong.contains(&p.as_str())) || !alpn.iter().any(|p| p == speaks)
            {
                out.push((
                    "alpn".into(),
                    format!(
                        "an {name} pool speaks `{speaks}`: offer it, and not `{}`",
                        wrong.join("` or `")
                    ),
                ));
            }
        }
        out
    }
}

/// A DNS name (letters, digits, `-`, dots between labels of at most 63 bytes) or an IP address.
fn valid_server_name(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a listener does with a client's `x-forwarded-client-cert` header (Envoy's
/// `forward_client_cert_details`). A client must never be able to claim an identity by sending
/// the header itself, so the default strips it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// Remove the header; send none.
    #[default]
    Sanitize,
    /// Keep the client's header and append this connection's client certificate to it (for a
    /// gateway behind another trusted proxy).
    AppendForward,
    /// Replace the header with this connection's client certificate (none when it has none).
    SanitizeSet,
}

/// A route predicate on the verified client certificate of the request's connection. A request
/// without one never matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertMatch {
    /// One of the certificate's subject alternative names (URI, DNS, email or IP, as text):
    /// exact, or a prefix with a trailing `*` (`spiffe://prod/ns/team-a/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    /// The subject as an RFC 4514 string (`CN=client-a,O=Acme`): exact, or a prefix with a
    /// trailing `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl ClientCertMatch {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.san.is_none() && self.subject.is_none() {
            out.push((
                String::new(),
                "needs `san` or `subject` (a route for any client certificate: `san: \"*\"`)"
                    .into(),
            ));
        }
        for (key, v) in [("san", &self.san), ("subject", &self.subject)] {
            if v.as_deref().is_some_and(|v| v.is_empty()) {
                out.push((key.into(), "must not be empty".into()));
            }
        }
        out
    }
}

/// Exact, or a prefix when `pattern` ends in `*`.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use crate::load::tests::errors;

    fn with_pool_tls(tls: &str) -> Vec<String> {
        errors(&format!(
            "pools:\n  - name: p\n    endpoints: [127.0.0.1:1]\n    tls: {tls}\n"
        ))
    }

    #[test]
    fn verify_needs_a_ca() {
        let e = with_pool_tls("{sni: a.example}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("pools[0].tls.ca: `verify: true` needs the CA bundle"),
            "{e:?}"
        );
        assert!(with_pool_tls("{verify: false}").is_empty());
    }

    #[test]
    fn cert_and_key_go_together_and_files_must_exist() {
        let e = with_pool_tls("{verify: false, cert: /nonexistent/c.pem}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.contains("pools[0].tls.key: `cert` needs its `key`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("pools[0].tls.cert: file `/nonexistent/c.pem` does not exist")),
            "{e:?}"
        );
        let e = with_pool_tls("{verify: false, key: /nonexistent/k.pem}");
        assert!(
            e.iter()
                .any(|m| m.contains("pools[0].tls.cert: `key` needs its `cert`")),
            "{e:?}"
        );
    }

    #[test]
    fn sni_and_alpn_are_checked() {
        let e = with_pool_tls("{verify: false, sni: \"bad name\", alpn: [http/1.1, \"\"]}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("pools[0].tls.sni"), "{e:?}");
        assert!(e[1].contains("pools[0].tls.alpn[1]"), "{e:?}");
        assert!(with_pool_tls("{verify: false, alpn: []}")[0].contains("at least one"));
        assert!(with_pool_tls("{verify: false, sni: 10.0.0.1}").is_empty());
        assert!(with_pool_tls("{verify: false, sni: api.internal.example}").is_empty());
    }

    #[test]
    fn alpn_must_fit_the_protocol() {
        let e = with_pool_tls("{verify: false, alpn: [h2]}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("pools[0].tls.alpn: an http1 pool speaks `http/1.1`"),
            "{e:?}"
        );
        let e = errors(
            "pools:\n  - {name: p, protocol: http2, tls: {verify: false, alpn: [http/1.1, h2]}}\n",
        );
        assert!(e[0].contains("an http2 pool speaks `h2`"), "{e:?}");
        assert!(with_pool_tls("{verify: false, alpn: [http/1.1, x-custom]}").is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = with_pool_tls("{verify: false, snii: x}");
        assert!(e[0].contains("unknown field `snii`"), "{e:?}");
    }

    #[test]
    fn listener_client_ca_checks() {
        let e = errors(
            "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    tls: {cert: /nonexistent/c, key: /nonexistent/k, require_client_cert: true}\n",
        );
        assert!(
            e.iter()
                .any(|m| m.contains("listeners[0].tls.require_client_cert: needs `client_ca`")),
            "{e:?}"
        );
        let e = errors(
            "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    tls: {cert: /nonexistent/c, key: /nonexistent/k, client_ca: /nonexistent/ca}\n",
        );
        assert!(
            e.iter()
                .any(|m| m
                    .contains("listeners[0].tls.client_ca: file `/nonexistent/ca` does not exist")),
            "{e:?}"
        );
    }

    #[test]
    fn client_cert_match_needs_a_field() {
        let e = errors(
            "pools: [{name: p}]\nroutes:\n  - {name: r, pool: p, match: {client_cert: {}}}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("routes[0].match.client_cert: needs `san` or `subject`"),
            "{e:?}"
        );
        assert!(errors(
            "pools: [{name: p}]\nroutes:\n  - {name: r, pool: p, match: {client_cert: {san: \"spiffe://a/*\"}}}\n"
        )
        .is_empty());
    }

    #[test]
    fn wildcards() {
        use super::wildcard_match;
        assert!(wildcard_match("spiffe://a/*", "spiffe://a/b"));
        assert!(!wildcard_match("spiffe://a/*", "spiffe://b/a"));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("CN=x", "CN=x"));
        assert!(!wildcard_match("CN=x", "CN=xy"));
    }
}
