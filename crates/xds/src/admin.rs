//! The control plane's admin port: what it could not translate and what Envoys rejected
//! (`/xds/report`), each node's state (`/xds/nodes`), the capacity weights it pushes
//! (`/xds/weights`), Prometheus metrics (`/metrics`) and readiness (`/ready`). GET only, HTTP/1.1,
//! a bounded time to send the request head.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::plane::ControlPlane;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct NackView<'a> {
    node: &'a str,
    #[serde(flatten)]
    nack: &'a crate::nodes::Nack,
}

/// Admin connections served at once; past it, accepting waits for one to close.
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, plane: Arc<ControlPlane>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let plane = plane.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let plane = plane.clone();
                async move { Ok::<_, Infallible>(answer(&plane, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

fn answer(plane: &ControlPlane, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/ready" => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            plane.metrics.encode(),
        ),
        "/xds/report" => {
            let report = plane.report();
            let nodes = plane.nodes.view();
            let nacks: Vec<NackView> = nodes
                .iter()
                .filter_map(|(node, s)| s.last_nack.as_ref().map(|nack| NackView { node, nack }))
                .collect();
            json(&serde_json::json!({
                "untranslated": report.untranslated,
                "nacks": nacks,
            }))
        }
        "/xds/nodes" => json(&plane.nodes.view()),
        "/xds/weights" => {
            let weights: std::collections::BTreeMap<String, std::collections::BTreeMap<String, _>> =
                plane
                    .weights()
                    .into_iter()
                    .map(|(pool, w)| {
                        (
                            pool,
                            w.into_iter().map(|(a, h)| (a.to_string(), h)).collect(),
                        )
                    })
                    .collect();
            json(&weights)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    reply(StatusCode::OK, "application/json", body)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}
