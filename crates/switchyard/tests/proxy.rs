//! End-to-end forwarding through the real binary: protocols, header rewriting, streaming,
//! gateway-made errors, and routing predicates.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::client::{self, get, send};
use support::origin::Origin;
use support::{simple_config, Gateway};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn forwards_http1_and_rewrites_headers() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    let c = client::http1();
    let req = http::Request::get(gw.url("/hello?x=1"))
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-keep", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&c, req).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["uri"], "/hello?x=1");
    let h = &v["headers"];
    assert_eq!(h["x-keep"], "yes");
    assert!(
        h.get("x-drop-me").is_none(),
        "Connection-listed header forwarded"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let rid = headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        h["x-request-id"], rid,
        "request id passed upstream and echoed"
    );
    assert_eq!(rid.len(), 36);
    // Response hop-by-hop headers are stripped too.
    assert!(headers.get("x-origin-private").is_none());
    assert!(headers.get("keep-alive").is_none());
    // A client-supplied id is kept.
    let req = http::Request::get(gw.url("/"))
        .header("x-request-id", "my-id-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, headers, body) = send(&c, req).await;
    assert_eq!(headers["x-request-id"], "my-id-1");
    assert_eq!(json(&body)["headers"]["x-request-id"], "my-id-1");
}

#[tokio::test]
async fn http2_prior_knowledge_downstream_and_upstream() {
    let origin = Origin::start();
    let yaml = simple_config(&[origin.addr], "", "    protocol: http2\n");
    let gw = Gateway::start(&yaml);
    let (status, _, body) = get(&client::http2(), &gw.url("/h2")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["version"], "HTTP/2.0");
    // HTTP/1.1 on the same port still works, forwarded over h2 upstream.
    let (status, _, body) = get(&client::http1(), &gw.url("/h1")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["version"], "HTTP/2.0");
}

#[tokio::test]
async fn trailers_pass_through_http2() {
    let origin = Origin::start();
    let yaml = simple_config(&[origin.addr], "", "    protocol: http2\n");
    let gw = Gateway::start(&yaml);
    let c = client::http2();
    let resp = c
        .request(
            http::Request::get(gw.url("/trailers"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test]
async fn gateway_errors_have_json_bodies() {
    // 404: no route.
    let origin = Origin::start();
    let yaml = simple_config(&[origin.addr], "", "")
        .replace("match: {path_prefix: /}", "match: {path_prefix: /api/}");
    let gw = Gateway::start(&yaml);
    let c = client::http1();
    let (status, headers, body) = get(&c, &gw.url("/nope")).await;
    assert_eq!(status, 404);
    let v = json(&body);
    assert_eq!(v["error"]["type"], "no_route");
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(
        v["error"]["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    drop(gw);

    // 503: no endpoints.
    let gw = Gateway::start(&simple_config(&[], "", ""));
    let (status, _, body) = get(&c, &gw.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(json(&body)["error"]["type"], "no_endpoint");
    drop(gw);

    // 502: connect failure (a port bound, for the test's length, but not listening).
    let (dead, _dead) = support::fleet::dead_address();
    let gw = Gateway::start(&simple_config(&[dead], "", ""));
    let (status, _, body) = get(&c, &gw.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(json(&body)["error"]["type"], "upstream_connect_failure");
    assert!(gw.metric("switchyard_upstream_connect_errors_total{pool=\"p\"}") >= 1.0);
    drop(gw);

    // 504: the upstream is slower than the route timeout (it would answer 200 after 3 s).
    let gw = Gateway::start(&simple_config(&[origin.addr], "    timeout: 200ms\n", ""));
    let (status, _, body) = get(&c, &gw.url("/slow?ms=3000")).await;
    assert_eq!(status, 504);
    assert_eq!(json(&body)["error"]["type"], "upstream_timeout");
}

#[tokio::test]
async fn sse_events_arrive_as_the_upstream_sends_them() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    let c = client::http1();
    let start = Instant::now();
    let resp = c
        .request(
            http::Request::get(gw.url("/sse?n=4&ms=500"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(start.elapsed());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(text.matches("data: ").count(), 4);
    // The gateway timed the stream: one first chunk, three gaps of ~500 ms.
    let metrics = gw.admin_get("/metrics").1;
    assert!(
        metrics.contains("switchyard_stream_first_chunk_seconds_count{route=\"r\",pool=\"p\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_stream_chunk_gap_seconds_count{route=\"r\",pool=\"p\"} 3"));
    // The first event must not wait for the stream to finish: the origin sends the last one
    // 1.5 s after the first (a 1 s margin for a loaded machine).
    assert!(arrivals.len() >= 3, "events were coalesced: {arrivals:?}");
    assert!(
        arrivals[0] + Duration::from_millis(500) < *arrivals.last().unwrap(),
        "first event held back: {arrivals:?}"
    );
}

#[tokio::test]
async fn idle_timeout_cuts_a_silent_stream() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(
        &[origin.addr],
        "    idle_timeout: 300ms\n",
        "",
    ));
    let c = client::http1();
    let resp = c
        .request(
            http::Request::get(gw.url("/stall"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Unless cut, the stream stays silent and open for good.
    let res = tokio::time::timeout(support::WAIT, resp.into_body().collect()).await;
    let res = res.expect("stream not cut by idle timeout");
    assert!(res.is_err(), "silent stream should end with an error");
}

#[tokio::test]
async fn request_body_streams_and_is_limited() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(
        &[origin.addr],
        "    max_request_body: 1000\n",
        "",
    ));
    let c = client::http1();
    // Within the limit: echoed back.
    let req = http::Request::post(gw.url("/echo-body"))
        .body(Full::new(Bytes::from(vec![b'a'; 900])))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 900);
    // Over the limit with Content-Length: 413 without contacting the origin.
    let hits = origin.hits();
    let req = http::Request::post(gw.url("/"))
        .body(Full::new(Bytes::from(vec![b'a'; 2000])))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 413);
    assert_eq!(json(&body)["error"]["type"], "body_too_large");
    assert_eq!(origin.hits(), hits);
    // Over the limit chunked (no Content-Length): cut off and answered 413.
    let raw = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "b".repeat(2000)
    );
    let resp = client::raw_exchange(gw.addr(), raw.as_bytes(), Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
}

#[tokio::test]
async fn expect_100_continue() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /echo-body HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(b"hello").unwrap();
    let mut rest = interim;
    while !rest.contains("hello") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {rest}");
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
}

#[tokio::test]
async fn upgrade_tunnels_bytes_both_ways() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = String::new();
    while !got.contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    assert!(got.to_ascii_lowercase().contains("upgrade: echo"), "{got}");
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < msg.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("echo timed out")
                .unwrap();
            assert!(n > 0);
            echoed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(echoed, msg);
    }
}

#[tokio::test]
async fn routes_match_in_order_on_every_predicate() {
    let a = Origin::start();
    let b = Origin::start();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: host, match: {{host: API.example.com}}, pool: b}}\n  - {{name: method, match: {{method: DELETE}}, pool: b}}\n  - {{name: header, match: {{headers: {{x-tier: gold}}}}, pool: b}}\n  - {{name: query, match: {{query: {{canary: \"1\"}}}}, pool: b}}\n  - {{name: regex, match: {{path_regex: \"/v[0-9]+/models\"}}, pool: b}}\n  - {{name: exact, match: {{path: /only}}, pool: b}}\n  - {{name: rest, match: {{path_prefix: /}}, pool: a}}\npools:\n  - {{name: a, endpoints: [{}]}}\n  - {{name: b, endpoints: [{}]}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&yaml);
    let c = client::http1();
    let origin_of = |body: &Bytes| json(body)["origin"].as_str().unwrap().to_string();
    let cases: Vec<(http::Request<Full<Bytes>>, std::net::SocketAddr)> = vec![
        (
            http::Request::get(gw.url("/x"))
                .header("host", "api.example.com:9999")
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::delete(gw.url("/x"))
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::get(gw.url("/x"))
                .header("x-tier", "gold")
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::get(gw.url("/x"))
                .header("x-tier", "silver")
                .body(Full::default())
                .unwrap(),
            a.addr,
        ),
        (
            http::Request::get(gw.url("/x?a=2&canary=1"))
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::get(gw.url("/v12/models"))
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::get(gw.url("/v12/models/extra"))
                .body(Full::default())
                .unwrap(),
            a.addr,
        ),
        (
            http::Request::get(gw.url("/only"))
                .body(Full::default())
                .unwrap(),
            b.addr,
        ),
        (
            http::Request::get(gw.url("/only/not"))
                .body(Full::default())
                .unwrap(),
            a.addr,
        ),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let (status, _, body) = send(&c, req).await;
        assert_eq!(status, 200, "case {i}");
        assert_eq!(origin_of(&body), want.to_string(), "case {i}");
    }
}

#[tokio::test]
async fn round_robin_spreads_over_endpoints_and_metrics_count() {
    let a = Origin::start();
    let b = Origin::start();
    let gw = Gateway::start(&simple_config(&[a.addr, b.addr], "", ""));
    let c = client::http1();
    for _ in 0..10 {
        let (status, _, _) = get(&c, &gw.url("/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(a.hits(), 5);
    assert_eq!(b.hits(), 5);
    assert_eq!(
        gw.metric("switchyard_requests_total{route=\"r\",pool=\"p\",code=\"200\"}"),
        10.0
    );
    let picks = format!(
        "switchyard_upstream_picks_total{{pool=\"p\",endpoint=\"{}\"}}",
        a.addr
    );
    assert_eq!(gw.metric(&picks), 5.0);
    let (status, pools) = gw.admin_get("/pools");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&pools).unwrap();
    assert_eq!(v["pools"][0]["endpoints"][0]["requests"], 5);
    let (status, config) = gw.admin_get("/config");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["routes"][0]["name"], "r");
    assert_eq!(gw.admin_get("/ready").0, 200);
    assert_eq!(gw.admin_get("/live").0, 200);
    // The access log has one JSON line per request.
    support::eventually("10 access log lines", || gw.stdout_lines().len() >= 10).await;
    let lines = gw.stdout_lines();
    assert_eq!(lines.len(), 10);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "r");
}

#[tokio::test]
async fn routes_on_the_model_in_the_body_or_x_model_header() {
    let a = Origin::start();
    let b = Origin::start();
    let fallback = Origin::start();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: llama, match: {{path_prefix: /v1/, model: \"llama-3*\"}}, pool: a}}\n  - {{name: mistral, match: {{path_prefix: /v1/, model: mistral}}, pool: b}}\n  - {{name: rest, match: {{path_prefix: /}}, pool: f}}\npools:\n  - {{name: a, endpoints: [{}]}}\n  - {{name: b, endpoints: [{}]}}\n  - {{name: f, endpoints: [{}]}}\n",
        a.addr, b.addr, fallback.addr
    );
    let gw = Gateway::start(&yaml);
    let c = client::http1();
    let post = |model: &str| {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let len = body.len();
        (
            http::Request::post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
            len,
        )
    };
    for (model, want) in [
        ("llama-3.1-8b", a.addr),
        ("mistral", b.addr),
        ("mistral-7b", fallback.addr),
    ] {
        let (req, len) = post(model);
        let (status, _, body) = send(&c, req).await;
        assert_eq!(status, 200);
        let v = json(&body);
        assert_eq!(v["origin"], want.to_string(), "{model}");
        assert_eq!(v["body_len"], len, "body not forwarded byte for byte");
    }
    let req = http::Request::get(gw.url("/v1/models"))
        .header("x-model", "mistral")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, _, body) = send(&c, req).await;
    assert_eq!(json(&body)["origin"], b.addr.to_string());
}
