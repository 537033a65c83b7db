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
