//! A route's own answer: `redirect` (Location by Gateway API's rules) or `direct_response`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::uri::{Authority, Uri};
use http::{Response, StatusCode};
use switchyard_config::filters as config;

use super::name;
use super::url::PathRewrite;
use crate::body::ResponseBody;
use crate::route_metrics::RouteMetrics;

/// A route's own answer, counted under the route with no pool.
pub struct Answer {
    kind: AnswerKind,
    metrics: Option<Arc<RouteMetrics>>,
}

enum AnswerKind {
    Redirect(Redirect),
    Direct(Direct),
}

/// What an answer reads from the request and its connection.
pub struct AnswerTo<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub https: bool,
    /// The listener's port: a redirect's default.
    pub local_port: u16,
}

impl Answer {
    pub(super) fn redirect(r: &config::Redirect, matched: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            kind: AnswerKind::Redirect(Redirect::compile(r, matched)?),
            metrics: None,
        })
    }

    pub(super) fn direct(d: &config::DirectResponse) -> Result<Self, String> {
        Ok(Self {
            kind: AnswerKind::Direct(Direct::compile(d)?),
            metrics: None,
        })
    }

    pub(super) fn set_metrics(&mut self, metrics: Arc<RouteMetrics>) {
        self.metrics = Some(metrics);
    }

    pub fn metrics(&self) -> Arc<RouteMetrics> {
        self.metrics.clone().expect("set when compiled")
    }

    pub fn respond(&self, to: &AnswerTo<'_>) -> Response<ResponseBody> {
        match &self.kind {
            AnswerKind::Redirect(r) => r.respond(to),
            AnswerKind::Direct(d) => {
                let mut resp = Response::new(ResponseBody::full(d.body.clone()));
                *resp.status_mut() = d.status;
                *resp.headers_mut() = d.headers.clone();
                resp
            }
        }
    }
}

struct Redirect {
    scheme: Option<&'static str>,
    host: Option<Box<str>>,
    port: Option<u16>,
    path: PathRewrite,
    status: StatusCode,
}

impl Redirect {
    fn compile(r: &config::Redirect, matched: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            scheme: match r.scheme.as_deref() {
                None => None,
                Some("http") => Some("http"),
                Some("https") => Some("https"),
                Some(other) => return Err(format!("`{other}` is not a redirect scheme")),
            },
            host: r.host.as_deref().map(Into::into),
            port: r.port,
            path: PathRewrite::compile(r.path.as_deref(), r.path_prefix.as_deref(), matched)?,
            status: StatusCode::from_u16(r.status)
                .map_err(|_| format!("{} is not a status", r.status))?,
        })
    }

    /// Gateway API's rules: the port is the scheme's well-known one when the scheme is set, else
    /// the listener's, and is left out when it is the scheme's default.
    fn location(&self, to: &AnswerTo<'_>) -> String {
        let scheme = self
            .scheme
            .unwrap_or(if to.https { "https" } else { "http" });
        let port = self.port.unwrap_or(match self.scheme {
            Some("https") => 443,
            Some(_) => 80,
            None => to.local_port,
        });
        let request_host = || {
            to.headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
                .or_else(|| to.uri.authority().cloned())
                .map(|a| a.host().to_string())
        };
        let path_and_query = self.path.apply(to.uri).map_or_else(
            || {
                to.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string()
            },
            |p| p.as_str().to_string(),
        );
        let Some(host) = self
            .host
            .as_deref()
            .map(str::to_string)
            .or_else(request_host)
        else {
            // No host to name: a relative reference, which keeps the client's own.
            return path_and_query;
        };
        let default = matches!((scheme, port), ("http", 80) | ("https", 443));
        if default {
            format!("{scheme}://{host}{path_and_query}")
        } else {
            format!("{scheme}://{host}:{port}{path_and_query}")
        }
    }

    fn respond(&self, to: &AnswerTo<'_>) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::empty());
        *resp.status_mut() = self.status;
        if let Ok(v) = HeaderValue::try_from(self.location(to)) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }
}

struct Direct {
    status: StatusCode,
    body: Bytes,
    headers: HeaderMap,
}

impl Direct {
    fn compile(d: &config::DirectResponse) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (n, v) in &d.headers {
            let v = HeaderValue::from_str(v).map_err(|_| format!("`{v}` is not a header value"))?;
            headers.append(name(n)?, v);
        }
        if !d.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        Ok(Self {
            status: StatusCode::from_u16(d.status)
                .map_err(|_| format!("{} is not a status", d.status))?,
            body: Bytes::from(d.body.clone()),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::tests::{filters, vars};
    use crate::filters::Vars;

    #[test]
    fn redirects_follow_gateway_api_port_rules() {
        let uri: Uri = "/v0/models?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("example.org:8080"));
        let to = |https| AnswerTo {
            uri: &uri,
            headers: &headers,
            https,
            local_port: 8080,
        };
        let location = |spec: &str, https| {
            let f = filters(&format!("  - name: r\n    match: {{ path_prefix: /v0/ }}\n    filters:\n      - redirect: {spec}\n"));
            let (id, ip) = vars();
            let resp = f
                .answer(
                    &to(https),
                    &Vars {
                        request_id: &id,
                        client_ip: &ip,
                        route: "r",
                    },
                )
                .unwrap();
            (
                resp.status().as_u16(),
                resp.headers()[LOCATION].to_str().unwrap().to_string(),
            )
        };
        let cases = [
            ("{}", false, 302, "http://example.org:8080/v0/models?x=1"),
            ("{}", true, 302, "https://example.org:8080/v0/models?x=1"),
            (
                "{ scheme: https }",
                false,
                302,
                "https://example.org/v0/models?x=1",
            ),
            (
                "{ scheme: http }",
                true,
                302,
                "http://example.org/v0/models?x=1",
            ),
            (
                "{ port: 8443 }",
                false,
                302,
                "http://example.org:8443/v0/models?x=1",
            ),
            (
                "{ scheme: https, port: 443 }",
                false,
                302,
                "https://example.org/v0/models?x=1",
            ),
            (
                "{ scheme: https, port: 8443 }",
                false,
                302,
                "https://example.org:8443/v0/models?x=1",
            ),
            (
                "{ scheme: http, port: 80 }",
                false,
                302,
                "http://example.org/v0/models?x=1",
            ),
            (
                "{ host: api.example.com, status: 301 }",
                false,
                301,
                "http://api.example.com:8080/v0/models?x=1",
            ),
            (
                "{ path: /full, status: 308 }",
                false,
                308,
                "http://example.org:8080/full?x=1",
            ),
            (
                "{ path_prefix: /v1/, scheme: https, host: a.b }",
                false,
                302,
                "https://a.b/v1/models?x=1",
            ),
        ];
        for (spec, https, status, want) in cases {
            assert_eq!(location(spec, https), (status, want.to_string()), "{spec}");
        }
    }
}
