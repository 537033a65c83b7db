//! Unit tests of the `trace` module.
use super::*;
use std::time::Instant;

fn config(ratio: f64) -> TracingConfig {
    switchyard_config::parse(
        &format!("tracing:\n  otlp: {{endpoint: 'http://127.0.0.1:9'}}\n  sample_ratio: {ratio}\n"),
        std::path::Path::new("t.yaml"),
    )
    .unwrap()
    .tracing
    .unwrap()
}

fn start(t: &Tracing, headers: &HeaderMap) -> RequestSpan {
    t.start_request(
        &Method::GET,
        "/x",
        Version::HTTP_11,
        headers,
        "127.0.0.1:1".parse().unwrap(),
        &HeaderValue::from_static("id"),
    )
}

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn attempts_continue_the_incoming_trace_and_replace_traceparent() {
    let t = Tracing::new(&config(0.0)).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static(PARENT));
    headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
    let req = start(&t, &headers);
    // A sampled parent is honoured even at ratio 0.
    assert!(req.recording());
    assert_eq!(
        req.trace_id().as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    let attempt = req.attempt(
        AttemptKind::First,
        "p",
        "round_robin",
        "127.0.0.1:2".parse().unwrap(),
        &mut headers,
    );
    let sent = headers["traceparent"].to_str().unwrap().to_string();
    let sc = attempt.span.span_context();
    assert_eq!(
        sent,
        format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", sc.span_id())
    );
    assert_ne!(sent, PARENT);
    assert_eq!(headers["tracestate"], "vendor=x");
    attempt.cancel();
    req.end(Some("r"), Some("p"), 200, None);
    t.shutdown().await;
}

#[tokio::test]
async fn unsampled_requests_still_propagate_but_record_nothing() {
    let t = Tracing::new(&config(0.0)).unwrap();
    let mut headers = HeaderMap::new();
    let req = start(&t, &headers);
    assert!(!req.recording());
    assert_eq!(req.trace_id(), None);
    let _a = req.attempt(
        AttemptKind::First,
        "p",
        "random",
        "127.0.0.1:2".parse().unwrap(),
        &mut headers,
    );
    assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
    assert!(!headers.contains_key("tracestate"));
    t.shutdown().await;
}

#[test]
fn traceparent_is_what_the_w3c_propagator_writes() {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    for i in 0..200u64 {
        let flags = if i % 2 == 0 {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(
            TraceId::from(fastrand::u128(1..)),
            SpanId::from(fastrand::u64(1..) ^ i),
            flags,
            false,
            TraceState::NONE,
        );
        let mut expected = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(sc.clone()),
            &mut expected,
        );
        assert_eq!(traceparent(&sc), expected["traceparent"]);
    }
}

#[test]
fn invalid_parent_drops_tracestate_and_starts_a_trace() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let t = Tracing::new(&config(1.0)).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static("00-zz-bad-01"));
    headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
    let req = start(&t, &headers);
    assert!(req.recording());
    let _a = req.attempt(
        AttemptKind::First,
        "p",
        "random",
        "127.0.0.1:2".parse().unwrap(),
        &mut headers,
    );
    assert!(headers["traceparent"].to_str().unwrap().ends_with("-01"));
    assert!(!headers.contains_key("tracestate"));
    assert_eq!(method_name(&Method::GET), "GET");
    assert_eq!(method_name(&Method::from_bytes(b"PURGE").unwrap()), "PURGE");
    drop(req);
    rt.block_on(t.shutdown());
}

#[test]
fn untraced_requests_carry_only_pointers() {
    // What the request path holds when tracing is off: one word each (see `AttemptSpan`).
    assert_eq!(std::mem::size_of::<Option<AttemptSpan>>(), 8);
    assert_eq!(std::mem::size_of::<Option<Box<RequestSpan>>>(), 8);
}

#[test]
fn warnings_are_rate_limited() {
    let w = WarnLimiter::default();
    assert_eq!(w.allow(), Some(0));
    assert_eq!(w.allow(), None);
    assert_eq!(w.allow(), None);
    *w.last.lock().unwrap() = Some(Instant::now() - EXPORT_WARN_EVERY);
    assert_eq!(w.allow(), Some(2));
}
