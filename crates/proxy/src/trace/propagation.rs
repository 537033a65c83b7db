//! W3C Trace Context on the request path: reading a parent from request headers (or from the
//! header pairs Envoy sends `switchyard epp`), and writing `traceparent` cheaply.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::Extractor;

pub(super) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A span name that borrows the method's text for the standard methods.
pub(super) fn method_name(m: &Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().position(|s| s == m) {
        Some(i) => std::borrow::Cow::Borrowed(NAMES[i]),
        None => std::borrow::Cow::Owned(m.as_str().to_owned()),
    }
}

/// `traceparent` for `sc`, as `TraceContextPropagator` writes it (version 00, the sampled flag
/// only), hex-encoded by hand: the propagator's `format!` is most of the cost of an unsampled
/// request (tested equal below).
pub(super) fn traceparent(sc: &opentelemetry::trace::SpanContext) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    let mut at = 3;
    let trace = sc.trace_id().to_bytes();
    let span = sc.span_id().to_bytes();
    let flags = [(sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED).to_u8()];
    for (part, sep) in [(&trace[..], true), (&span[..], true), (&flags[..], false)] {
        for b in part {
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
        if sep {
            out[at] = b'-';
            at += 1;
        }
    }
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

pub(super) struct HeaderExtractor<'a>(pub(super) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Header pairs as `switchyard epp` receives them from Envoy.
pub(super) struct PairExtractor<'a>(pub(super) &'a [(String, String)]);

impl Extractor for PairExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}
