//! Where a route sends its requests: one `pool`, or weighted `backends` (version splits,
//! canaries), each of which may ask the upstream for a different model than the client named.
//!
//! The shape follows Gateway API's `HTTPRoute` (`backendRefs` with `weight`, filters per rule
//! and per backend) and Envoy's `weighted_clusters`: a route-level `rewrite` applies to every
//! target, and a backend's own `model` overrides it for that backend.

use serde::{Deserialize, Serialize};

use crate::model::Route;

/// One weighted target of a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub pool: String,
    /// Relative share of the route's requests; must be at least 1.
    #[serde(default = "default_backend_weight")]
    pub weight: u32,
    /// Model name the upstream is asked for (the request body's `model` is rewritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn default_backend_weight() -> u32 {
    1
}

/// What keeps a user on one backend of a weighted split (`sticky:`): the key is hashed into the
/// weights, so a user stays put while the weights do, and users already on the last backend (the
/// canary, by convention) stay there as its weight grows. A request without the key is drawn at
/// random, as without `sticky`; with `cookie`, the gateway then sets one on the response.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sticky {
    /// A cookie of this name; the gateway sets it (a random id) when the request has none.
    Cookie(String),
    /// A request header's value (a user or session id set by the client or an auth layer).
    Header(String),
    /// The bearer token of `Authorization`, hashed, never logged.
    ApiKey,
    /// The client's IP address.
    SourceIp,
}

/// A copy of some of a route's requests sent to another pool (`mirror:`), its response drained
/// and discarded: a shadow model sees production traffic without affecting it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub pool: String,
    /// Share of the route's requests copied, 0 < percent ≤ 100.
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
    /// Copies in flight at once for this mirror; past it, copies are dropped (and counted).
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: u32,
}

fn default_mirror_percent() -> f64 {
    100.0
}

fn default_mirror_in_flight() -> u32 {
    64
}

/// Changes made to a request on its way upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the string value of the top-level `model` key of an OpenAI-style JSON body.
    pub model: String,
}

/// A route target as the proxy builds it: the pool, its weight and the model to rewrite to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target<'a> {
    pub pool: &'a str,
    pub weight: u32,
    pub model: Option<&'a str>,
}

impl Route {
    /// The route's targets: its `pool` (weight 1), or each of its `backends`. A backend's
    /// `model` wins over the route's `rewrite.model`.
    pub fn targets(&self) -> Vec<Target<'_>> {
        let route_model = self.rewrite.as_ref().map(|r| r.model.as_str());
        match (&self.pool, &self.backends) {
            (_, Some(backends)) => backends
                .iter()
                .map(|b| Target {
                    pool: &b.pool,
                    weight: b.weight,
                    model: b.model.as_deref().or(route_model),
                })
                .collect(),
            (Some(pool), None) => vec![Target {
                pool,
                weight: 1,
                model: route_model,
            }],
            (None, None) => Vec::new(),
        }
    }
}

/// Problems with a route's targets, as (key path below the route, message), with the pool name
/// that was not found (for a suggestion) where that is the problem.
pub(crate) fn validate_targets(
    route: &Route,
    pool_exists: impl Fn(&str) -> bool,
) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    let missing = |key: String, pool: &str| {
        (
            key,
            format!("no pool named `{pool}`"),
            Some(pool.to_string()),
        )
    };
    match (&route.pool, &route.backends) {
        (Some(_), Some(_)) => out.push((
            "backends".into(),
            "`pool` and `backends` are mutually exclusive: use one".into(),
            None,
        )),
        (None, None) if !route.answers_itself() => out.push((
            String::new(),
            "a route needs `pool` or `backends` (or a `redirect` or `direct_response` filter)"
                .into(),
            None,
        )),
        (Some(pool), None) if !pool_exists(pool) => out.push(missing("pool".into(), pool)),
        _ => {}
    }
    if let Some(backends) = &route.backends {
        if backends.is_empty() {
            out.push((
                "backends".into(),
                "must list at least one backend".into(),
                None,
            ));
        }
        for (j, b) in backends.iter().enumerate() {
            if !pool_exists(&b.pool) {
                out.push(missing(format!("backends[{j}].pool"), &b.pool));
            }
            if b.weight == 0 {
                out.push((
                    format!("backends[{j}].weight"),
                    "weight must be at least 1".into(),
                    None,
                ));
            }
            if b.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                out.push((
                    format!("backends[{j}].model"),
                    "model must not be empty".into(),
                    None,
                ));
            }
        }
    }
    out.extend(validate_split(route));
    for (j, m) in route.mirror.iter().enumerate() {
        if !pool_exists(&m.pool) {
            out.push(missing(format!("mirror[{j}].pool"), &m.pool));
        }
        if !(m.percent > 0.0 && m.percent <= 100.0) {
            out.push((
                format!("mirror[{j}].percent"),
                format!(
                    "{} is not a share of requests: use 0 < percent <= 100",
                    m.percent
                ),
                None,
            ));
        }
        if m.max_in_flight == 0 {
            out.push((
                format!("mirror[{j}].max_in_flight"),
                "must be at least 1".into(),
                None,
            ));
        }
    }
    if route
        .rewrite
        .as_ref()
        .is_some_and(|r| r.model.trim().is_empty())
    {
        out.push((
            "rewrite.model".into(),
            "model must not be empty".into(),
            None,
        ));
    }
    out
}

/// `sticky` and `force_backend_header` need a split to choose in, and names HTTP accepts.
fn validate_split(route: &Route) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    let split = route.backends.as_ref().is_some_and(|b| b.len() > 1);
    let mut need_split = |key: &str| {
        if !split {
            out.push((
                key.to_string(),
                "applies to a split: list two or more `backends`".into(),
                None,
            ));
        }
    };
    if route.sticky.is_some() {
        need_split("sticky");
    }
    if route.force_backend_header.is_some() {
        need_split("force_backend_header");
    }
    let token = |s: &str| !s.is_empty() && s.bytes().all(crate::validate::is_token_char);
    match &route.sticky {
        Some(Sticky::Cookie(name)) if !token(name) => out.push((
            "sticky.cookie".into(),
            format!("`{name}` is not a cookie name"),
            None,
        )),
        Some(Sticky::Header(name)) if !token(name) => out.push((
            "sticky.header".into(),
            format!("`{name}` is not a header name"),
            None,
        )),
        _ => {}
    }
    if let Some(name) = route.force_backend_header.as_deref().filter(|n| !token(n)) {
        out.push((
            "force_backend_header".into(),
            format!("`{name}` is not a header name"),
            None,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use std::path::Path;

    const POOLS: &str = "pools: [{name: llama}, {name: llama-v1}, {name: llama-v2}]\n";

    fn errors(routes: &str) -> Vec<String> {
        match parse(&format!("{POOLS}routes:\n{routes}"), Path::new("c.yaml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn sticky_splits_and_mirrors_parse_and_are_checked() {
        let split = "    backends: [{pool: llama-v1, weight: 9}, {pool: llama-v2}]\n";
        for (sticky, want) in [
            ("{cookie: variant}", Sticky::Cookie("variant".into())),
            ("{header: x-user}", Sticky::Header("x-user".into())),
            ("api_key", Sticky::ApiKey),
            ("source_ip", Sticky::SourceIp),
        ] {
            let text = format!(
                "{POOLS}routes:\n  - name: r\n{split}    sticky: {sticky}\n    force_backend_header: x-switchyard-backend\n    mirror: [{{pool: llama, percent: 10}}, {{pool: llama-v1}}]\n"
            );
            let c = parse(&text, Path::new("c.yaml")).unwrap();
            assert_eq!(c.routes[0].sticky.as_ref(), Some(&want));
            assert_eq!(c.routes[0].mirror[0].percent, 10.0);
            assert_eq!(c.routes[0].mirror[1].percent, 100.0);
            assert_eq!(c.routes[0].mirror[1].max_in_flight, 64);
        }
        let all = errors(
            "  - name: one\n    pool: llama\n    sticky: api_key\n    force_backend_header: x-b\n    mirror: [{pool: lama, percent: 0}, {pool: llama, max_in_flight: 0}]\n  - name: two\n    backends: [{pool: llama-v1}, {pool: llama-v2}]\n    sticky: {cookie: 'a b'}\n    force_backend_header: 'x y'\n",
        )
        .join("\n");
        for want in [
            "routes[0].sticky: applies to a split",
            "routes[0].force_backend_header: applies to a split",
            "routes[0].mirror[0].pool: no pool named `lama`",
            "routes[0].mirror[0].percent: 0 is not a share",
            "routes[0].mirror[1].max_in_flight: must be at least 1",
            "routes[1].sticky.cookie: `a b` is not a cookie name",
            "routes[1].force_backend_header: `x y` is not a header name",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        let unknown = errors("  - name: r\n    pool: llama\n    sticky: {session: x}\n").join("\n");
        assert!(unknown.contains("routes[0].sticky"), "{unknown}");
    }

    #[test]
    fn alias_and_split_parse_into_targets() {
        let text = format!(
            "{POOLS}routes:\n  - name: alias\n    match: {{ model: gpt-4 }}\n    pool: llama\n    rewrite: {{ model: llama-3-8b-instruct }}\n  - name: split\n    rewrite: {{ model: llama-3 }}\n    backends:\n      - {{ pool: llama-v1, weight: 90, model: llama-3-v1 }}\n      - {{ pool: llama-v2 }}\n"
        );
        let c = parse(&text, Path::new("c.yaml")).unwrap();
        assert_eq!(
            c.routes[0].targets(),
            vec![Target {
                pool: "llama",
                weight: 1,
                model: Some("llama-3-8b-instruct")
            }]
        );
        // A backend's own model wins; one without inherits the route's rewrite; weight
        // defaults to 1.
        assert_eq!(
            c.routes[1].targets(),
            vec![
                Target {
                    pool: "llama-v1",
                    weight: 90,
                    model: Some("llama-3-v1")
                },
                Target {
                    pool: "llama-v2",
                    weight: 1,
                    model: Some("llama-3")
                },
            ]
        );
        // The effective config (admin `/config`) shows them; a plain route has no new keys.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["routes"][0]["rewrite"]["model"], "llama-3-8b-instruct");
        assert_eq!(json["routes"][1]["backends"][0]["weight"], 90);
        assert!(json["routes"][1].get("pool").is_none());
        let plain = parse(
            &format!("{POOLS}routes: [{{name: r, pool: llama}}]\n"),
            Path::new("c.yaml"),
        )
        .unwrap();
        let json = serde_json::to_value(&plain.routes[0]).unwrap();
        assert!(json.get("backends").is_none() && json.get("rewrite").is_none());
    }

    #[test]
    fn pool_and_backends_are_mutually_exclusive_and_one_is_required() {
        let e = errors("  - name: r\n    pool: llama\n    backends:\n      - {pool: llama}\n");
        assert_eq!(
            e,
            vec!["c.yaml:5:5: routes[0].backends: `pool` and `backends` are mutually exclusive: use one"]
        );
        let e = errors("  - name: r\n    match: {model: x}\n");
        assert_eq!(
            e,
            vec!["c.yaml:3:5: routes[0]: a route needs `pool` or `backends` (or a `redirect` or `direct_response` filter)"]
        );
        let e = errors("  - name: r\n    backends: []\n");
        assert_eq!(
            e,
            vec!["c.yaml:4:5: routes[0].backends: must list at least one backend"]
        );
    }

    #[test]
    fn backend_problems_name_their_key_path() {
        let e = errors(
            "  - name: r\n    backends:\n      - {pool: lama-v1, weight: 0}\n      - {pool: llama-v2, model: \"\"}\n    rewrite: {model: \" \"}\n",
        );
        assert_eq!(
            e,
            vec![
                "c.yaml:5:10: routes[0].backends[0].pool: no pool named `lama-v1` (did you mean `llama-v1`?)",
                "c.yaml:5:25: routes[0].backends[0].weight: weight must be at least 1",
                "c.yaml:6:26: routes[0].backends[1].model: model must not be empty",
                "c.yaml:7:15: routes[0].rewrite.model: model must not be empty",
            ]
        );
    }

    #[test]
    fn typos_in_backends_and_rewrite_are_rejected() {
        let e = errors("  - name: r\n    backends:\n      - {pool: llama, wieght: 2}\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("c.yaml:5:") && e[0].contains("(did you mean `weight`?)"),
            "{e:?}"
        );
        let e = errors("  - name: r\n    pool: llama\n    rewrite: {}\n");
        assert!(e[0].contains("missing field `model`"), "{e:?}");
    }
}
