//! Rate limits (`rate_limits:`), named once and applied by the routes that list them. A limit
//! counts per key (a header, the hashed API key, the client IP, or the route as a whole) either
//! requests, in a token bucket (`limit` per `per`, up to `burst` at once), or LLM tokens, in
//! fixed windows of `per` aligned to the Unix epoch (as Envoy's rate limit service counts), each
//! request reserving its estimate up front and settling with the usage the response reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub key: KeySpec,
    /// The key a request without the limit's key counts under; unset, such a request is not
    /// limited by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_key: Option<String>,
    /// Requests allowed per `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Rate>,
    /// LLM tokens (prompt and completion) per `per`; for routes to `inference` pools, whose
    /// request bodies the gateway reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Rate>,
    /// The completion tokens reserved for a request that does not give `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// The most taken at once after a quiet spell; default `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Where the counts live: `local` (per gateway) only, for now.
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub mode: Mode,
}

fn default_max_tokens() -> u32 {
    256
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub limit: u64,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

/// What a limit counts by: one key, or several combined (`[api_key, model]`: each API key's
/// use of each model). A request missing any part has no key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum KeySpec {
    One(LimitKey),
    All(Vec<LimitKey>),
}

impl KeySpec {
    pub fn parts(&self) -> &[LimitKey] {
        match self {
            KeySpec::One(k) => std::slice::from_ref(k),
            KeySpec::All(v) => v,
        }
    }
}

/// One part of a limit's key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitKey {
    Header(String),
    /// The bearer token of `Authorization`, hashed.
    ApiKey,
    SourceIp,
    /// The route as a whole: one bucket for everyone.
    Route,
    /// The model the request's OpenAI body names (requests to `inference` pools).
    Model,
}

/// The Redis shared limits live in.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Bounds each call; past it the call counts as an error.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub on_error: OnError,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(20)
}

/// What a shared limit does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the request through, uncounted (fail open).
    #[default]
    Allow,
    /// Refuse it with 429 (fail closed).
    Deny,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse requests over the limit (429).
    #[default]
    Enforce,
    /// Count them as limited, and let them through.
    Shadow,
}

/// Problems with the `redis` section, as (key below `redis`, message).
pub(crate) fn validate_redis(r: &Redis) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !r.url.starts_with("redis://") {
        out.push(("url".into(), format!("`{}`: use redis://host:port", r.url)));
    }
    if r.timeout.is_zero() {
        out.push(("timeout".into(), "must be positive".into()));
    }
    out
}

/// Problems with one limit, as (key below `rate_limits[i]`, message).
pub(crate) fn validate(l: &RateLimit) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (what, rate) = match (&l.requests, &l.tokens) {
        (None, None) => {
            out.push((
                "requests".into(),
                "a limit needs `requests: {limit, per}` or `tokens: {limit, per}`".into(),
            ));
            return out;
        }
        (Some(_), Some(_)) => {
            out.push((
                "tokens".into(),
                "a limit counts `requests` or `tokens`, not both: make two limits".into(),
            ));
            return out;
        }
        (Some(r), None) => ("requests", r),
        (None, Some(t)) => ("tokens", t),
    };
    if rate.limit == 0 {
        out.push((format!("{what}.limit"), "must be at least 1".into()));
    }
    if rate.per.is_zero() || rate.per.subsec_nanos() != 0 && what == "tokens" {
        out.push((
            format!("{what}.per"),
            if what == "tokens" {
                "must be a positive whole number of seconds (windows are aligned to them)"
            } else {
                "must be positive"
            }
            .into(),
        ));
    }
    if l.burst == Some(0) {
        out.push(("burst".into(), "must be at least 1".into()));
    }
    if what == "tokens" && l.burst.is_some() && l.burst != Some(0) {
        out.push((
            "burst".into(),
            "token limits count fixed windows of `per`; `burst` applies to `requests`".into(),
        ));
    }
    if l.default_max_tokens == 0 {
        out.push(("default_max_tokens".into(), "must be at least 1".into()));
    }
    if l.store == Store::Redis && l.burst.is_some() && what == "requests" {
        out.push((
            "burst".into(),
            "shared (redis) limits count fixed windows of `per`; `burst` applies to local ones"
                .into(),
        ));
    }
    if l.store == Store::Redis && what == "requests" && rate.per.subsec_nanos() != 0 {
        out.push((
            "requests.per".into(),
            "must be a whole number of seconds for a shared (redis) limit".into(),
        ));
    }
    if l.key.parts().is_empty() {
        out.push((
            "key".into(),
            "a combined key needs at least one part".into(),
        ));
    }
    for k in l.key.parts() {
        if let LimitKey::Header(h) = k {
            if h.is_empty() || !h.bytes().all(crate::validate::is_token_char) {
                out.push(("key.header".into(), format!("`{h}` is not a header name")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use std::path::Path;

    #[test]
    fn bad_limits_are_refused_by_name() {
        let errs = match parse(
            "rate_limits:\n  - {name: a, key: api_key, tokens: {limit: 100, per: 1m}}\n  - {name: b, key: {header: 'x y'}, requests: {limit: 0, per: 0s}, store: redis, burst: 0}\n  - {name: a, key: route, requests: {limit: 1, per: 1s}}\n  - {name: c, key: route, tokens: {limit: 10, per: 1500ms}, burst: 5, default_max_tokens: 0}\n  - {name: d, key: route, tokens: {limit: 10, per: 1s}, requests: {limit: 1, per: 1s}}\n  - {name: e, key: [], requests: {limit: 1, per: 1s}}\n  - {name: f, key: [api_key, model, {header: x-tenant}], requests: {limit: 1, per: 1s}, default_key: anon}\n",
            Path::new("c.yaml"),
        ) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
        };
        for want in [
            "rate_limits[1].key.header: `x y` is not a header name",
            "rate_limits[1].requests.limit: must be at least 1",
            "rate_limits[1].requests.per: must be positive",
            "rate_limits[1].burst: must be at least 1",
            "rate_limits[2].name",
            "rate_limits[3].tokens.per: must be a positive whole number of seconds",
            "rate_limits[3].burst: token limits count fixed windows",
            "rate_limits[3].default_max_tokens: must be at least 1",
            "rate_limits[4].tokens: a limit counts `requests` or `tokens`, not both",
            "rate_limits[5].key: a combined key needs at least one part",
            "rate_limits[1].store: a shared limit needs a `redis: { url: redis://host:port }` section",
        ] {
            assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
        }
        assert!(!errs.contains("rate_limits[0]"), "{errs}");
        assert!(!errs.contains("rate_limits[6]"), "{errs}");
    }
}
