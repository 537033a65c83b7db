//! An attacker's view of the gateway, over raw sockets: each test is one class of abuse found
//! by an adversarial review, so none comes back. A client may hurt only itself: never other
//! clients' traffic, never an upstream's standing.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::client::{self, raw_exchange};
use support::fleet::*;
use support::Gateway;

/// Open a connection and send `raw`, leaving it open (the request unfinished).
fn hold(addr: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(raw).expect("write");
    s
}

/// Read what the gateway answers on `s` until it closes (bounded: the gateway must answer or
/// close long before this safety net).
fn answer(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_admission_slot_and_time_out() {
    // One request at a time may reach the pool; an `inference` pool reads every body whole.
    let fleet = fleet(1).await;
    let route = "    body_read_timeout: 2s\n";
    let pool = "    balancer: inference\n    limits: { max_requests: 1 }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let trickle = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"model\":";
    let slow: Vec<TcpStream> = (0..2).map(|_| hold(gw.addr(), trickle)).collect();
    // Both trickling uploads are being read; a ready request still gets through at once.
    let (status, _) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 200, "a slow upload held the pool's only slot");
    for s in slow {
        let resp = answer(s);
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
        assert!(resp.contains("body_timeout"), "{resp}");
    }
    let (status, _) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_malformed_body_is_its_own_fault_not_the_upstreams() {
    // Two gateway errors in a row would eject the only endpoint (for 30 s).
    let fleet = fleet(1).await;
    let pool = "    outlier: { consecutive_gateway_errors: 2, base_ejection: 30s, max_ejected_percent: 100 }\n";
    let route = "  - name: buffered\n    match: {path_prefix: /buffered}\n    pool: p\n    retry: { attempts: 2 }\n";
    let yaml =
        config(&fleet.addresses(), "", pool).replace("routes:\n", &format!("routes:\n{route}"));
    let gw = Gateway::start(&yaml);
    // An invalid chunk size, streamed through (`/v1/...`) and read whole for retries (`/buffered`).
    for path in [
        "/v1/chat/completions",
        "/buffered",
        "/v1/chat/completions",
        "/buffered",
    ] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\nzz\r\n1}}\r\n0\r\n\r\n"
        );
        let resp = raw_exchange(gw.addr(), raw.as_bytes(), Duration::from_secs(30));
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    let pools = pools(&gw);
    let e = endpoint(&pools, fleet.addresses()[0]);
    assert_eq!(
        e["ejected"], false,
        "a client's bad body ejected the endpoint: {e}"
    );
    assert_eq!(
        gw.metric("switchyard_upstream_errors_total{pool=\"p\",kind=\"reset\"}"),
        0.0
    );
    let (status, _) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_cannot_raise_their_priority_or_read_pick_scores() {
    // A sheddable route over a pool at its limit: a sheddable request is refused at once.
    let fleet = fleet(1).await;
    slow(&fleet, 0, 300);
    let route = "    priority: sheddable\n";
    let pool = "    balancer: inference\n    concurrency: { kind: fixed, limit: 1, max_queue: 8, queue_timeout: 10s }\n";
    let untrusted =
        config(&fleet.addresses(), route, pool).replace(", trusted_headers: [priority, debug]", "");
    let trusted = config(&fleet.addresses(), route, pool);
    for (yaml, trusted) in [(untrusted, false), (trusted, true)] {
        let gw = std::sync::Arc::new(Gateway::start(&yaml));
        // Hold the pool's one slot with a request of the route's own priority.
        let holder = {
            let gw = gw.clone();
            tokio::spawn(async move {
                let c = client::http1();
                let req = chat_request(&gw, &[("x-switchyard-priority", "critical")]);
                support::client::send(&c, req).await.0
            })
        };
        in_flight(&gw, 1).await;
        let c = client::http1();
        let req = chat_request(
            &gw,
            &[
                ("x-switchyard-priority", "critical"),
                ("x-switchyard-debug", "1"),
            ],
        );
        let (status, headers, _) = support::client::send(&c, req).await;
        if trusted {
            // Critical on a listener that trusts the header: queued behind the holder, served.
            assert_eq!(status, 200);
            assert!(headers.contains_key("x-switchyard-pick"), "{headers:?}");
        } else {
            assert_eq!(status, 429, "an untrusted client escaped shedding");
            let req = chat_request(&gw, &[("x-switchyard-debug", "1")]);
            holder.await.unwrap();
            let (status, headers, _) = support::client::send(&c, req).await;
            assert_eq!(status, 200);
            assert!(
                !headers.contains_key("x-switchyard-pick"),
                "scores shown to an untrusted client"
            );
            continue;
        }
        assert_eq!(holder.await.unwrap(), 200);
    }
}

fn chat_request(
    gw: &Gateway,
    headers: &[(&str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(http_body_util::Full::new(bytes::Bytes::from(format!(
        r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
    ))))
    .unwrap()
}

/// A gateway with one route, `/v1/` only, in front of an origin that describes what it got.
fn v1_only(origin: SocketAddr) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: v1, match: {{path_prefix: /v1/}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{origin}]}}\n"
    )
}

/// The JSON the echo origin answered, from a raw HTTP/1.1 response.
fn echoed(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not an echo: {resp}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_routing_and_forwarded_normalized() {
    let origin = support::origin::Origin::start();
    let gw = Gateway::start(&v1_only(origin.addr));
    let get = |path: &str| {
        raw_exchange(
            gw.addr(),
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(30),
        )
    };
    // Traversals out of /v1/ no longer match it.
    for path in [
        "/v1/../internal/x",
        "/v1/%2e%2e/internal",
        "/v1/./../internal",
    ] {
        let resp = get(path);
        assert!(resp.starts_with("HTTP/1.1 404"), "{path}: {resp}");
    }
    // Encoded separators are refused outright.
    for path in ["/v1/..%2finternal", "/v1/..%5Cinternal", "/v1/a%2"] {
        let resp = get(path);
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    assert_eq!(origin.hits(), 0, "a refused path reached the upstream");
    // What matched is what the upstream sees.
    let resp = get("/v1/x/../%63hat?q=%2e");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(echoed(&resp)["path"], "/v1/chat", "{resp}");
    assert!(echoed(&resp)["uri"]
        .as_str()
        .unwrap()
        .ends_with("/v1/chat?q=%2e"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_is_validated_and_sent_upstream() {
    let origin = support::origin::Origin::start();
    let gw = Gateway::start(&v1_only(origin.addr));
    let send = |raw: &str| raw_exchange(gw.addr(), raw.as_bytes(), Duration::from_secs(30));
    for bad in [
        "GET /v1/a HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET /v1/a HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /v1/a HTTP/1.1\r\nhost: a@b\r\n\r\n",
        "GET /v1/a HTTP/1.1\r\nhost: a b\r\n\r\n",
    ] {
        let resp = send(bad);
        assert!(resp.starts_with("HTTP/1.1 400"), "{bad:?}: {resp}");
    }
    assert_eq!(origin.hits(), 0);
    // `Connection: host` does not strip the Host the route saw.
    let resp = send("GET /v1/a HTTP/1.1\r\nhost: api.example\r\nconnection: host, close\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(echoed(&resp)["headers"]["host"], "api.example", "{resp}");
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    let resp = send(
        "GET http://real.example/v1/a HTTP/1.1\r\nhost: decoy.example\r\nconnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(echoed(&resp)["headers"]["host"], "real.example", "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_unknown_codings_are_refused_not_reshaped() {
    let origin = support::origin::Origin::start();
    let gw = Gateway::start(&v1_only(origin.addr));
    for raw in [
        "CONNECT origin.example:443 HTTP/1.1\r\nhost: origin.example:443\r\n\r\n",
        "POST /v1/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        let resp = raw_exchange(gw.addr(), raw.as_bytes(), Duration::from_secs(30));
        assert!(resp.starts_with("HTTP/1.1 501"), "{raw:?}: {resp}");
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the upstream");
}
