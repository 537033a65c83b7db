//! The admin listener: what an operator or a scraper asks the gateway about itself.
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text
//! - `GET /ready`: 200 once listeners are bound and config is loaded, 503 before and while draining
//! - `GET /live`: 200 while the process runs
//! - `GET /config`: the effective config as JSON
//! - `GET /pools`: pools, endpoints and their live state as JSON

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_proxy::GatewayHandle;
use tokio::net::TcpListener;

/// Shared admin state.
pub struct Admin {
    pub handle: Arc<GatewayHandle>,
    pub ready: AtomicBool,
}

impl Admin {
    pub fn new(handle: Arc<GatewayHandle>) -> Arc<Self> {
        Arc::new(Self {
            handle,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Serve admin requests on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
        }
        match req.uri().path() {
            "/metrics" => {
                self.handle.refresh_gauges();
                let mut r = Response::new(Full::new(Bytes::from(self.handle.metrics.encode())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            "/ready" => {
                if self.ready.load(Ordering::SeqCst) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/config" => {
                let g = self.handle.load();
                json(serde_json::to_value(&*g.config).unwrap_or_default())
            }
            "/pools" => json(self.pools()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics /ready /live /config /pools\n",
            ),
        }
    }

    fn pools(&self) -> serde_json::Value {
        let g = self.handle.load();
        let pools: Vec<_> = g
            .pools
            .iter()
            .map(|p| {
                let now = std::time::Instant::now();
                let endpoints: Vec<_> = p
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        // What the `inference` picker scores: scraped signals corrected by the
                        // gateway's own picks, and whether they are fresh.
                        let inference = p.inference.as_ref().and_then(|picker| {
                            let v = picker.endpoint_view(i, now)?;
                            let scrape_error = v.last_scrape_error.map(|(e, age)| {
                                serde_json::json!({
                                    "cause": e.cause(),
                                    "status": e.status(),
                                    "ms_ago": age.as_secs_f64() * 1000.0,
                                })
                            });
                            Some(serde_json::json!({
                                "fresh": v.signals.fresh,
                                "scrape_fresh": v.scrape_fresh,
                                "last_scrape_ms_ago": v.last_scrape_age.map(|d| d.as_secs_f64() * 1000.0),
                                "last_scrape_error": scrape_error,
                                "waiting": v.signals.waiting,
                                "running": v.signals.running,
                                "kv_usage": v.signals.kv_usage,
                                "in_flight_tokens": v.signals.in_flight_tokens,
                                "num_gpu_blocks": v.signals.num_gpu_blocks,
                                "lora_running": v.lora_running,
                                "lora_waiting": v.lora_waiting,
                            }))
                        });
                        serde_json::json!({
                            "inference": inference,
                            "address": e.address().to_string(),
                            "weight": e.weight,
                            "zone": e.zone,
                            "region": e.region,
                            "healthy": e.state.is_healthy(),
                            "ejected": e.state.is_ejected(),
                            "load_report": e.state.last_load_report().map(|(u, q, eps)| {
                                serde_json::json!({"utilization": u, "qps": q, "eps": eps})
                            }),
                            "available": e.is_available(),
                            "latency_ewma_ms": e.state.latency_at(std::time::Instant::now()).map(|d| d.as_secs_f64() * 1000.0),
                            "in_flight": e.state.in_flight(),
                            "requests": e.state.requests(),
                            "failures": e.state.failures(),
                        })
                    })
                    .collect();
                // An `inference` pool with no fresh signals anywhere scores every endpoint on the
                // gateway's own in-flight counts: say so rather than claim to be scoring.
                let mode = match &p.inference {
                    Some(picker) if picker.fresh_endpoints(now) == 0 => format!(
                        "degraded: {} (no endpoint has fresh metrics)",
                        p.picker.name()
                    ),
                    Some(_) => "inference".to_string(),
                    None => p.picker.name().to_string(),
                };
                serde_json::json!({
                    "name": p.name(),
                    "protocol": p.spec.protocol,
                    "balancer": p.spec.balancer.kind(),
                    "mode": mode,
                    "endpoints": endpoints,
                })
            })
            .collect();
        serde_json::json!({ "pools": pools })
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Bind the admin address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
