//! Route filters (`routes[].filters`), with the semantics of Gateway API's HTTPRoute filters
//! (`RequestHeaderModifier`, `ResponseHeaderModifier`, `URLRewrite`, `RequestRedirect`) and
//! Envoy's `direct_response`: the schema, the header-value templates, and every check that can
//! be made before a request arrives, so the proxy compiles filters that cannot fail. Here the
//! schema; header-value templates in `value.rs`; the checks in `validate.rs`.

mod validate;
mod value;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Route;

pub(crate) use validate::validate;
pub use value::{parse_value, Part};

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
}
