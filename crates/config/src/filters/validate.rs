//! Every check a route's filters get before a request arrives, as (key path below the route,
//! message) pairs the config loader places at file:line:col.

use super::value::{is_header_name, is_value_byte, parse_value};
use super::{Filter, HeaderFilter, MAX_DIRECT_BODY, REDIRECT_STATUSES};
use crate::model::Route;

/// Headers no filter may set, add or remove: the connection's own (hop-by-hop) and the body's
/// framing, which the gateway writes itself.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// Where a header name is written, for what the checks allow.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

fn check_name(name: &str, side: Side) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if name.starts_with(':') {
        Some(format!(
            "`{name}` is a pseudo-header: the gateway writes those itself"
        ))
    } else if !is_header_name(name) {
        Some(format!("`{name}` is not a header name"))
    } else if HOP_BY_HOP.contains(&lower.as_str()) {
        Some(format!(
            "`{name}` belongs to the connection or the body's framing, which the gateway writes itself"
        ))
    } else if side == Side::Request && lower == "host" {
        Some("`host` is set by `url_rewrite: { host: ... }`".into())
    } else {
        None
    }
}

fn check_headers(f: &HeaderFilter, side: Side, out: &mut Vec<(String, String)>) {
    if f.set.is_empty() && f.add.is_empty() && f.remove.is_empty() {
        out.push((String::new(), "sets, adds and removes nothing".into()));
    }
    for (key, map) in [("set", &f.set), ("add", &f.add)] {
        for (name, value) in map {
            if let Some(m) = check_name(name, side) {
                out.push((format!("{key}.{name}"), m));
            } else if let Err(m) = parse_value(value) {
                out.push((format!("{key}.{name}"), m));
            }
        }
    }
    for (i, name) in f.remove.iter().enumerate() {
        if let Some(m) = check_name(name, side) {
            out.push((format!("remove[{i}]"), m));
        }
    }
}

/// A path a rewrite or redirect writes: absolute, and free of what would change its meaning.
fn check_path(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        Some(format!("`{p}` must start with `/`"))
    } else if p.contains(['?', '#']) || !p.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Some(format!(
            "`{p}` is not a path: no query, fragment, spaces or control bytes"
        ))
    } else {
        None
    }
}

/// A host name or address as it would appear in `Host` (a port allowed where `port_ok`).
fn check_host(h: &str, port_ok: bool) -> Option<String> {
    match h.parse::<http::uri::Authority>() {
        Ok(a) if !port_ok && a.port().is_some() => {
            Some(format!("`{h}`: give the port as `port`, not in `host`"))
        }
        Ok(a) if a.as_str().contains('@') || a.host().is_empty() => {
            Some(format!("`{h}` is not a host"))
        }
        Ok(_) => None,
        Err(_) => Some(format!("`{h}` is not a host")),
    }
}

fn check_path_choice(
    path: Option<&str>,
    prefix: Option<&str>,
    route: &Route,
    out: &mut Vec<(String, String)>,
) {
    if path.is_some() && prefix.is_some() {
        out.push((
            "path_prefix".into(),
            "`path` and `path_prefix` are mutually exclusive: use one".into(),
        ));
    }
    for (key, p) in [("path", path), ("path_prefix", prefix)] {
        if let Some(m) = p.and_then(check_path) {
            out.push((key.into(), m));
        }
    }
    if prefix.is_some() && route.matcher.path_prefix.is_none() {
        out.push((
            "path_prefix".into(),
            "replaces the prefix the route matched: the route needs `match.path_prefix`".into(),
        ));
    }
}

/// Problems with a route's filters, as (key path below the route, message).
pub(crate) fn validate(route: &Route) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen_rewrite = false;
    let mut answers = Vec::new();
    for (i, f) in route.filters.iter().enumerate() {
        let mut problems = Vec::new();
        let key = match f {
            Filter::RequestHeaders(h) => {
                check_headers(h, Side::Request, &mut problems);
                "request_headers"
            }
            Filter::ResponseHeaders(h) => {
                check_headers(h, Side::Response, &mut problems);
                "response_headers"
            }
            Filter::UrlRewrite(u) => {
                if std::mem::replace(&mut seen_rewrite, true) {
                    problems.push((String::new(), "a route has one `url_rewrite`".into()));
                }
                if u.host.is_none() && u.path.is_none() && u.path_prefix.is_none() {
                    problems.push((
                        String::new(),
                        "rewrites nothing: give `host`, `path` or `path_prefix`".into(),
                    ));
                }
                if let Some(m) = u.host.as_deref().and_then(|h| check_host(h, true)) {
                    problems.push(("host".into(), m));
                }
                check_path_choice(
                    u.path.as_deref(),
                    u.path_prefix.as_deref(),
                    route,
                    &mut problems,
                );
                "url_rewrite"
            }
            Filter::Redirect(r) => {
                answers.push(i);
                if let Some(s) = r
                    .scheme
                    .as_deref()
                    .filter(|s| !matches!(*s, "http" | "https"))
                {
                    problems.push(("scheme".into(), format!("`{s}`: use `http` or `https`")));
                }
                if let Some(m) = r.host.as_deref().and_then(|h| check_host(h, false)) {
                    problems.push(("host".into(), m));
                }
                if r.port == Some(0) {
                    problems.push(("port".into(), "must be 1 to 65535".into()));
                }
                if !REDIRECT_STATUSES.contains(&r.status) {
                    problems.push((
                        "status".into(),
                        format!(
                            "{} is not a redirect: use 301, 302, 303, 307 or 308",
                            r.status
                        ),
                    ));
                }
                check_path_choice(
                    r.path.as_deref(),
                    r.path_prefix.as_deref(),
                    route,
                    &mut problems,
                );
                "redirect"
            }
            Filter::DirectResponse(d) => {
                answers.push(i);
                if !(200..=599).contains(&d.status) {
                    problems.push((
                        "status".into(),
                        format!("{} is not a final status: use 200 to 599", d.status),
                    ));
                }
                if d.body.len() > MAX_DIRECT_BODY {
                    problems.push((
                        "body".into(),
                        format!(
                            "{} bytes is over the {MAX_DIRECT_BODY}-byte limit",
                            d.body.len()
                        ),
                    ));
                }
                for (name, value) in &d.headers {
                    if let Some(m) = check_name(name, Side::Response) {
                        problems.push((format!("headers.{name}"), m));
                    } else if let Some(b) = value.bytes().find(|&b| !is_value_byte(b)) {
                        problems.push((
                            format!("headers.{name}"),
                            format!("byte 0x{b:02x} is not allowed in a header value"),
                        ));
                    }
                }
                "direct_response"
            }
        };
        for (rel, msg) in problems {
            let path = if rel.is_empty() {
                format!("filters[{i}].{key}")
            } else {
                format!("filters[{i}].{key}.{rel}")
            };
            out.push((path, msg));
        }
    }
    if let Some(&first) = answers.first() {
        let at = |rel: &str| format!("filters[{first}]{rel}");
        if answers.len() > 1 {
            out.push((
                at(""),
                "a route answers once: one `redirect` or `direct_response`".into(),
            ));
        }
        let upstream_only = [
            ("pool", route.pool.is_some()),
            ("backends", route.backends.is_some()),
            ("mirror", !route.mirror.is_empty()),
            ("retry", route.retry.is_some()),
            ("hedge", route.hedge.is_some()),
            ("rate_limits", !route.rate_limits.is_empty()),
            ("rollout", route.rollout.is_some()),
            ("rewrite", route.rewrite.is_some()),
        ];
        for (key, present) in upstream_only {
            if present {
                out.push((
                    key.into(),
                    format!("the route answers itself (filters[{first}]) and sends nothing upstream: remove `{key}`"),
                ));
            }
        }
        for (i, f) in route.filters.iter().enumerate() {
            if matches!(f, Filter::RequestHeaders(_) | Filter::UrlRewrite(_)) {
                out.push((
                    format!("filters[{i}]"),
                    format!("the route answers itself (filters[{first}]) and sends nothing upstream to change"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use std::path::Path;

    fn errors(routes: &str) -> Vec<String> {
        let yaml = format!("pools: [{{name: p}}]\nroutes:\n{routes}");
        match crate::parse(&yaml, Path::new("c.yaml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let routes = "  - name: api\n    match: { path_prefix: /plain/ }\n    pool: p\n    filters:\n      - request_headers: { set: { x-env: prod }, add: { x-tag: a }, remove: [x-internal] }\n      - response_headers: { set: { cache-control: no-store }, add: { x-served-by: sy }, remove: [server] }\n      - url_rewrite: { path_prefix: /, host: models.internal }\n  - name: old\n    match: { path_prefix: /v0/ }\n    filters:\n      - redirect: { scheme: https, host: api.example.com, port: 443, path_prefix: /v1/, status: 301 }\n  - name: health\n    match: { path: /healthz }\n    filters:\n      - direct_response: { status: 200, body: \"ok\\n\", headers: { content-type: text/plain } }\n";
        assert_eq!(errors(routes), Vec::<String>::new());
        let c = crate::parse(
            &format!("pools: [{{name: p}}]\nroutes:\n{routes}"),
            Path::new("c.yaml"),
        )
        .unwrap();
        assert!(c.routes[1].answers_itself() && !c.routes[0].answers_itself());
        assert_eq!(
            c.routes[2].filters[0],
            Filter::DirectResponse(DirectResponse {
                status: 200,
                body: "ok\n".into(),
                headers: [("content-type".to_string(), "text/plain".to_string())].into(),
            })
        );
    }

    #[test]
    fn bad_filters_are_refused_where_they_are() {
        let e = errors("  - name: r\n    pool: p\n    filters:\n      - request_headers: { set: { connection: x, ':path': /a, host: h }, remove: [te] }\n      - response_headers: {}\n      - url_rewrite: { path_prefix: /x, path: y }\n");
        assert_eq!(
            e,
            vec![
                "c.yaml:6:50: routes[0].filters[0].request_headers.set.:path: `:path` is a pseudo-header: the gateway writes those itself",
                "c.yaml:6:35: routes[0].filters[0].request_headers.set.connection: `connection` belongs to the connection or the body's framing, which the gateway writes itself",
                "c.yaml:6:63: routes[0].filters[0].request_headers.set.host: `host` is set by `url_rewrite: { host: ... }`",
                "c.yaml:6:83: routes[0].filters[0].request_headers.remove[0]: `te` belongs to the connection or the body's framing, which the gateway writes itself",
                "c.yaml:7:9: routes[0].filters[1].response_headers: sets, adds and removes nothing",
                "c.yaml:8:24: routes[0].filters[2].url_rewrite.path_prefix: `path` and `path_prefix` are mutually exclusive: use one",
                "c.yaml:8:41: routes[0].filters[2].url_rewrite.path: `y` must start with `/`",
                "c.yaml:8:24: routes[0].filters[2].url_rewrite.path_prefix: replaces the prefix the route matched: the route needs `match.path_prefix`",
            ]
        );
        let e = errors("  - name: r\n    pool: p\n    retry: {attempts: 2}\n    filters:\n      - redirect: { status: 200, scheme: ftp, port: 0 }\n      - direct_response: { status: 700 }\n");
        assert_eq!(
            e,
            vec![
                "c.yaml:7:34: routes[0].filters[0].redirect.scheme: `ftp`: use `http` or `https`",
                "c.yaml:7:47: routes[0].filters[0].redirect.port: must be 1 to 65535",
                "c.yaml:7:21: routes[0].filters[0].redirect.status: 200 is not a redirect: use 301, 302, 303, 307 or 308",
                "c.yaml:8:28: routes[0].filters[1].direct_response.status: 700 is not a final status: use 200 to 599",
                "c.yaml:7:9: routes[0].filters[0]: a route answers once: one `redirect` or `direct_response`",
                "c.yaml:4:5: routes[0].pool: the route answers itself (filters[0]) and sends nothing upstream: remove `pool`",
                "c.yaml:5:5: routes[0].retry: the route answers itself (filters[0]) and sends nothing upstream: remove `retry`",
            ]
        );
        let e = errors(
            "  - name: r\n    filters:\n      - response_headers: { add: { x-a: '${nope}' } }\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("a route needs `pool` or `backends`"), "{e:?}");
        assert!(e[1].starts_with("c.yaml:5:36: routes[0].filters[0].response_headers.add.x-a: `${nope}`: unknown variable"), "{e:?}");
    }
}
