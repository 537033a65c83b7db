//! TLS termination with ALPN, and gRPC-specific behaviour (trailers-only errors, deadlines).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::client;
use support::origin::Origin;
use support::Gateway;

fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.key_pair.serialize_pem();
    let cp = dir.join("cert.pem");
    let kp = dir.join("key.pem");
    std::fs::write(&cp, &cert_pem).unwrap();
    std::fs::write(&kp, key_pem).unwrap();
    (cp, kp, cert.cert.der().to_vec())
}

/// A gateway with one TLS listener in front of `origin`, and the certificate to trust.
fn tls_gateway(dir: &std::path::Path, origin: &Origin) -> (Gateway, Vec<u8>) {
    let (cert, key, der) = tls_files(dir);
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    tls: {{cert: {}, key: {}}}\nroutes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{}]}}\n",
        cert.display(),
        key.display(),
        origin.addr
    );
    (Gateway::start(&yaml), der)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    der: &[u8],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn tls_with_alpn_h2_and_http11() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, der) = tls_gateway(dir.path(), &origin);

    let tls = tls_connect(gw.addr(), &der, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(format!("https://localhost:{}/tls", gw.addr().port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    let tls = tls_connect(gw.addr(), &der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("/tls1")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn smuggling_shapes_over_tls_are_refused_like_plain_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let (gw, der) = tls_gateway(dir.path(), &origin);
    let mut tls = tls_connect(gw.addr(), &der, b"http/1.1").await;
    tls.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(origin.hits(), 0, "CL+TE over TLS reached the upstream");
}

fn grpc_request(url: String, timeout: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

#[tokio::test]
async fn grpc_errors_are_trailers_only_with_grpc_status() {
    let origin = Origin::start();
    let (dead, _dead) = support::fleet::dead_address();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: svc, match: {{path: /slow}}, pool: grpc}}\n  - {{name: down, match: {{path_prefix: /svc.Down/}}, pool: down}}\npools:\n  - {{name: grpc, protocol: http2, endpoints: [{}]}}\n  - {{name: down, protocol: http2, endpoints: [{dead}]}}\n",
        origin.addr
    );
    let gw = Gateway::start(&yaml);
    let c = client::http2();
    let cases = [
        ("/other.Svc/M", None, "12"),
        ("/svc.Down/M", None, "14"),
        ("/slow?ms=3000", Some("200m"), "4"),
    ];
    // The slow origin would answer after 3 s, without grpc-status: status 4 is the deadline.
    for (path, timeout, want) in cases {
        let resp = c
            .request(grpc_request(gw.url(path), timeout))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], want, "{path}");
        assert!(resp.headers().contains_key("x-request-id"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }
}

#[tokio::test]
async fn grpc_deadline_bounds_a_whole_stream() {
    let origin = Origin::start();
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: svc, match: {{path_prefix: /}}, pool: grpc}}\npools:\n  - {{name: grpc, protocol: http2, endpoints: [{}]}}\n",
        origin.addr
    );
    let gw = Gateway::start(&yaml);
    // Headers come at once, then events every 100 ms for 2 s; the 300 ms deadline ends it
    // before the last event (the origin sends no trailers of its own).
    let resp = client::http2()
        .request(grpc_request(gw.url("/sse?n=20&ms=100"), Some("300m")))
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("deadline trailers");
    assert_eq!(trailers["grpc-status"], "4");
    let events = String::from_utf8_lossy(&collected.to_bytes())
        .matches("data: ")
        .count();
    assert!(
        events < 20,
        "the whole stream went through: {events} events"
    );
}
