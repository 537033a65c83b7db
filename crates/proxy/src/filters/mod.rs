//! A route's filters (`routes[].filters`), compiled when the config loads: header names parsed,
//! fixed values prebuilt, variables resolved to a small enum, so a request only copies values
//! and a route without filters pays one `None` check per side. The request side runs at the end
//! of the request rewrite stage, so every attempt, retry, hedge and mirror copy carries it; the
//! response side runs before the response head is written, so streamed bodies and trailers
//! pass untouched.

mod answer;
mod headers;
mod url;

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Response;
use switchyard_config::filters::Filter;

pub use answer::{Answer, AnswerTo};
use headers::HeaderOps;
use url::UrlRewrite;

use crate::body::ResponseBody;
use crate::headers::X_REQUEST_ID;
use crate::route_metrics::RouteMetrics;

/// A route's filters, in the order they run on each side.
pub struct RouteFilters {
    request: Box<[HeaderOps]>,
    response: Box<[HeaderOps]>,
    rewrite: Option<UrlRewrite>,
    /// The route's own answer (`redirect`, `direct_response`): it has no upstream.
    pub answer: Option<Answer>,
    /// A response value reads a request header, so the request's headers are kept for it.
    response_reads_request: bool,
}

/// What a value may be filled in from.
pub struct Vars<'a> {
    pub request_id: &'a HeaderValue,
    pub client_ip: &'a HeaderValue,
    pub route: &'a str,
}

impl RouteFilters {
    /// `None` for a route without filters, which then pays nothing per request.
    pub fn compile(
        route: &switchyard_config::Route,
        answer_metrics: impl FnOnce() -> Arc<RouteMetrics>,
    ) -> Result<Option<Box<Self>>, String> {
        if route.filters.is_empty() {
            return Ok(None);
        }
        let mut out = Self {
            request: Box::new([]),
            response: Box::new([]),
            rewrite: None,
            answer: None,
            response_reads_request: false,
        };
        let (mut request, mut response) = (Vec::new(), Vec::new());
        let prefix = route.matcher.path_prefix.as_deref();
        for f in &route.filters {
            match f {
                Filter::RequestHeaders(h) => request.push(HeaderOps::compile(h)?),
                Filter::ResponseHeaders(h) => response.push(HeaderOps::compile(h)?),
                Filter::UrlRewrite(u) => out.rewrite = Some(UrlRewrite::compile(u, prefix)?),
                Filter::Redirect(r) => out.answer = Some(Answer::redirect(r, prefix)?),
                Filter::DirectResponse(d) => out.answer = Some(Answer::direct(d)?),
            }
        }
        if let Some(a) = &mut out.answer {
            a.set_metrics(answer_metrics());
        }
        out.response_reads_request = response.iter().any(HeaderOps::reads_request);
        out.request = request.into_boxed_slice();
        out.response = response.into_boxed_slice();
        Ok(Some(Box::new(out)))
    }

    /// The upstream request's head: header changes in order, then the URL rewrite.
    pub fn apply_request(&self, parts: &mut http::request::Parts, vars: &Vars<'_>) {
        for ops in &self.request {
            ops.apply_to_request(&mut parts.headers, vars);
        }
        if let Some(r) = &self.rewrite {
            r.apply(parts);
        }
    }

    pub fn changes_response(&self) -> bool {
        !self.response.is_empty()
    }

    /// Whether [`Self::apply_response`] wants the request's headers.
    pub fn response_reads_request(&self) -> bool {
        self.response_reads_request
    }

    /// The response's head, before its first byte goes out. `%REQ(..)%` reads `request`.
    pub fn apply_response(
        &self,
        headers: &mut HeaderMap,
        vars: &Vars<'_>,
        request: Option<&HeaderMap>,
    ) {
        let empty = HeaderMap::new();
        for ops in &self.response {
            ops.apply(headers, vars, request.unwrap_or(&empty));
        }
    }

    /// The same, on an upstream's raw HTTP/1 head going to an HTTP/1 client: changed in place,
    /// it is still written out as it came, with no header map built.
    pub fn apply_response_raw(
        &self,
        raw: &mut crate::h1_codec::RawHeaders,
        vars: &Vars<'_>,
        request: Option<&HeaderMap>,
    ) {
        let empty = HeaderMap::new();
        for ops in &self.response {
            ops.apply(raw, vars, request.unwrap_or(&empty));
        }
    }
}

impl RouteFilters {
    /// The route's answer with the gateway's request id and the route's response filters.
    pub fn answer(&self, to: &AnswerTo<'_>, vars: &Vars<'_>) -> Option<Response<ResponseBody>> {
        let mut resp = self.answer.as_ref()?.respond(to);
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), vars.request_id.clone());
        self.apply_response(resp.headers_mut(), vars, Some(to.headers));
        Some(resp)
    }
}

pub(crate) fn name(n: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("`{n}` is not a header name"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::header::HOST;

    pub(crate) fn filters(yaml: &str) -> Box<RouteFilters> {
        let c = switchyard_config::parse(
            &format!("pools: [{{name: p}}]\nroutes:\n{yaml}"),
            std::path::Path::new("c.yaml"),
        )
        .unwrap();
        let m = switchyard_telemetry::Metrics::new();
        RouteFilters::compile(&c.routes[0], || {
            Arc::new(RouteMetrics::new(
                &m,
                &crate::observe::LiveRegistry::default(),
                "r",
                "",
            ))
        })
        .unwrap()
        .unwrap()
    }

    pub(crate) fn vars() -> (HeaderValue, HeaderValue) {
        (
            HeaderValue::from_static("rid-1"),
            HeaderValue::from_static("10.0.0.9"),
        )
    }

    #[test]
    fn header_ops_remove_then_set_then_add_and_read_variables() {
        let f = filters("  - name: r\n    pool: p\n    filters:\n      - request_headers: { set: { X-Env: prod, x-who: '${client_ip}/${route}/${request_id}/%REQ(x-user)%' }, add: { x-tag: b }, remove: [X-Internal, x-tag] }\n");
        let (id, ip) = vars();
        let v = Vars {
            request_id: &id,
            client_ip: &ip,
            route: "r",
        };
        let mut parts = http::Request::builder()
            .uri("/a?q=1")
            .header("x-env", "dev")
            .header("x-env", "test")
            .header("x-internal", "secret")
            .header("x-tag", "a")
            .header("x-user", "ann")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        f.apply_request(&mut parts, &v);
        let all = |n: &str| {
            parts
                .headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-env"), ["prod"]);
        assert_eq!(all("x-internal"), Vec::<String>::new());
        assert_eq!(all("x-tag"), ["b"]);
        assert_eq!(all("x-who"), ["10.0.0.9/r/rid-1/ann"]);
        assert_eq!(parts.uri, "/a?q=1");
    }

    #[test]
    fn url_rewrite_replaces_prefix_or_path_and_host() {
        let f = filters("  - name: r\n    match: { path_prefix: /plain }\n    pool: p\n    filters:\n      - url_rewrite: { path_prefix: /, host: 'models.internal:9000' }\n");
        let (id, ip) = vars();
        let v = Vars {
            request_id: &id,
            client_ip: &ip,
            route: "r",
        };
        for (from, want) in [
            ("/plain/v1/models?a=b", "/v1/models?a=b"),
            ("/plain", "/"),
            ("/plain/", "/"),
        ] {
            let mut parts = http::Request::builder()
                .uri(from)
                .header(HOST, "x")
                .body(())
                .unwrap()
                .into_parts()
                .0;
            f.apply_request(&mut parts, &v);
            assert_eq!(parts.uri, want);
            assert_eq!(parts.headers[HOST], "models.internal:9000");
        }
        // An absolute-form target (HTTP/2's :authority) gets the new authority too.
        let mut parts = http::Request::builder()
            .uri("http://x:1/plain/a")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        f.apply_request(&mut parts, &v);
        assert_eq!(parts.uri, "http://models.internal:9000/a");
    }
}
