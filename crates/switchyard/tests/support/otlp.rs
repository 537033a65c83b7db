//! A real OTLP receiver for tests, on its own thread and runtime: OTLP/gRPC through the
//! generated tonic `TraceService`, or OTLP/HTTP protobuf (`POST /v1/traces`) on hyper.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::support::background::Background;

/// Spans received, with the `service.name` of their resource.
pub type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// A running receiver; stopped on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Received,
    _server: Background,
}

fn store(spans: &Received, req: ExportTraceServiceRequest) {
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// OTLP/HTTP: `POST /v1/traces` with an `application/x-protobuf` body.
async fn http_export(
    spans: Received,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let ok = req.method() == http::Method::POST
        && req.uri().path() == "/v1/traces"
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let (status, reply) = match decoded {
        Some(r) if ok => {
            store(&spans, r);
            (200, ExportTraceServiceResponse::default().encode_to_vec())
        }
        _ => (400, Vec::new()),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(reply)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/x-protobuf".parse().unwrap());
    Ok(resp)
}

impl Receiver {
    pub fn grpc() -> Receiver {
        Self::start(true)
    }

    pub fn http() -> Receiver {
        Self::start(false)
    }

    fn start(grpc: bool) -> Receiver {
        let spans: Received = Arc::default();
        let stored = spans.clone();
        let server = Background::start(move |listener| async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let io = TokioIo::new(stream);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if grpc {
                    let svc =
                        TowerToHyperService::new(TraceServiceServer::new(Grpc(stored.clone())));
                    tokio::spawn(async move {
                        let _ = builder.serve_connection(io, svc).await;
                    });
                } else {
                    let spans = stored.clone();
                    let svc =
                        hyper::service::service_fn(move |req| http_export(spans.clone(), req));
                    tokio::spawn(async move {
                        let _ = builder.serve_connection(io, svc).await;
                    });
                }
            }
        });
        Receiver {
            addr: server.addr,
            spans,
            _server: server,
        }
    }

    pub fn all(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id` (hex), once at least `n` have arrived.
    pub fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let id = unhex(trace_id);
        let deadline = Instant::now() + super::support::WAIT;
        loop {
            let spans: Vec<Span> = self
                .all()
                .into_iter()
                .map(|(_, s)| s)
                .filter(|s| s.trace_id == id)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: {} of {n} spans arrived",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
