//! Every connection and every buffer has a bound (issue 12 items 6, 9 and 11): HTTP/2
//! connections that idle or stall inside a header block are closed, rotated certificates are
//! served after a reload (and TLS sessions still resume across one), the admin port cuts off slow clients, and the endpoint picker refuses
//! a gRPC message larger than its limit. Tests wait on state; a bound that does not hold fails
//! at the harness's generous deadline.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::origin::Origin;
use support::raw_h2::{frame, FrameReader, ACK, END_STREAM, GOAWAY, HEADERS, PING};
use support::{ext_proc, Gateway, Kill, WAIT};

fn listener_config(origin: SocketAddr, settings: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n{settings}routes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{origin}]}}\n"
    )
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_but_a_long_stream_does_not() {
    let origin = Origin::start();
    let gw = Gateway::start(&listener_config(origin.addr, "    idle_timeout: 300ms\n"));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // A response that takes several idle timeouts: in flight, so the connection is not idle.
    let req = http::Request::get(gw.url("/slow?ms=1200"))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        r = &mut conn => panic!("connection ended with a stream in flight: {r:?}"),
    };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let read_body = async {
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
    };
    tokio::select! {
        () = read_body => {}
        r = &mut conn => panic!("connection ended with a stream in flight: {r:?}"),
    }
    // Now nothing is in flight: the gateway closes the connection with GOAWAY (NO_ERROR).
    support::raw_h2::expect_idle_close(conn, "idle HTTP/2 connection was never closed").await;
}

#[test]
fn a_header_block_without_end_headers_is_closed_within_the_header_timeout() {
    let origin = Origin::start();
    let gw = Gateway::start(&listener_config(
        origin.addr,
        "    header_read_timeout: 500ms\n    idle_timeout: 1h\n    http2_keepalive_interval: 0s\n",
    ));
    let mut s = support::raw_h2::connect(gw.addr());
    // HEADERS for stream 1 with END_STREAM but not END_HEADERS, and never a CONTINUATION:
    // :method GET, :scheme http, :path / (HPACK static table indices 2, 6, 4).
    s.write_all(&frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]))
        .unwrap();
    let kinds = FrameReader::new(s).until_closed();
    assert!(kinds.contains(&GOAWAY), "no GOAWAY before close: {kinds:?}");
    assert_eq!(origin.hits(), 0);
}

#[test]
fn a_silent_http2_peer_is_pinged() {
    let origin = Origin::start();
    let gw = Gateway::start(&listener_config(
        origin.addr,
        "    header_read_timeout: 1h\n    http2_keepalive_interval: 100ms\n    http2_keepalive_timeout: 100ms\n",
    ));
    let mut reader = FrameReader::new(support::raw_h2::connect(gw.addr()));
    // The gateway PINGs; unanswered, the connection is then closed.
    let mut pinged = false;
    while let Some((kind, flags)) = reader.next() {
        pinged |= kind == PING && flags & ACK == 0;
    }
    assert!(pinged, "closed without a PING");
}

// ---- TLS certificate rotation ----

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn new_cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

/// The certificate the gateway presents now; `None` if the handshake fails.
async fn served_cert(addr: SocketAddr, trusted: &[&Cert]) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone().into()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}

/// Poll handshakes until the gateway presents `want`.
async fn wait_for_cert(addr: SocketAddr, trusted: &[&Cert], want: &Cert) {
    let deadline = Instant::now() + WAIT;
    while served_cert(addr, trusted).await.as_deref() != Some(&want.der[..]) {
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tls_gateway(dir: &std::path::Path, cert: &Cert, watch: bool) -> (Gateway, Origin) {
    let origin = Origin::start();
    let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cp, &cert.cert_pem).unwrap();
    std::fs::write(&kp, &cert.key_pem).unwrap();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: {watch}}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    tls: {{cert: {}, key: {}}}\nroutes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{}]}}\n",
        cp.display(),
        kp.display(),
        origin.addr
    );
    (Gateway::start(&yaml), origin)
}

const CERT_KEPT: &str = "TLS certificate reload failed; keeping the previous certificate";

#[tokio::test]
async fn sighup_serves_a_rotated_certificate_and_keeps_it_when_the_next_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_cert(), new_cert());
    let (gw, _origin) = tls_gateway(dir.path(), &a, false);
    let both = [&a, &b];
    assert_eq!(served_cert(gw.addr(), &both).await, Some(a.der.clone()));

    std::fs::write(dir.path().join("cert.pem"), &b.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &b.key_pem).unwrap();
    gw.signal("HUP");
    wait_for_cert(gw.addr(), &both, &b).await;

    // A broken key: the reload says so and B keeps serving.
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nnope\n",
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_log(CERT_KEPT, 1, WAIT);
    assert_eq!(served_cert(gw.addr(), &both).await, Some(b.der.clone()));
    let failures = gw
        .metric("switchyard_tls_certificate_reloads_total{listener=\"public\",result=\"failure\"}");
    assert_eq!(failures, 1.0);
}

/// One request over a new TLS 1.3 connection made with `cfg` (whose session store keeps the
/// tickets the gateway sends); whether its handshake resumed a session.
async fn resumed(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(cfg.clone());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Reading the response also reads the tickets TLS 1.3 sends after the handshake.
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn tls_sessions_resume_from_tickets_and_across_a_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_cert(), new_cert());
    let (gw, _origin) = tls_gateway(dir.path(), &a, false);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.der.clone().into()).unwrap();
    roots.add(b.der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    assert!(
        !resumed(gw.addr(), &cfg).await,
        "the first handshake is a full one"
    );
    assert!(
        resumed(gw.addr(), &cfg).await,
        "the second resumes from a ticket"
    );

    // A reload (new certificate) keeps the listener's ticket key: tickets issued before it
    // still resume.
    std::fs::write(dir.path().join("cert.pem"), &b.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &b.key_pem).unwrap();
    gw.signal("HUP");
    wait_for_cert(gw.addr(), &[&a, &b], &b).await;
    assert!(
        resumed(gw.addr(), &cfg).await,
        "a ticket from before the reload resumes"
    );
}

#[tokio::test]
async fn the_file_watch_follows_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_cert(), new_cert());
    let (gw, _origin) = tls_gateway(dir.path(), &a, true);
    let both = [&a, &b];
    assert_eq!(served_cert(gw.addr(), &both).await, Some(a.der.clone()));
    // The key first, then the certificate, as a rotation tool might: whatever the watch reads
    // in between, it ends up serving B.
    std::fs::write(dir.path().join("key.pem"), &b.key_pem).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &b.cert_pem).unwrap();
    wait_for_cert(gw.addr(), &both, &b).await;
}

// ---- Admin listener ----

#[test]
fn a_slow_admin_client_is_disconnected_and_others_are_served() {
    let origin = Origin::start();
    let yaml = listener_config(origin.addr, "").replace(
        "admin: {address: 127.0.0.1:0}",
        "admin: {address: 127.0.0.1:0, header_read_timeout: 300ms, max_connections: 2}",
    );
    let gw = Gateway::start(&yaml);
    // Fill every admin slot with a client that never finishes its request head.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\n")
                .unwrap();
            s
        })
        .collect();
    for mut s in slow {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        // Closed by the gateway (possibly after a 408): read_to_end returns; a timeout fails.
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("slow admin client was not disconnected: {e}"),
        }
    }
    // The slots are free again.
    assert_eq!(gw.admin_get("/live").0, 200);
    // A request head over 16 KiB is refused, not buffered.
    let big = format!(
        "GET /live HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = support::client::raw_exchange(gw.admin, big.as_bytes(), WAIT);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
}

// ---- Endpoint picker ----

fn start_epp(dir: &std::path::Path, extra_args: &[&str]) -> (Kill, SocketAddr) {
    start_epp_with(
        dir,
        "pools:\n  - name: p\n    endpoints: [127.0.0.1:9]\n",
        extra_args,
    )
}

fn start_epp_with(dir: &std::path::Path, yaml: &str, extra_args: &[&str]) -> (Kill, SocketAddr) {
    let config = dir.join("epp.yaml");
    std::fs::write(&config, yaml).unwrap();
    support::start_epp(&config, extra_args)
}

#[tokio::test]
async fn epp_refuses_a_gigantic_declared_message_from_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (_epp, addr) = start_epp(dir.path(), &[]);
    let (mut send, resp, _driver) = ext_proc::stream(addr).await;
    // A prefix declaring 4 GiB - 1, and a little of it.
    let mut data = vec![0u8, 0xff, 0xff, 0xff, 0xff];
    data.extend_from_slice(&[0u8; 1024]);
    send.send_data(Bytes::from(data), false).unwrap();
    let (_, status) = ext_proc::reply(resp).await;
    assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED expected");
}

#[tokio::test]
async fn epp_refuses_a_compressed_message_instead_of_decoding_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_epp, addr) = start_epp(dir.path(), &[]);
    let (mut send, resp, _driver) = ext_proc::stream(addr).await;
    // The compressed flag on a message whose bytes happen to be a valid protobuf when read raw.
    let mut data = ext_proc::message(&ext_proc::headers(&[(":path", "/")], true)).to_vec();
    data[0] = 1;
    send.send_data(Bytes::from(data), false).unwrap();
    let (_, status) = ext_proc::reply(resp).await;
    assert_eq!(status.as_deref(), Some("12"), "UNIMPLEMENTED expected");
}

#[tokio::test]
async fn epp_bounds_a_body_streamed_in_many_messages() {
    use switchyard_epp::proto;
    let dir = tempfile::tempdir().unwrap();
    let (_epp, addr) = start_epp(dir.path(), &["--max-message-bytes", "65536"]);
    let (mut send, resp, _driver) = ext_proc::stream(addr).await;
    send.send_data(ext_proc::message(&ext_proc::headers(&[], false)), false)
        .unwrap();
    // 16 KiB chunks, never end_of_stream: the picker must stop buffering at 64 KiB.
    let chunk = ext_proc::body(&[b'x'; 16 * 1024], false);
    let sender = tokio::spawn(async move {
        for _ in 0..64 {
            if send.send_data(ext_proc::message(&chunk), false).is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        send
    });
    let (data, status) = ext_proc::reply(resp).await;
    assert_eq!(status.as_deref(), Some("0"));
    // The last message is the immediate 413.
    let last = ext_proc::decode(&data).pop();
    let Some(proto::processing_response::Response::ImmediateResponse(immediate)) =
        last.and_then(|m| m.response)
    else {
        panic!("no immediate response");
    };
    assert_eq!(immediate.status.unwrap().code, 413);
    drop(sender);
}

#[tokio::test]
async fn epp_scores_a_large_body_off_its_worker_and_answers_as_for_a_small_one() {
    use switchyard_epp::proto;
    let dir = tempfile::tempdir().unwrap();
    let yaml = "pools:\n  - name: p\n    balancer: inference\n    endpoints: [127.0.0.1:9]\n";
    let (_epp, addr) = start_epp_with(dir.path(), yaml, &[]);
    // Over the 256 KiB inline bound: parsed on the blocking pool. Valid, then malformed.
    let text = "y".repeat(300 * 1024);
    let valid = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}]}}"#);
    for (body, want_pick) in [(valid.clone(), true), (format!("{valid}x"), false)] {
        let (mut send, resp, _driver) = ext_proc::stream(addr).await;
        let headers = ext_proc::headers(&[(":path", "/v1/chat/completions")], false);
        send.send_data(ext_proc::message(&headers), false).unwrap();
        let body = ext_proc::body(body.as_bytes(), true);
        send.send_data(ext_proc::message(&body), true).unwrap();
        let (data, _) = ext_proc::reply(resp).await;
        let last = ext_proc::decode(&data)
            .pop()
            .and_then(|m| m.response)
            .expect("a reply to the body");
        match (want_pick, last) {
            (true, proto::processing_response::Response::RequestBody(b)) => {
                let set = b.response.unwrap().header_mutation.unwrap().set_headers;
                let picked = set.iter().filter_map(|h| h.header.as_ref()).any(|h| {
                    h.key == "x-gateway-destination-endpoint"
                        && (h.raw_value == b"127.0.0.1:9" || h.value == "127.0.0.1:9")
                });
                assert!(picked, "{set:?}");
            }
            (false, proto::processing_response::Response::ImmediateResponse(i)) => {
                assert_eq!(i.status.unwrap().code, 400);
            }
            (want, other) => panic!("pick expected: {want}, got {other:?}"),
        }
    }
}
