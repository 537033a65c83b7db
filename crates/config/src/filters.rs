//! Route filters (`routes[].filters`), with the semantics of Gateway API's HTTPRoute filters
//! (`RequestHeaderModifier`, `ResponseHeaderModifier`, `URLRewrite`, `RequestRedirect`) and
//! Envoy's `direct_response`: the schema, the header-value templates, and every check that can
//! be made before a request arrives, so the proxy compiles filters that cannot fail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Route;

/// One filter of a route; a route applies its filters in the order listed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Changes the request's headers before it goes upstream (every attempt gets them).
    RequestHeaders(HeaderFilter),
    /// Changes the response's headers before its first byte reaches the client.
    ResponseHeaders(HeaderFilter),
    /// Changes the upstream request's path or Host.
    UrlRewrite(UrlRewrite),
    /// Answers with a redirect; the route needs no pool.
    Redirect(Redirect),
    /// Answers with a fixed response; the route needs no pool.
    DirectResponse(DirectResponse),
}

/// Header changes, applied as Envoy does: `remove` first, then `set` (replacing every value of
/// the name), then `add` (appending a value). Names are case-insensitive.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A rewrite of the upstream request: its Host (`:authority` on HTTP/2) and its path, either
/// whole (`path`) or the part the route's `match.path_prefix` matched (`path_prefix`). The query
/// is kept.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// A redirect. Each part left out is the request's own: its scheme, its host (without port),
/// its path and query; the port is the scheme's well-known one when `scheme` is set, else the
/// listener's, and is left out of `Location` when it is the scheme's default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

/// A fixed answer (health endpoints, deprecations, maintenance pages).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn default_redirect_status() -> u16 {
    302
}

/// Redirect statuses Gateway API allows (301, 302) and its extended ones (303, 307, 308).
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Largest `direct_response.body`: an answer kept in memory per route, not a file server.
pub const MAX_DIRECT_BODY: usize = 64 * 1024;

/// One piece of a header value: text, or a variable filled in per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `${request_id}`: the request's id (the client's sane `x-request-id`, or the gateway's).
    RequestId,
    /// `${client_ip}`: the downstream peer's IP address.
    ClientIp,
    /// `${route}`: the route's name.
    Route,
    /// `%REQ(name)%`: the request header's first value (empty when absent), as Envoy writes it.
    RequestHeader(String),
}

/// Splits a header value into text and variables. `$` and `%` are text unless they open one of
/// the variables above; an unknown `${...}` or an unclosed one is an error.
pub fn parse_value(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        let var = if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("`{s}`: `${{` without a closing `}}`"))?;
            let part = match &after[..end] {
                "request_id" => Part::RequestId,
                "client_ip" => Part::ClientIp,
                "route" => Part::Route,
                other => {
                    return Err(format!(
                        "`{s}`: unknown variable `${{{other}}}` (known: ${{request_id}}, ${{client_ip}}, ${{route}}, %REQ(header)%)"
                    ))
                }
            };
            Some((part, 2 + end + 1))
        } else if let Some(after) = rest.strip_prefix("%REQ(") {
            let end = after
                .find(")%")
                .ok_or_else(|| format!("`{s}`: `%REQ(` without a closing `)%`"))?;
            let name = &after[..end];
            if !is_header_name(name) {
                return Err(format!("`{s}`: `{name}` is not a header name"));
            }
            Some((Part::RequestHeader(name.to_ascii_lowercase()), 5 + end + 2))
        } else {
            None
        };
        match var {
            Some((part, len)) => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
                rest = &rest[len..];
            }
            None => {
                let c = rest.chars().next().expect("rest is not empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() || parts.is_empty() {
        parts.push(Part::Text(text));
    }
    for p in &parts {
        if let Part::Text(t) = p {
            if let Some(b) = t.bytes().find(|&b| !is_value_byte(b)) {
                return Err(format!(
                    "`{}`: byte 0x{b:02x} is not allowed in a header value",
                    s.escape_debug()
                ));
            }
        }
    }
    Ok(parts)
}

/// RFC 9110 field-value bytes: visible ASCII, space, tab and obs-text; never CR, LF or NUL.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(crate::validate::is_token_char)
}

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

impl Route {
    /// Whether the route answers requests itself (`redirect`, `direct_response`) instead of
    /// forwarding them, and so needs no pool.
    pub fn answers_itself(&self) -> bool {
        self.filters
            .iter()
            .any(|f| matches!(f, Filter::Redirect(_) | Filter::DirectResponse(_)))
    }
}

/// The path a rewrite or redirect gives `path` when `prefix` (the route's `match.path_prefix`)
/// is replaced by `with`, as Gateway API's `ReplacePrefixMatch`: the prefix is matched without a
/// trailing `/`, the replacement's trailing `/` is dropped, and an empty result is `/`
/// (`/foo/bar` with `/foo` → `/xyz` is `/xyz/bar`; `/foo` with `/foo` → `/` is `/`).
pub fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let with = with.strip_suffix('/').unwrap_or(with);
    let mut out = String::with_capacity(with.len() + rest.len() + 1);
    out.push_str(with);
    if !rest.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn prefix_replacement_follows_gateway_api_table() {
        // Gateway API HTTPPathModifier's ReplacePrefixMatch table.
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            // The conformance suite's cases.
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            ("/plain/v1/models", "/plain/", "/", "/v1/models"),
        ];
        for (path, prefix, with, want) in table {
            assert_eq!(
                replace_prefix(path, prefix, with),
                want,
                "{path} {prefix} {with}"
            );
        }
    }

    #[test]
    fn values_split_into_text_and_variables() {
        assert_eq!(
            parse_value("prod").unwrap(),
            vec![Part::Text("prod".into())]
        );
        assert_eq!(parse_value("").unwrap(), vec![Part::Text(String::new())]);
        assert_eq!(
            parse_value("id=${request_id};ip=${client_ip} %REQ(X-User)%${route}").unwrap(),
            vec![
                Part::Text("id=".into()),
                Part::RequestId,
                Part::Text(";ip=".into()),
                Part::ClientIp,
                Part::Text(" ".into()),
                Part::RequestHeader("x-user".into()),
                Part::Route,
            ]
        );
        // `$` and `%` on their own are text.
        assert_eq!(
            parse_value("50% $5").unwrap(),
            vec![Part::Text("50% $5".into())]
        );
        for bad in [
            "${nope}",
            "${request_id",
            "%REQ(x",
            "%REQ(a b)%",
            "a\nb",
            "a\rb",
        ] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }
}
