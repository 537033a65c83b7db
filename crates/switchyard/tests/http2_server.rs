//! The gateway's own HTTP/2 server (`h2_server`) against real clients and raw frames: flow
//! control both ways with small windows, a reset stream cancelling its upstream request, a
//! malformed request refused on its own stream while the connection goes on, and the stream
//! limit. (Idle and keep-alive bounds, rapid reset and oversized heads are in bounds.rs and
//! bad_input.rs; curl, h2load and grpcio in interop.rs.)

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::origin::Origin;
use support::raw_h2::{
    connect, frame, literal_block, FrameReader, ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM,
    GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS,
};
use support::{Gateway, WAIT};

const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn config(origin: SocketAddr, listener: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n{listener}routes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{origin}]}}\n"
    )
}

fn get_fields(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", path),
    ]
}

#[tokio::test]
async fn a_large_upload_and_its_echo_pass_through_small_windows() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, ""));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    // The client's windows are a quarter of a frame's worth: the gateway's sends wait on
    // WINDOW_UPDATEs all the way, and its receive window (1 MiB) is crossed three times.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4096)
        .initial_connection_window_size(8192)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post(gw.url("/echo-body"))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("echo did not complete")
        .unwrap()
        .to_bytes();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "echo differs from the upload");
}

#[tokio::test]
async fn a_reset_stream_ends_its_request_and_the_connection_can_idle() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, "    idle_timeout: 300ms\n"));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // An upstream answer far beyond the test's patience: only cancelling it lets the
    // connection become idle.
    let req = http::Request::get(gw.url("/slow?ms=600000"))
        .body(())
        .unwrap();
    let (_resp, mut stream) = h2.send_request(req, false).unwrap();
    // Wait until the gateway has the request (the origin counts it), then cancel.
    let deadline = std::time::Instant::now() + WAIT;
    while origin.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "request never forwarded"
        );
        tokio::select! {
            r = &mut conn => panic!("connection ended: {r:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
    stream.send_reset(h2::Reason::CANCEL);
    support::raw_h2::expect_idle_close(conn, "the cancelled request kept the connection busy")
        .await;
}

#[test]
fn a_malformed_request_is_reset_and_the_connection_goes_on() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, ""));
    let mut r = FrameReader::new(connect(gw.addr()));
    // Stream 1: an uppercase header name (RFC 9113 §8.2.1). Stream 3: a body shorter than its
    // content-length (§8.1.1). Stream 5: a good request.
    let mut upper = get_fields("/a");
    upper.push(("X-Upper", "1"));
    r.write(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &literal_block(&upper),
    ));
    let post = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", "/echo-body"),
        ("content-length", "10"),
    ];
    r.write(&frame(HEADERS, END_HEADERS, 3, &literal_block(&post)));
    r.write(&frame(DATA, END_STREAM, 3, b"abc"));
    r.write(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        5,
        &literal_block(&get_fields("/ok")),
    ));
    let rst = r.next_on(1).expect("closed before stream 1 was answered");
    assert_eq!((rst.kind, rst.error_code()), (RST_STREAM, PROTOCOL_ERROR));
    let rst = r.next_on(3).expect("closed before stream 3 was answered");
    assert_eq!((rst.kind, rst.error_code()), (RST_STREAM, PROTOCOL_ERROR));
    let head = r.next_on(5).expect("closed before stream 5 was answered");
    assert_eq!(head.kind, HEADERS);
    // HPACK static index 8 is `:status: 200`.
    assert_eq!(head.payload.first(), Some(&0x88), "{head:?}");
}

#[test]
fn streams_past_the_advertised_limit_are_refused() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, "    max_concurrent_streams: 3\n"));
    let mut r = FrameReader::new(connect(gw.addr()));
    // Four long requests in one write: the fourth arrives while three are open.
    let mut burst = Vec::new();
    for id in [1, 3, 5, 7] {
        let block = literal_block(&get_fields("/slow?ms=600000"));
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
    }
    r.write(&burst);
    let rst = r.next_on(7).expect("closed before stream 7 was answered");
    assert_eq!((rst.kind, rst.error_code()), (RST_STREAM, REFUSED_STREAM));
}

#[test]
fn control_frames_are_answered_and_unknown_ones_ignored() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, ""));
    let mut r = FrameReader::new(connect(gw.addr()));
    r.write(&frame(PING, 0, 0, b"opaque!!"));
    r.write(&frame(0xfa, 0, 0, b"an extension frame"));
    r.write(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &literal_block(&get_fields("/ok")),
    ));
    let (mut settings_acked, mut pong) = (false, None);
    let head = loop {
        let f = r.next_frame().expect("closed before the response");
        match f.kind {
            SETTINGS if f.flags & ACK != 0 => settings_acked = true,
            PING if f.flags & ACK != 0 => pong = Some(f.payload),
            HEADERS if f.stream == 1 => break f,
            _ => {}
        }
    };
    assert!(settings_acked, "our SETTINGS were not acknowledged");
    assert_eq!(pong.as_deref(), Some(&b"opaque!!"[..]));
    assert_eq!(head.payload.first(), Some(&0x88), "{head:?}");
}

#[test]
fn a_continuation_flood_is_cut_off_with_goaway() {
    let origin = Origin::start();
    let gw = Gateway::start(&config(origin.addr, "    max_header_bytes: 8192\n"));
    let mut r = FrameReader::new(connect(gw.addr()));
    // A header block that never ends (CVE-2024-27316): the gateway stops buffering it long
    // before the peer stops sending.
    r.write(&frame(
        HEADERS,
        END_STREAM,
        1,
        &literal_block(&get_fields("/")),
    ));
    let filler = vec![0u8; 16_384];
    let mut sent = 0;
    let goaway = loop {
        if sent < 8 {
            // The gateway may close while we write: the GOAWAY is what counts.
            let _ = std::io::Write::write_all(r.stream(), &frame(CONTINUATION, 0, 1, &filler));
            sent += 1;
            continue;
        }
        match r.next_frame() {
            Some(f) if f.kind == GOAWAY => break f,
            Some(_) => {}
            None => panic!("closed without GOAWAY"),
        }
    };
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert_eq!(origin.hits(), 0);
}
