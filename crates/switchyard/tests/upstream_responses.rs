//! What upstreams send back, end to end: response framing the gateway must get right (close-
//! delimited, chunked, conflicting lengths, pipelined requests), raw heads reaching HTTP/1 and
//! HTTP/2 clients alike, and timeouts on reused upstream connections.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::client::{self, get};
use support::origin::Origin;
use support::{simple_config, Gateway};

/// An origin that answers with `response` verbatim (see `support::origin::raw`).
fn raw_origin(response: &'static [u8]) -> std::net::SocketAddr {
    support::origin::raw(response.to_vec(), Duration::ZERO)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    let raw = b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\n\r\nGET /third HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let resp = client::raw_exchange(gw.addr(), raw, Duration::from_secs(5));
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 3, "{resp}");
    let (a, b, c) = (
        resp.find("/first").unwrap(),
        resp.find("/second").unwrap(),
        resp.find("/third").unwrap(),
    );
    assert!(a < b && b < c, "{resp}");
    assert!(resp.contains("connection: close"), "{resp}");
}

#[tokio::test]
async fn upstream_close_delimited_and_chunked_bodies_reach_the_client() {
    // No length, no chunking: the body ends when the upstream closes.
    let close = raw_origin(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end");
    let gw = Gateway::start(&simple_config(&[close], "", ""));
    let (status, _, body) = get(&client::http1(), &gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from_static(b"until the end"));
    drop(gw);

    // Chunked with an extension and trailers, re-chunked to the client.
    let chunked = raw_origin(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
    );
    let gw = Gateway::start(&simple_config(&[chunked], "", ""));
    let (status, _, body) = get(&client::http1(), &gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from_static(b"hello world"));
    drop(gw);

    // A broken chunk size: the client sees the message cut short, not a made-up body.
    let broken =
        raw_origin(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n");
    let gw = Gateway::start(&simple_config(&[broken], "", ""));
    let req = http::Request::get(gw.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client::http1().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err());
}

#[tokio::test]
async fn conflicting_upstream_content_lengths_are_a_bad_gateway() {
    let bad = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabc");
    let gw = Gateway::start(&simple_config(&[bad], "", ""));
    let (status, _, body) = get(&client::http1(), &gw.url("/")).await;
    assert_eq!(status, 502, "{body:?}");
}

#[tokio::test]
async fn upstream_response_heads_reach_http1_and_http2_clients_alike() {
    // HTTP/1 clients get the upstream head as it came (the fast path writes it raw); HTTP/2
    // clients get it through a header map. Both must see the same headers.
    let origin = raw_origin(
        b"HTTP/1.1 201 Created\r\nX-Mixed-Case: Yes\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
          X-Request-Id: upstream-own\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    let gw = Gateway::start(&simple_config(&[origin], "", ""));
    for client in [client::http1(), client::http2()] {
        let (status, headers, body) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 201);
        assert_eq!(body, Bytes::from_static(b"ok"));
        assert_eq!(headers["x-mixed-case"], "Yes");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        for hop in ["keep-alive", "proxy-connection", "transfer-encoding"] {
            assert!(headers.get(hop).is_none(), "{hop} forwarded: {headers:?}");
        }
        assert_eq!(headers.get_all("date").iter().count(), 1, "{headers:?}");
        assert_eq!(headers["date"], "Tue, 01 Dec 2026 00:00:00 GMT");
        // The gateway's request id replaces the upstream's, once.
        let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{headers:?}");
        assert_ne!(ids[0], "upstream-own");
    }

    // Transfer-Encoding and Content-Length together: the length is dropped, the body re-framed.
    let smuggle = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
          2\r\nhi\r\n0\r\n\r\n",
    );
    let gw = Gateway::start(&simple_config(&[smuggle], "", ""));
    for client in [client::http1(), client::http2()] {
        let (status, headers, body) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(body, Bytes::from_static(b"hi"));
        assert_eq!(headers["x-a"], "1");
        assert!(
            headers.get("content-length").is_none_or(|v| v == "2"),
            "{headers:?}"
        );
    }

    // `Connection` naming another header makes it hop-by-hop.
    let named = raw_origin(
        b"HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nX-Public: 1\r\nContent-Length: 0\r\n\r\n",
    );
    let gw = Gateway::start(&simple_config(&[named], "", ""));
    for client in [client::http1(), client::http2()] {
        let (status, headers, _) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        assert!(headers.get("x-private").is_none(), "{headers:?}");
        assert_eq!(headers["x-public"], "1");
    }
}

#[tokio::test]
async fn route_timeouts_hold_on_reused_upstream_connections() {
    // An HTTP/1 upstream connection times each exchange on its own lazily armed timer: a
    // shorter deadline than the last one must re-arm it, a later one must not fire early.
    let origin = Origin::start();
    let yaml = simple_config(&[origin.addr], "    timeout: 400ms\n", "").replace(
        "routes:\n",
        "routes:\n  - name: long\n    match: {path_prefix: /long/}\n    pool: p\n    timeout: 30s\n",
    );
    let gw = Gateway::start(&yaml);
    let c = client::http1();
    // Served on one upstream connection, armed 30 s out.
    let (status, _, _) = get(&c, &gw.url("/long/x")).await;
    assert_eq!(status, 200);
    // The same connection with a 400 ms deadline: it must fire at 400 ms, not 30 s (the origin
    // would answer 200 at 3 s).
    let (status, _, body) = get(&c, &gw.url("/slow?ms=3000")).await;
    assert_eq!(status, 504, "{body:?}");
    // Back to back under the 400 ms route: each deadline is later than the timer, which fires
    // early, finds time left, and re-arms; no request may time out before its own deadline.
    for _ in 0..3 {
        let (status, _, _) = get(&c, &gw.url("/slow?ms=150")).await;
        assert_eq!(status, 200);
        let (status, _, _) = get(&c, &gw.url("/slow?ms=250")).await;
        assert_eq!(status, 200);
    }
}
