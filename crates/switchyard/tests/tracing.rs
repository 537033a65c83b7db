//! OpenTelemetry tracing end to end: the real gateway exports to a real OTLP receiver running in
//! this process (OTLP/gRPC through the generated tonic `TraceService`, and OTLP/HTTP protobuf on
//! a small hyper server), in front of real origins and simulated model servers.

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp::{hex, Receiver};
use support::client::{self, send, TestClient};
use support::origin::Origin;
use support::Gateway;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A fresh sampled `traceparent`: (header, trace id, parent span id).
fn traceparent() -> (String, String, String) {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let parent = format!("{:016x}", fastrand::u64(1..));
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

fn attrs(s: &Span) -> HashMap<String, Value> {
    s.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn str_attr(s: &Span, key: &str) -> String {
    match attrs(s).remove(key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("{key} on span `{}`: {other:?}", s.name),
    }
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match attrs(s).remove(key) {
        Some(Value::IntValue(v)) => v,
        other => panic!("{key} on span `{}`: {other:?}", s.name),
    }
}

fn of_kind(spans: &[Span], kind: SpanKind) -> Vec<Span> {
    let mut v: Vec<Span> = spans
        .iter()
        .filter(|s| s.kind == kind as i32)
        .cloned()
        .collect();
    v.sort_by_key(|s| s.start_time_unix_nano);
    v
}

fn tracing_section(receiver: &Receiver, protocol: &str, extra: &str) -> String {
    format!(
        "tracing:\n  otlp: {{endpoint: 'http://{}', protocol: {protocol}}}\n  service_name: gw-test\n  batch: {{scheduled_delay: 20ms}}\n{extra}",
        receiver.addr
    )
}

async fn get_traced(c: &TestClient, url: &str, traceparent: Option<&str>) -> (u16, Bytes) {
    let mut req = http::Request::get(url);
    if let Some(tp) = traceparent {
        req = req
            .header("traceparent", tp)
            .header("tracestate", "vendor=1");
    }
    let (status, _, body) = send(c, req.body(Full::new(Bytes::new())).unwrap()).await;
    (status.as_u16(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_parents_the_server_span_and_the_upstream_sees_the_attempt() {
    let receiver = Receiver::grpc();
    let origin = Origin::start();
    let config =
        support::simple_config(&[origin.addr], "", "") + &tracing_section(&receiver, "grpc", "");
    let gw = Gateway::start(&config);
    let c = client::http1();
    let (tp, trace, parent) = traceparent();
    let (status, body) = get_traced(&c, &gw.url("/hello"), Some(&tp)).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();

    let spans = receiver.wait_trace(&trace, 2);
    let server = &of_kind(&spans, SpanKind::Server)[0];
    let attempts = of_kind(&spans, SpanKind::Client);
    assert_eq!(attempts.len(), 1, "{spans:?}");
    let attempt = &attempts[0];
    assert_eq!(hex(&server.parent_span_id), parent);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(server.name, "GET r");
    assert_eq!(str_attr(server, "http.request.method"), "GET");
    assert_eq!(str_attr(server, "url.path"), "/hello");
    assert_eq!(str_attr(server, "http.route"), "r");
    assert_eq!(str_attr(server, "switchyard.pool"), "p");
    assert_eq!(str_attr(server, "network.protocol.version"), "1.1");
    assert_eq!(str_attr(server, "client.address"), "127.0.0.1");
    assert_eq!(int_attr(server, "http.response.status_code"), 200);
    assert!(!str_attr(server, "switchyard.request_id").is_empty());
    assert_eq!(str_attr(attempt, "switchyard.attempt.kind"), "first");
    assert_eq!(int_attr(attempt, "switchyard.attempt"), 1);
    assert_eq!(str_attr(attempt, "switchyard.balancer"), "round_robin");
    assert_eq!(str_attr(attempt, "server.address"), "127.0.0.1");
    assert_eq!(
        int_attr(attempt, "server.port"),
        i64::from(origin.addr.port())
    );
    assert_eq!(int_attr(attempt, "http.response.status_code"), 200);
    // The attempt span ends before the server span, both after the response.
    assert!(attempt.end_time_unix_nano <= server.end_time_unix_nano);

    // The upstream got the attempt's context in place of the client's, and the tracestate.
    let sent = seen["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(sent, format!("00-{trace}-{}-01", hex(&attempt.span_id)));
    assert_eq!(seen["headers"]["tracestate"], "vendor=1");
    assert!(receiver
        .all()
        .iter()
        .all(|(service, _)| service == "gw-test"));

    // The access log line names the trace.
    let deadline = Instant::now() + support::WAIT;
    loop {
        let line = gw
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains("\"/hello\""));
        if let Some(line) = line {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["trace_id"], trace.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_attempt_carries_the_pick_explanation_over_otlp_http() {
    let receiver = Receiver::http();
    let fleet = switchyard_sim::start_fleet(switchyard_sim::FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![switchyard_sim::ReplicaConfig {
            count: 2,
            speed: 200.0,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let eps: Vec<String> = fleet.addresses().iter().map(|a| a.to_string()).collect();
    let config = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0, trusted_headers: [debug]}}\nroutes:\n  - {{name: chat, pool: llm}}\npools:\n  - name: llm\n    endpoints: [{}]\n    balancer: {{kind: inference, scrape_interval: 20ms}}\n{}",
        eps.join(", "),
        tracing_section(&receiver, "http", "")
    );
    let gw = Gateway::start(&config);
    let c = client::http1();
    let body = format!(
        r#"{{"model":"{MODEL}","max_tokens":3,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    for debug in [true, false] {
        let (tp, trace, _) = traceparent();
        let mut req = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("traceparent", &tp);
        if debug {
            req = req.header("x-switchyard-debug", "1");
        }
        let req = req.body(Full::new(Bytes::from(body.clone()))).unwrap();
        let (status, headers, _) = send(&c, req).await;
        assert_eq!(status, 200);
        let spans = receiver.wait_trace(&trace, 2);
        let server = &of_kind(&spans, SpanKind::Server)[0];
        let attempt = &of_kind(&spans, SpanKind::Client)[0];
        let explanation = str_attr(attempt, "switchyard.pick.explanation");
        assert_eq!(str_attr(attempt, "switchyard.balancer"), "inference");
        assert_eq!(str_attr(server, "gen_ai.request.model"), MODEL);
        assert!(int_attr(server, "gen_ai.usage.output_tokens") > 0);
        assert!(int_attr(server, "gen_ai.usage.input_tokens") > 0);
        let a = attrs(attempt);
        assert!(
            matches!(a.get("switchyard.pick.score"), Some(Value::DoubleValue(_))),
            "{a:?}"
        );
        assert!(
            matches!(
                a.get("switchyard.pick.score.queue"),
                Some(Value::DoubleValue(_))
            ),
            "{a:?}"
        );
        assert!(server.events.is_empty(), "only streams mark a first token");
        if debug {
            // Exactly what the client was shown.
            assert_eq!(headers["x-switchyard-pick"].to_str().unwrap(), explanation);
        } else {
            assert!(!headers.contains_key("x-switchyard-pick"));
            assert!(explanation.contains('('), "{explanation}");
        }
    }

    // A stream: the server span marks the first token and ends with the last byte.
    let (tp, trace, _) = traceparent();
    let stream = format!(
        r#"{{"model":"{MODEL}","max_tokens":5,"stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("traceparent", &tp)
        .body(Full::new(Bytes::from(stream)))
        .unwrap();
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, 200);
    let spans = receiver.wait_trace(&trace, 2);
    let server = &of_kind(&spans, SpanKind::Server)[0];
    let first = server
        .events
        .iter()
        .find(|e| e.name == "first_token")
        .expect("first_token event");
    assert!(first.time_unix_nano > server.start_time_unix_nano);
    assert!(first.time_unix_nano < server.end_time_unix_nano);
    assert_eq!(int_attr(server, "gen_ai.usage.output_tokens"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_has_one_span_per_attempt() {
    let receiver = Receiver::grpc();
    let (a, b) = (Origin::start(), Origin::start());
    let route = "    retry: { attempts: 2, retry_on: [503], budget: { ratio: 1.0, min_concurrency: 10 } }\n";
    let config = support::simple_config(&[a.addr, b.addr], route, "")
        + &tracing_section(&receiver, "grpc", "");
    let gw = Gateway::start(&config);
    let c = client::http1();
    let (tp, trace, _) = traceparent();
    // Both origins answer 503 on this path: two attempts, the second's answer is returned.
    let (status, _) = get_traced(&c, &gw.url("/status/503"), Some(&tp)).await;
    assert_eq!(status, 503);
    let spans = receiver.wait_trace(&trace, 3);
    let server = &of_kind(&spans, SpanKind::Server)[0];
    let attempts = of_kind(&spans, SpanKind::Client);
    assert_eq!(attempts.len(), 2, "{spans:?}");
    let kinds: Vec<String> = attempts
        .iter()
        .map(|s| str_attr(s, "switchyard.attempt.kind"))
        .collect();
    assert_eq!(kinds, ["first", "retry"]);
    let ports: Vec<i64> = attempts
        .iter()
        .map(|s| int_attr(s, "server.port"))
        .collect();
    assert_ne!(ports[0], ports[1], "a retry goes to another endpoint");
    for s in &attempts {
        assert_eq!(s.parent_span_id, server.span_id);
        assert_eq!(int_attr(s, "http.response.status_code"), 503);
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(2), "error status");
    }
    assert_eq!(int_attr(server, "http.response.status_code"), 503);
    assert_eq!(server.status.as_ref().map(|st| st.code), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_exports_only_traces_a_client_sampled() {
    let receiver = Receiver::grpc();
    let origin = Origin::start();
    let config = support::simple_config(&[origin.addr], "", "")
        + &tracing_section(&receiver, "grpc", "  sample_ratio: 0\n");
    let gw = Gateway::start(&config);
    let c = client::http1();
    for _ in 0..20 {
        let (status, body) = get_traced(&c, &gw.url("/x"), None).await;
        assert_eq!(status, 200);
        // Not sampled, but the upstream still gets a trace context (flags 00).
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let tp = seen["headers"]["traceparent"].as_str().unwrap();
        assert!(tp.ends_with("-00"), "{tp}");
    }
    // A client's sampled parent is honoured; once its spans are in, nothing else was exported.
    let (tp, trace, _) = traceparent();
    assert_eq!(get_traced(&c, &gw.url("/x"), Some(&tp)).await.0, 200);
    receiver.wait_trace(&trace, 2);
    let all = receiver.all();
    assert_eq!(all.len(), 2, "{all:?}");
    // And a client's unsampled parent is honoured too.
    let unsampled = format!("00-{:032x}-{:016x}-00", fastrand::u128(1..), 7u64);
    let (_, body) = get_traced(&c, &gw.url("/x"), Some(&unsampled)).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sent = seen["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(&sent[..35], &unsampled[..35], "same trace");
    assert!(sent.ends_with("-00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_fails_requests() {
    // Bound but never listening: every export is refused.
    let (dead, _socket) = support::fleet::dead_address();
    let origin = Origin::start();
    for protocol in ["grpc", "http"] {
        let config = support::simple_config(&[origin.addr], "", "")
            + &format!(
                "tracing:\n  otlp: {{endpoint: 'http://{dead}', protocol: {protocol}, timeout: 200ms}}\n  batch: {{max_queue_size: 8, max_export_batch_size: 4, scheduled_delay: 5ms}}\n"
            );
        let mut gw = Gateway::start(&config);
        let c = client::http1();
        for _ in 0..200 {
            let (status, _) = get_traced(&c, &gw.url("/x"), None).await;
            assert_eq!(status, 200);
        }
        gw.wait_log("tracing: span export failed", 1, support::WAIT);
        // Shutdown still ends promptly: the flush gives up after its timeout.
        gw.signal("TERM");
        assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_never_holds_requests() {
    // Listening but never accepting: the kernel completes each export's connection, and the
    // export then waits for an answer until its 60 s timeout. Requests must not wait with it.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let origin = Origin::start();
    for protocol in ["grpc", "http"] {
        let config = support::simple_config(&[origin.addr], "", "")
            + &format!(
                "tracing:\n  otlp: {{endpoint: 'http://{}', protocol: {protocol}, timeout: 60s}}\n  batch: {{max_queue_size: 8, max_export_batch_size: 4, scheduled_delay: 5ms}}\n",
                stuck_addr
            );
        let gw = Gateway::start(&config);
        let c = client::http1();
        for i in 0..200 {
            let (status, _) =
                tokio::time::timeout(support::WAIT, get_traced(&c, &gw.url("/x"), None))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{protocol}: request {i} waited on the stuck export")
                    });
            assert_eq!(status, 200);
        }
        // All served while the first export still waited (it fails only after 60 s).
        assert_eq!(
            gw.log_count("tracing: span export failed"),
            0,
            "{protocol}: an export gave up before the requests were served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_sigterm_are_flushed_and_reload_switches_collector() {
    let (first, second) = (Receiver::grpc(), Receiver::http());
    let origin = Origin::start();
    let base = support::simple_config(&[origin.addr], "", "");
    // A delay no test waits out: spans only leave on a reload's flush or at shutdown.
    let section = |r: &Receiver, protocol| {
        format!(
            "tracing:\n  otlp: {{endpoint: 'http://{}', protocol: {protocol}}}\n  batch: {{scheduled_delay: 1h}}\n",
            r.addr
        )
    };
    let mut gw = Gateway::start(&(base.clone() + &section(&first, "grpc")));
    let c = client::http1();
    let (tp1, trace1, _) = traceparent();
    assert_eq!(get_traced(&c, &gw.url("/a"), Some(&tp1)).await.0, 200);
    // A changed section applies live: the next request goes to the second collector, and the
    // replaced provider flushes what it had.
    gw.reload(&(base + &section(&second, "http")));
    first.wait_trace(&trace1, 2);
    let (tp2, trace2, _) = traceparent();
    assert_eq!(get_traced(&c, &gw.url("/b"), Some(&tp2)).await.0, 200);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    second.wait_trace(&trace2, 2);
    assert!(first.all().iter().all(|(_, s)| hex(&s.trace_id) == trace1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_request_has_a_span_for_each_side_of_the_race() {
    let receiver = Receiver::grpc();
    let (a, b) = (Origin::start(), Origin::start());
    let route = "    hedge: { delay: 50ms, budget_percent: 100 }\n";
    let config = support::simple_config(&[a.addr, b.addr], route, "")
        + &tracing_section(&receiver, "grpc", "");
    let gw = Gateway::start(&config);
    let c = client::http1();
    let (tp, trace, _) = traceparent();
    // Both sides take 300 ms: the hedge is sent at 50 ms and the first attempt wins.
    let (status, body) = get_traced(&c, &gw.url("/slow?ms=300"), Some(&tp)).await;
    assert_eq!(status, 200, "{body:?}");
    let spans = receiver.wait_trace(&trace, 3);
    let attempts = of_kind(&spans, SpanKind::Client);
    assert_eq!(attempts.len(), 2, "{spans:?}");
    let kinds: Vec<String> = attempts
        .iter()
        .map(|s| str_attr(s, "switchyard.attempt.kind"))
        .collect();
    assert_eq!(kinds, ["first", "hedge"]);
    let cancelled: Vec<bool> = attempts
        .iter()
        .map(|s| attrs(s).contains_key("switchyard.attempt.outcome"))
        .collect();
    // Exactly one side lost the race and was cancelled; the other carries the response.
    assert_eq!(cancelled.iter().filter(|c| **c).count(), 1, "{attempts:?}");
    let winner = attempts
        .iter()
        .zip(&cancelled)
        .find(|(_, c)| !**c)
        .unwrap()
        .0;
    assert_eq!(int_attr(winner, "http.response.status_code"), 200);
}
