//! Route predicates compiled once per config generation. Routes are tried in order and the first
//! whose predicates all hold wins, as in NGINX `location` blocks with explicit order or Envoy's
//! route list.

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request};
use regex::Regex;
use switchyard_config::Match;

/// A compiled `match:` block.
#[derive(Debug)]
pub struct RouteMatch {
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<Regex>,
    host: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
    /// Model name, exact, or a prefix when written with a trailing `*`.
    model: Option<(String, bool)>,
    client_cert: Option<switchyard_config::ClientCertMatch>,
}

impl RouteMatch {
    /// Compile; the config was validated, so failures here are reported, not expected.
    pub fn compile(m: &Match) -> Result<Self, String> {
        let path_regex = match &m.path_regex {
            Some(re) => Some(Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())?),
            None => None,
        };
        let method = match &m.method {
            Some(s) => Some(Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (k, v) in &m.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            headers.push((name, value));
        }
        Ok(Self {
            path: m.path.clone(),
            path_prefix: m.path_prefix.clone(),
            path_regex,
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
            method,
            headers,
            query: m
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            model: m.model.as_ref().map(|m| match m.strip_suffix('*') {
                Some(prefix) => (prefix.to_string(), true),
                None => (m.clone(), false),
            }),
            client_cert: m.client_cert.clone(),
        })
    }

    /// The `client_cert` predicate, given the connection's verified client certificate.
    pub fn client_matches(&self, id: Option<&crate::tls::ClientIdentity>) -> bool {
        use switchyard_config::tls::wildcard_match;
        let Some(want) = &self.client_cert else {
            return true;
        };
        let Some(id) = id else {
            return false;
        };
        want.subject
            .as_deref()
            .is_none_or(|s| wildcard_match(s, &id.subject))
            && want
                .san
                .as_deref()
                .is_none_or(|p| id.sans().any(|san| wildcard_match(p, &san)))
    }

    /// Whether this route wants the request's model (so the body must be read before routing).
    pub fn needs_model(&self) -> bool {
        self.model.is_some()
    }

    /// The model predicate, given the model the request names (if any).
    pub fn model_matches(&self, model: Option<&str>) -> bool {
        match (&self.model, model) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((want, true)), Some(got)) => got.starts_with(want.as_str()),
            (Some((want, false)), Some(got)) => got == want,
        }
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        if let Some(p) = &self.path {
            if path != p {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        if let Some(h) = &self.host {
            match request_host(req) {
                Some(got) if got.eq_ignore_ascii_case(h) => {}
                _ => return false,
            }
        }
        for (name, value) in &self.headers {
            if !req.headers().get_all(name).iter().any(|v| v == value) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let q = req.uri().query().unwrap_or("");
            for (k, v) in &self.query {
                let found = q.split('&').any(|pair| {
                    let (pk, pv) = pair.split_once('=').unwrap_or((pair, ""));
                    pk == k && pv == v
                });
                if !found {
                    return false;
                }
            }
        }
        if let Some(re) = &self.path_regex {
            if !re.is_match(path) {
                return false;
            }
        }
        true
    }
}

/// The request's host without port: `Host` for HTTP/1, `:authority` for HTTP/2.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().host() {
        Some(h) => return Some(h.trim_start_matches('[').trim_end_matches(']')),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header("host", host)
            .header("x-tier", "gold")
            .body(())
            .unwrap()
    }

    #[test]
    fn host_ignores_port_and_case() {
        let m = RouteMatch::compile(&Match {
            host: Some("API.example.com".into()),
            ..Match::default()
        })
        .unwrap();
        assert!(m.matches(&req("/x", "api.EXAMPLE.com:8080")));
        assert!(!m.matches(&req("/x", "other.com")));
    }

    #[test]
    fn regex_must_match_whole_path() {
        let m = RouteMatch::compile(&Match {
            path_regex: Some("/v[0-9]+/models".into()),
            ..Match::default()
        })
        .unwrap();
        assert!(m.matches(&req("/v1/models", "h")));
        assert!(!m.matches(&req("/v1/models/x", "h")));
    }

    #[test]
    fn headers_and_query_exact() {
        let m = RouteMatch::compile(&Match {
            headers: BTreeMap::from([("x-tier".into(), "gold".into())]),
            query: BTreeMap::from([("debug".into(), "1".into())]),
            ..Match::default()
        })
        .unwrap();
        assert!(m.matches(&req("/a?x=2&debug=1", "h")));
        assert!(!m.matches(&req("/a?debug=2", "h")));
    }

    #[test]
    fn ipv6_host() {
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
