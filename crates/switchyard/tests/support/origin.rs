//! A real HTTP/1.1 + h2c origin server for tests, on its own thread and runtime so it keeps
//! serving whatever the test thread does. Behaviour is chosen by path:
//!
//! - `/sse?n=N&ms=M`: N server-sent events, M ms apart
//! - `/slow?ms=M`: answer after M ms
//! - `/gate`: answer once the test lets it through ([`Origin::open_gate`]), for tests that must
//!   hold a request at the origin for as long as they need, whatever the machine's load
//! - `/status/NNN`: answer with that status
//! - `/stall`: headers and one chunk, then silence
//! - `/upgrade`: 101 to protocol `echo`, then echo bytes back
//! - `/echo-body`: stream the request body back
//! - `/trailers`: a body followed by trailers `grpc-status: 0`
//! - anything else: JSON describing the request (method, path, headers, body length), answered
//!   with `server: test-origin` and two `x-origin-multi` values besides

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::background::Background;

/// A body fed frame by frame from a channel.
pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

type Answered = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
const MAX_ANSWERED: usize = 1000;

fn full(b: impl Into<Bytes>) -> OriginBody {
    http_body_util::Full::new(b.into()).boxed()
}

pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// What the default path answered (the first [`MAX_ANSWERED`]), for tests of what reached
    /// the origin.
    answered: Answered,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests to `/gate` wait here for a permit.
    gate: Arc<tokio::sync::Semaphore>,
    _server: Background,
}

impl Origin {
    pub fn start() -> Origin {
        Self::start_with(None)
    }

    /// An origin whose HTTP/2 connections allow at most `streams` concurrent streams
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub fn start_h2_streams(streams: u32) -> Origin {
        Self::start_with(Some(streams))
    }

    /// Let `n` requests waiting at `/gate` (or the next `n` to arrive) through.
    pub fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn start_with(max_streams: Option<u32>) -> Origin {
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let connections2 = connections.clone();
        let answered = Answered::default();
        let answered2 = answered.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let gate2 = gate.clone();
        let server = Background::start(move |listener| async move {
            let addr = listener.local_addr().unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).unwrap();
                connections2.fetch_add(1, Ordering::SeqCst);
                let hits = hits2.clone();
                let answered = answered2.clone();
                let gate = gate2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        handle(req, addr, answered.clone(), gate.clone())
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(max_streams);
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr: server.addr,
            hits,
            answered,
            connections,
            gate,
            _server: server,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The JSON descriptions the default path answered with, in order.
    pub fn answered(&self) -> Vec<serde_json::Value> {
        self.answered.lock().unwrap().clone()
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(q: &HashMap<String, String>, k: &str, default: u64) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn handle(
    mut req: Request<Incoming>,
    me: SocketAddr,
    answered: Answered,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<Response<OriginBody>, Infallible> {
    let q = query(&req);
    let path = req.uri().path().to_string();
    if let Some(code) = path.strip_prefix("/status/") {
        let code = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() = code;
        return Ok(r);
    }
    match path.as_str() {
        "/sse" => {
            let n = num(&q, "n", 5);
            let ms = num(&q, "ms", 50);
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                for i in 0..n {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let ev = format!("data: {{\"i\":{i}}}\n\n");
                    if tx.send(Frame::data(Bytes::from(ev))).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(r)
        }
        "/gate" => {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Ok(Response::new(full("gate passed")))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(num(&q, "ms", 1000))).await;
            Ok(Response::new(full("slow done")))
        }
        "/stall" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"first"))).await;
                // Hold the sender open, silent, until the receiver goes away.
                tx.closed().await;
            });
            Ok(Response::new(ChannelBody(rx).boxed()))
        }
        "/upgrade" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            Ok(r)
        }
        "/echo-body" => {
            let (tx, rx) = mpsc::channel(4);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(Frame::data(data)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(Response::new(ChannelBody(rx).boxed()))
        }
        "/trailers" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"payload"))).await;
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                let _ = tx.send(Frame::trailers(t)).await;
            });
            Ok(Response::new(ChannelBody(rx).boxed()))
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            // Every value in order, for tests of repeated headers (the map above keeps one).
            let header_list: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let uri = req.uri().to_string();
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let v = serde_json::json!({
                "origin": me.to_string(),
                "method": method,
                "uri": uri,
                "path": path,
                "version": version,
                "headers": headers,
                "header_list": header_list,
                "body_len": body.map(|b| b.len()).unwrap_or(0),
            });
            {
                let mut answered = answered.lock().unwrap();
                if answered.len() < MAX_ANSWERED {
                    answered.push(v.clone());
                }
            }
            let mut r = Response::new(full(v.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut().insert(
                "connection",
                "keep-alive, x-origin-private".parse().unwrap(),
            );
            r.headers_mut()
                .insert("x-origin-private", "secret".parse().unwrap());
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r.headers_mut()
                .insert("server", "test-origin".parse().unwrap());
            for v in ["one", "two"] {
                r.headers_mut().append("x-origin-multi", v.parse().unwrap());
            }
            Ok(r)
        }
    }
}

/// A raw HTTP/1 origin: answers each connection's first request with `response` verbatim after
/// `delay`, then closes. For upstream bytes the test origin (hyper) never produces. Bounded: it
/// serves at most 50 connections.
pub fn raw(response: Vec<u8>, delay: Duration) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            std::thread::sleep(delay);
            let _ = s.write_all(&response);
        }
    });
    addr
}
