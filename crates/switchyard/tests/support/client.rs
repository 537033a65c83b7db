//! Test clients: hyper for HTTP/1.1 and HTTP/2, and raw sockets for the malformed traffic no
//! well-behaved client library will send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn http1() -> TestClient {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

pub fn http2() -> TestClient {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(c)
}

/// Send a request; returns status, headers and the whole body.
pub async fn send(
    client: &TestClient,
    req: http::Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(client: &TestClient, url: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
    send(
        client,
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// Write `raw` to a fresh connection and read until the server closes or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A blocking HTTP/1.0-style GET, for the admin API.
pub fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    let resp = raw_exchange(addr, req.as_bytes(), Duration::from_secs(10));
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
