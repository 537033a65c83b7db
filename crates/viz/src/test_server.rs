//! A real admin-shaped HTTP server for the tests: hyper on `127.0.0.1:0`, bound before the test
//! connects (so there is no readiness to wait for), answering from a table of canned responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Infallible>;

/// What the server answers for one path.
#[derive(Clone)]
pub enum Canned {
    Json(&'static str),
    /// An event stream sent as these chunks, one body frame each, then ended.
    Events(Vec<Vec<u8>>),
    Status(StatusCode, &'static str),
    /// 200 with a plain-text body where an event stream was expected.
    Text(&'static str),
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Every path and query requested, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts serving; `routes` maps a path (without the query) to its answer, and anything else
    /// is a 404.
    pub async fn start(routes: Vec<(&'static str, Canned)>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let routes = Arc::clone(&routes);
                let seen = Arc::clone(&seen);
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    seen.lock().unwrap().push(target.to_owned());
                    let path = request.uri().path();
                    let canned = routes.iter().find(|(p, _)| *p == path).map(|(_, c)| c);
                    let response = answer(canned.cloned());
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        TestServer { addr, requests }
    }
}

fn answer(canned: Option<Canned>) -> Response<Body> {
    let full = |text: &'static str| Full::new(Bytes::from_static(text.as_bytes())).boxed();
    match canned {
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such page"))
            .unwrap(),
        Some(Canned::Json(text)) => Response::builder()
            .header("content-type", "application/json")
            .body(full(text))
            .unwrap(),
        Some(Canned::Text(text)) => Response::builder()
            .header("content-type", "text/plain")
            .body(full(text))
            .unwrap(),
        Some(Canned::Status(status, text)) => {
            Response::builder().status(status).body(full(text)).unwrap()
        }
        Some(Canned::Events(chunks)) => {
            let frames = chunks
                .into_iter()
                .map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        }
    }
}

/// Each document as an event: one `data:` line per line of it, then a blank line.
pub fn events(documents: &[&str]) -> Vec<u8> {
    let mut stream = String::new();
    for document in documents {
        for line in document.lines() {
            stream.push_str("data: ");
            stream.push_str(line);
            stream.push('\n');
        }
        stream.push('\n');
    }
    stream.into_bytes()
}
