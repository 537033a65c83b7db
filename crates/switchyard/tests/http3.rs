//! HTTP/3 downstream: a quinn + h3 client (and aioquic, in `interop_h3.rs`) through a TLS
//! listener with `http3: true`, against real origins: plain requests, streamed SSE, uploads,
//! gRPC-style trailers, Alt-Svc on TCP, bad input, reload and drain.

mod support;

#[path = "http3/zero_rtt.rs"]
mod zero_rtt;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use support::origin::Origin;
use support::Gateway;

fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cp = dir.join("cert.pem");
    let kp = dir.join("key.pem");
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.key_pair.serialize_pem()).unwrap();
    (cp, kp, cert.cert.der().to_vec())
}

/// A gateway with one TLS listener serving HTTP/3 too, an HTTP/1 pool `p` and an HTTP/2 pool
/// `p2` for `/trailers`, and the certificate to trust.
fn h3_gateway(dir: &std::path::Path, origin: &Origin, listener_extra: &str) -> (Gateway, Vec<u8>) {
    let (cert, key, der) = tls_files(dir);
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    tls: {{cert: {}, key: {}}}\n    http3: true\n    access_log: true\n{listener_extra}routes:\n  - {{name: g, match: {{path: /trailers}}, pool: p2}}\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{o}]}}\n  - {{name: p2, protocol: http2, endpoints: [{o}]}}\n",
        cert.display(),
        key.display(),
        o = origin.addr
    );
    (Gateway::start(&yaml), der)
}

/// A QUIC client trusting `der`, speaking h3; with `early_data` it sends 0-RTT on resumption.
fn client_config(der: &[u8], early_data: bool) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

async fn quic_connect(addr: SocketAddr, der: &[u8]) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(der, false));
    endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake")
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

async fn h3_client(addr: SocketAddr, der: &[u8]) -> Sender {
    let conn = quic_connect(addr, der).await;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    send
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    /// Each DATA chunk as it arrived.
    chunks: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Answer {
    fn body(&self) -> Bytes {
        let mut all = BytesMut::new();
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        all.freeze()
    }
}

async fn request(send: &mut Sender, method: &str, path: &str, body: Option<Bytes>) -> Answer {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let (mut tx, mut stream) = send.send_request(req).await.unwrap().split();
    // Sent while the response is read: an echo answers before the upload ends, and a client
    // that read only after sending all would stall on flow control.
    let uploading = tokio::spawn(async move {
        // In several DATA frames, as a real upload arrives.
        for part in body.as_deref().unwrap_or_default().chunks(64 * 1024) {
            tx.send_data(Bytes::copy_from_slice(part)).await.unwrap();
        }
        tx.finish().await.unwrap();
    });
    let resp = stream.recv_response().await.unwrap();
    let mut chunks = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        chunks.push(chunk.copy_to_bytes(chunk.remaining()));
    }
    let trailers = stream.recv_trailers().await.unwrap();
    uploading.await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        chunks,
        trailers,
    }
}

#[tokio::test]
async fn requests_streams_uploads_and_trailers_over_http3() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, der) = h3_gateway(dir.path(), &origin, "");
    let mut send = h3_client(gw.addr(), &der).await;

    let plain = request(&mut send, "GET", "/hello?x=1", None).await;
    assert_eq!(plain.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&plain.body()).unwrap();
    assert_eq!(seen["uri"], "/hello?x=1", "{seen}");
    assert_eq!(seen["headers"]["host"], "localhost", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");

    // Streamed: each event is its own DATA frame, not one buffered body.
    let sse = request(&mut send, "GET", "/sse?n=4&ms=30", None).await;
    assert_eq!(sse.status, 200);
    let events = String::from_utf8(sse.body().to_vec()).unwrap();
    assert_eq!(events.matches("data: ").count(), 4, "{events}");
    assert!(
        sse.chunks.len() >= 2,
        "events arrived in one chunk: {events}"
    );

    // A 3 MB upload, counted by the origin, then echoed back byte for byte.
    let upload: Bytes = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let counted = request(&mut send, "POST", "/upload", Some(upload.clone())).await;
    let seen: serde_json::Value = serde_json::from_slice(&counted.body()).unwrap();
    assert_eq!(seen["body_len"], upload.len(), "{seen}");
    let echoed = request(&mut send, "POST", "/echo-body", Some(upload.clone())).await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body().len(), upload.len());
    assert!(echoed.body() == upload, "upload changed on the way");

    // Trailers from an HTTP/2 upstream (how gRPC ends) reach the HTTP/3 client.
    let trailers = request(&mut send, "GET", "/trailers", None).await;
    assert_eq!(trailers.status, 200, "{:?}", trailers.headers);
    let t = trailers.trailers.expect("trailers forwarded");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    // Connection-specific fields never appear on an HTTP/3 response.
    assert!(trailers.headers.get("connection").is_none());

    // Gateway answers (no route here is a 404 from the pipeline) go out the same way.
    let missing = request(&mut send, "GET", "/status/503", None).await;
    assert_eq!(missing.status, 503);

    // The access log names the protocol.
    gw.wait_log_line("HTTP/3");
    assert!(
        gw.metric("switchyard_downstream_connections_accepted_total{listener=\"public\"}") >= 1.0
    );
}

/// Poll the access log (stdout) until a line contains `needle`.
trait WaitLine {
    fn wait_log_line(&self, needle: &str);
}

impl WaitLine for Gateway {
    fn wait_log_line(&self, needle: &str) {
        for _ in 0..1000 {
            if self.stdout_lines().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "no access log line with {needle}: {:?}",
            self.stdout_lines()
        );
    }
}

#[test]
fn tcp_responses_advertise_http3_on_the_same_port() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = h3_gateway(dir.path(), &origin, "");
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-D", "-"])
        .arg(format!("https://localhost:{}/", gw.addr().port()))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", gw.addr().port()))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let want = format!("alt-svc: h3=\":{}\"; ma=86400", gw.addr().port());
    assert!(head.contains(&want), "{head}");
}

#[tokio::test]
async fn bad_http3_input_closes_the_stream_or_connection_not_the_gateway() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, der) = h3_gateway(dir.path(), &origin, "    max_header_bytes: 4096\n");

    // A header block past max_header_bytes: 431, and the connection keeps serving.
    let mut send = h3_client(gw.addr(), &der).await;
    let req = http::Request::get("https://localhost/")
        .header("x-big", "a".repeat(8000))
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 431);
    assert_eq!(request(&mut send, "GET", "/", None).await.status, 200);

    // Raw QUIC, each case ending its own connection with RFC 9114's code and no other:
    // - a request stream whose first frame is DATA, not HEADERS: H3_FRAME_UNEXPECTED (0x105);
    // - a header block that refers to the QPACK dynamic table (announced as 0 bytes, so there
    //   is nothing to inflate): QPACK_DECOMPRESSION_FAILED (0x200);
    // - a frame that cannot be read: H3_FRAME_ERROR (0x106).
    for (garbage, code) in [
        (&b"\x00\x03abc"[..], 0x105u32),
        (&b"\x01\x03\x01\x00\x80"[..], 0x200),
        (&b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..], 0x106),
    ] {
        let conn = quic_connect(gw.addr(), &der).await;
        let (mut tx, mut rx) = conn.open_bi().await.unwrap();
        tx.write_all(garbage).await.unwrap();
        tx.finish().unwrap();
        let _ = rx.read_to_end(1024).await;
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(code), "{close:?}");
            }
            other => panic!("{garbage:?}: {other:?}"),
        }
    }
    // Still serving everyone else.
    let mut fresh = h3_client(gw.addr(), &der).await;
    assert_eq!(request(&mut fresh, "GET", "/", None).await.status, 200);
    assert_eq!(request(&mut send, "GET", "/", None).await.status, 200);
}

#[tokio::test]
async fn reload_keeps_http3_connections_and_sigterm_drains_them() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, der) = h3_gateway(dir.path(), &origin, "");
    let mut send = h3_client(gw.addr(), &der).await;
    assert_eq!(request(&mut send, "GET", "/", None).await.status, 200);

    // A changed listener at the same address keeps the QUIC endpoint: the open connection
    // goes on serving, and new settings apply to new connections.
    let yaml = std::fs::read_to_string(&gw.config_path).unwrap();
    let changed = yaml.replace(
        "    access_log: true\n",
        "    access_log: true\n    max_headers: 50\n",
    );
    gw.reload(&changed);
    assert_eq!(gw.log_count("config reloaded"), 1);
    assert_eq!(
        request(&mut send, "GET", "/after-reload", None)
            .await
            .status,
        200
    );
    let mut fresh = h3_client(gw.addr(), &der).await;
    assert_eq!(request(&mut fresh, "GET", "/", None).await.status, 200);

    // SIGTERM with a stream in flight: it completes, then the process exits.
    let mut stream = send
        .send_request(
            http::Request::get("https://localhost/sse?n=5&ms=100")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    gw.signal("TERM");
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let events = String::from_utf8(body).unwrap();
    assert_eq!(events.matches("data: ").count(), 5, "{events}");
    assert_eq!(gw.wait_exit(std::time::Duration::from_secs(30)), Some(0));
}

/// Run a script from tests/interop/ with the project's Python; its stdout as JSON.
fn python_json(script: &str, args: &[String]) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/");
    let out = std::process::Command::new(support::python3())
        .arg(format!("{path}{script}"))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn aioquic_client_streams_sse_and_uploads_over_http3() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = h3_gateway(dir.path(), &origin, "");
    let cert = dir.path().join("cert.pem");
    let got = python_json(
        "h3_client.py",
        &[
            "127.0.0.1".into(),
            gw.addr().port().to_string(),
            cert.display().to_string(),
        ],
    );
    assert_eq!(got["sse"]["status"], "200", "{got}");
    assert_eq!(got["sse"]["events"], 5, "{got}");
    // Forwarded as the origin sent them (100 ms apart), not collected into one.
    assert!(got["sse"]["chunks"].as_u64().unwrap() >= 3, "{got}");
    assert_eq!(got["upload"]["status"], "200", "{got}");
    assert_eq!(got["upload"]["received"], got["upload"]["sent"], "{got}");
}

/// An aioquic HTTP/3 server (tests/interop/h3_origin.py) on a free UDP port, stopped on drop.
struct H3Origin {
    child: std::process::Child,
    addr: SocketAddr,
}

impl H3Origin {
    fn start(cert: &std::path::Path, key: &std::path::Path) -> Self {
        use std::io::BufRead;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/interop/h3_origin.py"
        );
        let mut child = std::process::Command::new(support::python3())
            .arg(script)
            .arg(cert)
            .arg(key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the aioquic origin");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the origin prints its port");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for H3Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_http3_pool_reaches_an_aioquic_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = tls_files(dir.path());
    let origin = H3Origin::start(&cert, &key);
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners: [{{name: public, address: 127.0.0.1:0}}]\nroutes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p, timeout: 2s}}\npools:\n  - name: p\n    protocol: http3\n    tls: {{ca: {}, sni: localhost}}\n    endpoints: [{}]\n",
        cert.display(),
        origin.addr
    );
    let gw = Gateway::start(&yaml);
    let client = support::client::http1();

    let (status, _, body) = support::client::get(&client, &gw.url("/hello?q=1")).await;
    assert_eq!(status, 200, "{body:?}");
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["version"], "h3", "{seen}");
    assert_eq!(seen["path"], "/hello?q=1", "{seen}");
    assert!(
        seen["authority"].as_str().unwrap().starts_with("127.0.0.1"),
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");

    // A body goes up whole.
    let up = http::Request::post(gw.url("/upload"))
        .body(http_body_util::Full::new(Bytes::from(vec![7u8; 300_000])))
        .unwrap();
    let (status, _, body) = support::client::send(&client, up).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["body_len"], 300_000, "{seen}");

    // A stream comes back as it is sent (every event, in order).
    let (status, _, body) = support::client::get(&client, &gw.url("/sse?n=4")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");

    // The origin gone (UDP says nothing): the route's timeout answers, not a hang.
    drop(origin);
    let (status, _, _) = support::client::get(&client, &gw.url("/after")).await;
    assert!([502, 503, 504].contains(&status.as_u16()), "{status}");
}

#[tokio::test]
async fn switchyard_bench_streams_completions_over_http3_and_http2_over_tls() {
    let fleet = support::fleet::fleet(2).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = tls_files(dir.path());
    let eps: Vec<String> = fleet.addresses().iter().map(|a| a.to_string()).collect();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    tls: {{cert: {}, key: {}}}\n    http3: true\nroutes: [{{name: r, match: {{path_prefix: /}}, pool: p}}]\npools: [{{name: p, endpoints: [{}]}}]\n",
        cert.display(),
        key.display(),
        eps.join(", ")
    );
    let gw = Gateway::start(&yaml);
    for proto in ["--http3", "--http2"] {
        let out = dir.path().join(format!("{proto}.json"));
        let status = tokio::process::Command::new(support::BIN)
            .args(["bench", "--quiet", "--target"])
            .arg(format!("gw=https://localhost:{}", gw.addr().port()))
            .arg("--cacert")
            .arg(&cert)
            .args([
                proto,
                "--requests",
                "12",
                "--concurrency",
                "4",
                "--output-tokens",
                "8",
            ])
            .args(["--model", support::fleet::MODEL, "--out"])
            .arg(&out)
            .status()
            .await
            .unwrap();
        assert!(status.success(), "{proto}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let t = &report["targets"][0];
        assert_eq!(t["completed"], 12, "{proto}: {t}");
        assert!(t["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{proto}: {t}");
    }
    // Both went through the gateway's TLS listener, one connection each.
    assert_eq!(
        gw.metric("switchyard_downstream_connections_accepted_total{listener=\"public\"}"),
        2.0
    );
}
