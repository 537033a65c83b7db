//! `url_rewrite`: the upstream request's path (whole, or the matched prefix) and Host.

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Uri};
use switchyard_config::filters as config;

fn authority(h: &str) -> Result<(Authority, HeaderValue), String> {
    let a: Authority = h.parse().map_err(|_| format!("`{h}` is not a host"))?;
    let v = HeaderValue::from_str(a.as_str()).map_err(|_| format!("`{h}` is not a host"))?;
    Ok((a, v))
}

/// How a path is rewritten: whole, or the route's matched prefix.
pub(super) enum PathRewrite {
    Keep,
    Full(PathAndQuery),
    Prefix { matched: Box<str>, with: Box<str> },
}

impl PathRewrite {
    pub(super) fn compile(
        path: Option<&str>,
        prefix: Option<&str>,
        matched: Option<&str>,
    ) -> Result<Self, String> {
        match (path, prefix, matched) {
            (Some(p), _, _) => PathAndQuery::try_from(p)
                .map(PathRewrite::Full)
                .map_err(|_| format!("`{p}` is not a path")),
            (None, Some(with), Some(matched)) => {
                PathAndQuery::try_from(with).map_err(|_| format!("`{with}` is not a path"))?;
                Ok(PathRewrite::Prefix {
                    matched: matched.into(),
                    with: with.into(),
                })
            }
            (None, Some(_), None) => {
                Err("`path_prefix` needs the route's `match.path_prefix`".into())
            }
            (None, None, _) => Ok(PathRewrite::Keep),
        }
    }

    /// The new path and query, or `None` to keep them.
    pub(super) fn apply(&self, uri: &Uri) -> Option<PathAndQuery> {
        let path = match self {
            PathRewrite::Keep => return None,
            PathRewrite::Full(p) => p.as_str().to_string(),
            PathRewrite::Prefix { matched, with } => {
                config::replace_prefix(uri.path(), matched, with)
            }
        };
        let joined = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        PathAndQuery::try_from(joined).ok()
    }
}

pub(super) struct UrlRewrite {
    host: Option<(Authority, HeaderValue)>,
    path: PathRewrite,
}

impl UrlRewrite {
    pub(super) fn compile(u: &config::UrlRewrite, matched: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            host: u.host.as_deref().map(authority).transpose()?,
            path: PathRewrite::compile(u.path.as_deref(), u.path_prefix.as_deref(), matched)?,
        })
    }

    pub(super) fn apply(&self, parts: &mut http::request::Parts) {
        let path = self.path.apply(&parts.uri);
        let host = self.host.as_ref();
        if path.is_none() && host.is_none() {
            return;
        }
        if let Some((_, v)) = host {
            parts.headers.insert(HOST, v.clone());
        }
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        if let Some(p) = path {
            uri.path_and_query = Some(p);
        }
        if let (Some(_), Some((a, _))) = (&uri.authority, host) {
            uri.authority = Some(a.clone());
        }
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    }
}
