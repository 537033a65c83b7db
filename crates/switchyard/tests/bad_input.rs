//! Hostile and malformed input: every case gets a clear answer (or a closed connection) and none
//! disturbs other clients' traffic.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, get, raw_exchange};
use support::origin::Origin;
use support::Gateway;

fn config(origin: std::net::SocketAddr) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    max_header_bytes: 4096\n    max_headers: 20\n    header_read_timeout: 500ms\n    max_concurrent_streams: 5\nroutes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{origin}]}}\n"
    )
}

async fn still_serves(gw: &Gateway) {
    let (status, _, _) = get(&client::http1(), &gw.url("/ok")).await;
    assert_eq!(status, 200, "other traffic disturbed");
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr));
    // Over max_header_bytes but within the codec's minimum buffer: caught by the gateway.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let resp = raw_exchange(gw.addr(), big.as_bytes(), Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Far over: rejected by the codec before parsing completes.
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let resp = raw_exchange(gw.addr(), huge.as_bytes(), Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Too many headers.
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw_exchange(gw.addr(), many.as_bytes(), Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // HTTP/2: a header block over the limit is refused too.
    let req = http::Request::get(gw.url("/"))
        .header("x-big", "a".repeat(5000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match client::http2().request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert!(
            format!("{e:?}").contains("REFUSED")
                || format!("{e:?}").contains("PROTOCOL")
                || format!("{e:?}").to_lowercase().contains("reset"),
            "{e:?}"
        ),
    }
    assert_eq!(origin.hits(), 0, "nothing forwarded");
    still_serves(&gw).await;
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_nothing_is_forwarded() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr));
    let shapes = [
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabc",
        "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length : 5\r\n\r\nhello",
        "GET / HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n",
    ];
    for shape in shapes {
        let resp = raw_exchange(gw.addr(), shape.as_bytes(), Duration::from_secs(5));
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "shape {shape:?} got {resp:?}"
        );
    }
    assert_eq!(origin.hits(), 0, "a smuggling shape reached the upstream");
    still_serves(&gw).await;
}

#[tokio::test]
async fn slowloris_is_disconnected_without_disturbing_others() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr));
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(gw.addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
    // Meanwhile a normal client is served.
    still_serves(&gw).await;
    // Trickle a header every 500 ms (under `max_headers`, for 9 s); the gateway must cut us off
    // at its 500 ms header-read timeout, long before the headers end.
    let mut closed = false;
    for i in 0..18 {
        std::thread::sleep(Duration::from_millis(500));
        if slow.write_all(format!("x-{i}: y\r\n").as_bytes()).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut buf);
        slow.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // an error response followed by close
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "slowloris connection was never closed");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn http2_stream_limit_is_advertised_and_enforced() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let req = http::Request::get(gw.url("/")).body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 5);
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_and_others_keep_working() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut h2, conn) = h2::client::Builder::new()
        .initial_max_send_streams(10_000)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..2_000 {
        let req = http::Request::get(gw.url("/slow?ms=1000"))
            .body(())
            .unwrap();
        match h2.send_request(req, false) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        if sent % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("attacking connection was not closed");
    let err = ended
        .unwrap()
        .expect_err("connection should be closed by the gateway");
    // Either the GOAWAY is read, or the gateway's close beats our next write.
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?}"
    );
    // Far fewer than the attempted streams reached the upstream.
    assert!(
        origin.hits() < sent / 2,
        "{} of {sent} forwarded",
        origin.hits()
    );
    still_serves(&gw).await;
}
