//! Checks that need the whole document: names are unique, routes point at pools that exist,
//! durations are positive, patterns compile. A config that passes is safe to swap in.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::error::{nearest, ConfigError};
use crate::locate::Locations;
use crate::model::Config;

struct Checker<'a> {
    file: &'a Path,
    locations: &'a Locations,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, path: String, message: impl Into<String>) -> &mut ConfigError {
        self.errors.push(ConfigError::at(
            self.file,
            self.locations,
            &path,
            message.into(),
        ));
        self.errors.last_mut().expect("just pushed")
    }

    fn positive(&mut self, path: String, d: Duration) {
        if d.is_zero() {
            self.error(path, "duration must be greater than zero");
        }
    }

    fn unique<'n>(&mut self, what: &str, names: impl Iterator<Item = (String, &'n str)>) {
        let mut seen = HashSet::new();
        for (path, name) in names {
            if name.is_empty() {
                self.error(path, format!("{what} name must not be empty"));
            } else if !seen.insert(name) {
                self.error(path, format!("duplicate {what} name `{name}`"));
            }
        }
    }
}

/// Every cross-field problem in `config`; empty when it is valid.
pub fn validate(config: &Config, file: &Path, locations: &Locations) -> Vec<ConfigError> {
    let mut c = Checker {
        file,
        locations,
        errors: Vec::new(),
    };

    if config.runtime.workers == Some(0) {
        c.error("runtime.workers".into(), "must be at least 1");
    }
    c.positive("runtime.drain_timeout".into(), config.runtime.drain_timeout);
    for (path, msg) in config.tracing.iter().flat_map(|t| t.validate()) {
        c.error(path, msg);
    }
    for (path, msg) in config.xds.iter().flat_map(|x| x.validate()) {
        c.error(path, msg);
    }

    c.unique(
        "listener",
        config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].name"), l.name.as_str())),
    );
    c.positive(
        "admin.header_read_timeout".to_string(),
        config.admin.header_read_timeout,
    );
    if config.admin.max_connections == 0 {
        c.error("admin.max_connections".to_string(), "must be at least 1");
    }
    // ~300 bytes a slot, allocated at start: a million is 300 MB, past any debugging need.
    if config.admin.recent_requests > 1_000_000 {
        c.error(
            "admin.recent_requests".to_string(),
            "must be at most 1000000",
        );
    }
    let mut addresses = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        // Port 0 asks the OS for a free port, so it never collides.
        let taken = (l.address.port() != 0)
            .then(|| addresses.insert(l.address, &l.name))
            .flatten();
        if let Some(other) = taken {
            c.error(
                format!("listeners[{i}].address"),
                format!(
                    "address {} is already used by listener `{other}`",
                    l.address
                ),
            );
        }
        if l.address.port() != 0 && l.address == config.admin.address {
            c.error(
                format!("listeners[{i}].address"),
                format!(
                    "address {} is already used by the admin listener",
                    l.address
                ),
            );
        }
        if l.max_header_bytes < 1024 {
            c.error(
                format!("listeners[{i}].max_header_bytes"),
                "must be at least 1024",
            );
        }
        if l.max_headers == 0 {
            c.error(format!("listeners[{i}].max_headers"), "must be at least 1");
        }
        if l.max_concurrent_streams == 0 {
            c.error(
                format!("listeners[{i}].max_concurrent_streams"),
                "must be at least 1",
            );
        }
        c.positive(
            format!("listeners[{i}].header_read_timeout"),
            l.header_read_timeout,
        );
        if !l.http2_keepalive_interval.is_zero() {
            c.positive(
                format!("listeners[{i}].http2_keepalive_timeout"),
                l.http2_keepalive_timeout,
            );
        }
        if l.http3 && l.tls.is_none() {
            c.error(
                format!("listeners[{i}].http3"),
                "HTTP/3 needs `tls` (QUIC is always encrypted)",
            );
        }
        for (key, msg) in l.quic.validate() {
            c.error(format!("listeners[{i}].quic.{key}"), msg);
        }
        if let Some(tls) = &l.tls {
            if tls.require_client_cert && tls.client_ca.is_none() {
                c.error(
                    format!("listeners[{i}].tls.require_client_cert"),
                    "needs `client_ca`, the CAs that sign the accepted client certificates",
                );
            }
            let client_ca = tls.client_ca.as_ref().map(|p| ("client_ca", p));
            for (key, p) in [("cert", &tls.cert), ("key", &tls.key)]
                .into_iter()
                .chain(client_ca)
            {
                if !p.is_file() {
                    c.error(
                        format!("listeners[{i}].tls.{key}"),
                        format!("file `{}` does not exist", p.display()),
                    );
                }
            }
        }
    }

    c.unique(
        "pool",
        config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("pools[{i}].name"), p.name.as_str())),
    );
    for (i, p) in config.pools.iter().enumerate() {
        c.positive(format!("pools[{i}].connect_timeout"), p.connect_timeout);
        c.positive(format!("pools[{i}].idle_timeout"), p.idle_timeout);
        for (rel, msg) in p.limits.validate() {
            c.error(format!("pools[{i}].limits.{rel}"), msg);
        }
        for (rel, msg) in p
            .concurrency
            .as_ref()
            .map(|x| x.validate())
            .unwrap_or_default()
        {
            c.error(format!("pools[{i}].concurrency.{rel}"), msg);
        }
        for (rel, msg) in p
            .fairness
            .as_ref()
            .map(|f| f.validate(p.concurrency.as_ref()))
            .unwrap_or_default()
        {
            let path = if rel.is_empty() {
                format!("pools[{i}].fairness")
            } else {
                format!("pools[{i}].fairness.{rel}")
            };
            c.error(path, msg);
        }
        let health_problems = [
            p.health.as_ref().map(|x| x.validate()),
            p.outlier.as_ref().map(|x| x.validate()),
            p.slow_start.as_ref().map(|x| x.validate()),
            Some(crate::health::validate_panic_threshold(p.panic_threshold)),
        ];
        for (rel, msg) in health_problems.into_iter().flatten().flatten() {
            c.error(format!("pools[{i}].{rel}"), msg);
        }
        for (rel, msg) in p.locality.iter().flat_map(|l| l.validate(p)) {
            c.error(format!("pools[{i}].{rel}"), msg);
        }
        for (rel, msg) in p.tls.iter().flat_map(|t| t.validate_for(p.protocol)) {
            c.error(format!("pools[{i}].tls.{rel}"), msg);
        }
        if p.protocol == crate::model::Protocol::Http3 {
            if p.tls.is_none() {
                c.error(
                    format!("pools[{i}].protocol"),
                    "`http3` needs `tls` (QUIC is always encrypted; `verify: false` accepts any \
                     certificate)",
                );
            }
            if p.health.is_some() {
                // Active checks connect over TCP, which an HTTP/3-only server may not listen on.
                c.error(
                    format!("pools[{i}].health"),
                    "active health checks speak TCP; an `http3` pool is watched by `outlier` \
                     detection instead",
                );
            }
        }
        let mut seen = HashSet::new();
        for (j, e) in p.endpoints.iter().enumerate() {
            if e.weight == 0 {
                c.error(
                    format!("pools[{i}].endpoints[{j}]"),
                    "weight must be at least 1",
                );
            }
            if !seen.insert(e.address) {
                c.error(
                    format!("pools[{i}].endpoints[{j}]"),
                    format!("duplicate endpoint {}", e.address),
                );
            }
        }
    }

    c.unique(
        "route",
        config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("routes[{i}].name"), r.name.as_str())),
    );
    c.unique(
        "rate limit",
        config
            .rate_limits
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("rate_limits[{i}].name"), l.name.as_str())),
    );
    for (i, l) in config.rate_limits.iter().enumerate() {
        for (rel, msg) in crate::rate_limit::validate(l) {
            c.error(format!("rate_limits[{i}].{rel}"), msg);
        }
        if l.store == crate::rate_limit::Store::Redis && config.redis.is_none() {
            c.error(
                format!("rate_limits[{i}].store"),
                "a shared limit needs a `redis: { url: redis://host:port }` section",
            );
        }
    }
    for (rel, msg) in config
        .redis
        .as_ref()
        .map(crate::rate_limit::validate_redis)
        .unwrap_or_default()
    {
        c.error(format!("redis.{rel}"), msg);
    }
    let pool_names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    for (path, message, missing_pool) in crate::l4::validate(config) {
        let suggestion = missing_pool
            .as_deref()
            .and_then(|p| nearest(p, pool_names.iter().copied()));
        c.error(path, message).suggestion = suggestion;
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (rel, message, missing_pool) in
            crate::backends::validate_targets(r, |p| pool_names.contains(&p))
        {
            let path = if rel.is_empty() {
                format!("routes[{i}]")
            } else {
                format!("routes[{i}].{rel}")
            };
            let suggestion = missing_pool
                .as_deref()
                .and_then(|p| nearest(p, pool_names.iter().copied()));
            c.error(path, message).suggestion = suggestion;
        }
        let inference_only = r.targets().iter().all(|t| {
            config.pools.iter().any(|p| {
                p.name == t.pool && matches!(p.balancer, crate::Balancer::Inference { .. })
            })
        });
        for (j, name) in r.rate_limits.iter().enumerate() {
            let limit = config.rate_limits.iter().find(|l| l.name == *name);
            if limit.is_some_and(|l| l.tokens.is_some()) && !inference_only {
                c.error(
                    format!("routes[{i}].rate_limits[{j}]"),
                    format!("`{name}` counts tokens, which the gateway reads from requests to `inference` pools: every pool of the route needs `balancer: inference`"),
                );
            }
            if limit.is_none() {
                let names = config.rate_limits.iter().map(|l| l.name.as_str());
                c.error(
                    format!("routes[{i}].rate_limits[{j}]"),
                    format!("no rate limit named `{name}`"),
                )
                .suggestion = nearest(name, names);
            }
        }
        for (rel, msg) in crate::filters::validate(r) {
            c.error(format!("routes[{i}].{rel}"), msg);
        }
        for (rel, msg) in crate::rollout::validate(r) {
            c.error(format!("routes[{i}].{rel}"), msg);
        }
        for (key, problems) in [
            ("retry", r.retry.as_ref().map(|x| x.validate())),
            ("hedge", r.hedge.as_ref().map(|x| x.validate())),
        ] {
            for (rel, msg) in problems.unwrap_or_default() {
                c.error(format!("routes[{i}].{key}.{rel}"), msg);
            }
        }
        c.positive(format!("routes[{i}].timeout"), r.timeout);
        c.positive(format!("routes[{i}].idle_timeout"), r.idle_timeout);
        let m = &r.matcher;
        for (key, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(v) = v {
                if !v.starts_with('/') {
                    c.error(
                        format!("routes[{i}].match.{key}"),
                        format!("`{v}` must start with `/`"),
                    );
                }
            }
        }
        if let Some(re) = &m.path_regex {
            if let Err(e) = regex::Regex::new(&format!("^(?:{re})$")) {
                c.error(
                    format!("routes[{i}].match.path_regex"),
                    format!("invalid regex: {e}"),
                );
            }
        }
        if let Some(method) = &m.method {
            if method.is_empty() || !method.bytes().all(is_token_char) {
                c.error(
                    format!("routes[{i}].match.method"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
        for (rel, msg) in m.client_cert.iter().flat_map(|x| x.validate()) {
            let path = format!("routes[{i}].match.client_cert");
            c.error(
                if rel.is_empty() {
                    path
                } else {
                    format!("{path}.{rel}")
                },
                msg,
            );
        }
        for name in m.headers.keys() {
            if name.is_empty() || !name.bytes().all(is_token_char) {
                c.error(
                    format!("routes[{i}].match.headers"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
    c.errors
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use crate::load::tests::errors;

    #[test]
    fn missing_pool_points_at_route_and_suggests() {
        let e = errors("pools: [{name: llama}]\nroutes:\n  - name: r\n    pool: lama\n");
        assert_eq!(
            e,
            vec!["c.yaml:4:5: routes[0].pool: no pool named `lama` (did you mean `llama`?)"]
        );
    }

    #[test]
    fn duplicates_and_zero_durations() {
        let e = errors(
            "pools: [{name: p}, {name: p, connect_timeout: 0s}]\nroutes:\n  - {name: r, pool: p, timeout: 0s}\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|m| m.contains("duplicate pool name `p`")));
        assert!(e.iter().any(|m| m.contains("routes[0].timeout")));
    }

    #[test]
    fn admin_limits() {
        let e = errors("admin: {max_connections: 0, recent_requests: 2000000}\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("admin.max_connections: must be at least 1"),
            "{e:?}"
        );
        assert!(
            e[1].contains("admin.recent_requests: must be at most 1000000"),
            "{e:?}"
        );
        assert!(errors("admin: {recent_requests: 0}\n").is_empty());
    }

    #[test]
    fn bad_regex_and_prefix() {
        let e = errors(
            "pools: [{name: p}]\nroutes:\n  - name: r\n    pool: p\n    match: {path_regex: '(', path_prefix: v1}\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn fairness_needs_concurrency_and_a_share_below_the_queue() {
        let e = errors("pools:\n  - name: p\n    fairness: { tenant_header: x-tenant }\n");
        assert_eq!(
            e,
            vec!["c.yaml:3:5: pools[0].fairness: has no effect without `concurrency`: tenants share the concurrency queue"]
        );
        let e = errors(
            "pools:\n  - name: p\n    concurrency: { kind: fixed, limit: 4, max_queue: 8 }\n    fairness:\n      tenant_header: 'x tenant'\n      max_queued_per_tenant: 9\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("c.yaml:5:7: pools[0].fairness.tenant_header: `x tenant` is not a valid header name"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("c.yaml:6:7: pools[0].fairness.max_queued_per_tenant: 9 is above the pool's `concurrency.max_queue` (8)"),
            "{e:?}"
        );
        assert!(errors(
            "pools:\n  - name: p\n    concurrency: 4\n    fairness: { max_queued_per_tenant: 8 }\n"
        )
        .is_empty());
        let e = errors("pools:\n  - name: p\n    concurrency: 4\n    fairness: { tenant: x }\n");
        assert!(e[0].contains("unknown field `tenant`"), "{e:?}");
    }

    #[test]
    fn empty_endpoints_are_valid() {
        assert!(errors("pools: [{name: p, endpoints: []}]\n").is_empty());
    }
}
