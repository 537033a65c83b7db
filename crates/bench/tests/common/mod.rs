//! A tiny OpenAI-style SSE server with scripted timing, for checking the load generator's
//! measurements against known truth. It binds port 0 and serves from the bound listener.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the server answers every request.
#[derive(Clone, Debug)]
pub enum Script {
    /// First token after `first`, then `tokens - 1` more every `gap`, then usage and `[DONE]`.
    Stream {
        first: Duration,
        gap: Duration,
        tokens: u32,
        usage: bool,
    },
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// Send `tokens` tokens, then abort the connection without finishing the stream.
    BreakAfter { tokens: u32 },
    /// Send one data event that is not JSON.
    Garbage,
}

/// A running test server and what it has seen.
#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    /// Request bodies received, in order (an `x-tenant` header is copied in as `x-tenant header`).
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Arrival instants of requests.
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

/// Starts a server on the current runtime.
pub async fn start(script: Script) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer {
        addr: listener.local_addr().unwrap(),
        bodies: Arc::default(),
        arrivals: Arc::default(),
    };
    let s = server.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).unwrap();
            let s = s.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    let script = script.clone();
                    async move { Ok::<_, Infallible>(respond(s, script, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    server
}

async fn respond(
    s: TestServer,
    script: Script,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<ChannelBody> {
    use http_body_util::BodyExt;
    let start = Instant::now();
    s.arrivals.lock().unwrap().push(start);
    let tenant = req
        .headers()
        .get("x-tenant")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    if let Some(t) = tenant {
        body["x-tenant header"] = t.into();
    }
    let chat = body.get("messages").is_some();
    // `stream: false`: the whole reply, as one JSON document, when the last token would be sent.
    let whole = body.get("stream") == Some(&serde_json::Value::Bool(false));
    s.bodies.lock().unwrap().push(body);
    let (tx, rx) = mpsc::channel(64);
    let status = match &script {
        Script::Status(code) => *code,
        _ => 200,
    };
    tokio::spawn(async move {
        let send = |b: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(b))).await.is_ok() }
        };
        match script {
            Script::Status(_) => {
                send(r#"{"error":{"message":"overloaded"}}"#.into()).await;
            }
            Script::Garbage => {
                send("data: this is not json\n\n".into()).await;
            }
            Script::BreakAfter { tokens } => {
                for i in 0..tokens {
                    send(token_event(chat, i)).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = tx.send(Err(())).await;
            }
            Script::Stream {
                first,
                gap,
                tokens,
                usage: _,
            } if whole => {
                let origin = tokio::time::Instant::from_std(start);
                tokio::time::sleep_until(origin + first + gap * tokens.saturating_sub(1)).await;
                let text = reply_text(tokens);
                let choice = if chat {
                    serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}})
                } else {
                    serde_json::json!({"index": 0, "text": text})
                };
                let doc = serde_json::json!({
                    "choices": [choice],
                    "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3},
                });
                send(doc.to_string()).await;
            }
            Script::Stream {
                first,
                gap,
                tokens,
                usage,
            } => {
                let origin = tokio::time::Instant::from_std(start);
                send(role_event(chat)).await;
                for i in 0..tokens {
                    tokio::time::sleep_until(origin + first + gap * i).await;
                    if !send(token_event(chat, i)).await {
                        return;
                    }
                }
                if usage {
                    send(format!(
                        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
                        tokens + 3
                    ))
                    .await;
                }
                send("data: [DONE]\n\n".into()).await;
            }
        }
    });
    let mut resp = hyper::Response::new(ChannelBody { rx });
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        if status == 200 && !whole {
            "text/event-stream"
        } else {
            "application/json"
        }
        .parse()
        .unwrap(),
    );
    resp
}

fn role_event(chat: bool) -> String {
    if chat {
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n".into()
    } else {
        String::new()
    }
}

/// Token i's text is `w{i} `, so replies are predictable.
fn token_event(chat: bool, i: u32) -> String {
    if chat {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n")
    } else {
        format!("data: {{\"choices\":[{{\"index\":0,\"text\":\"w{i} \"}}]}}\n\n")
    }
}

/// The text a stream of `n` tokens spells.
pub fn reply_text(n: u32) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

/// A response body fed from a channel; an `Err` item aborts the connection.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(()))) => {
                Poll::Ready(Some(Err(std::io::Error::other("scripted break"))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
