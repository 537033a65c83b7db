//! The admin listener: what an operator or a scraper asks the gateway about itself.
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text
//! - `GET /ready`: 200 once listeners are bound and config is loaded, 503 before and while draining
//! - `GET /live`: 200 while the process runs
//! - `GET /config`: the effective config as JSON
//! - `GET /pools`: pools, endpoints and their live state as JSON
//! - `GET /rollouts`, `POST /rollouts/{route}/{action}`: canary rollouts and their controls
//! - `GET /rate_limits`: each rate limit and its ten busiest keys now (hashed)
//!
//! The admin port is for operators and scrapers, but it is a port all the same: a request head
//! must arrive within `admin.header_read_timeout` and fit in 16 KiB, a connection with nothing in
//! flight is closed after the same time, and at most `admin.max_connections` are served at once
//! (past that the listener stops accepting, as HAProxy does at `maxconn`, and the kernel's
//! backlog holds the rest).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use switchyard_balance::head_latency::{HeadClass, LatencyHistogram};
use switchyard_proxy::connection_idle::{Activity, Tracked};
use switchyard_proxy::GatewayHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Largest admin request head (request line and headers), in bytes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

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

    /// Serve admin requests on `listener` until the task is dropped, with the limits of the
    /// config it started with (admin settings change only on restart).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let settings = self.handle.load().config.admin.clone();
        let header_read = settings.header_read_timeout;
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        let builder = Arc::new(connection_builder(header_read));
        loop {
            // At the cap, wait for a connection to close before accepting the next.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let admin = self.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let activity = Activity::new();
                let svc = {
                    let activity = activity.clone();
                    hyper::service::service_fn(move |req| {
                        let in_flight = activity.start();
                        let response = admin.route(req).map(|b| Tracked::new(b, in_flight));
                        async move { Ok::<_, Infallible>(response) }
                    })
                };
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = activity.idle(header_read, Some(header_read)) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(header_read, conn).await;
                    }
                }
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::POST {
            if let Some(rest) = req.uri().path().strip_prefix("/rollouts/") {
                return self.rollout_action(rest);
            }
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is supported (and POST /rollouts/ROUTE/ACTION)\n",
            );
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
            "/rollouts" => {
                let g = self.handle.load();
                let rollouts: Vec<_> = g
                    .routes
                    .iter()
                    .filter_map(|r| r.rollout.as_ref().map(|ro| ro.view()))
                    .collect();
                json(serde_json::json!({ "rollouts": rollouts }))
            }
            "/rate_limits" => {
                let g = self.handle.load();
                let limits: Vec<_> = g.rate_limits.iter().map(|l| l.view(10)).collect();
                json(serde_json::json!({ "rate_limits": limits }))
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics /ready /live /config /pools /rollouts /rate_limits\n",
            ),
        }
    }

    /// `POST /rollouts/{route}/{pause|resume|promote|abort}`.
    fn rollout_action(&self, rest: &str) -> Response<Full<Bytes>> {
        use switchyard_proxy::rollout::Action;
        let Some((route, action)) = rest.rsplit_once('/') else {
            return text(StatusCode::NOT_FOUND, "use /rollouts/ROUTE/ACTION\n");
        };
        let Some(action) = Action::parse(action) else {
            return text(
                StatusCode::NOT_FOUND,
                "actions: pause, resume, promote, abort\n",
            );
        };
        let g = self.handle.load();
        let Some(rollout) = g
            .routes
            .iter()
            .find(|r| r.name == route)
            .and_then(|r| r.rollout.as_ref())
        else {
            return text(StatusCode::NOT_FOUND, "no rollout on that route\n");
        };
        match rollout.act(action) {
            Ok(_) => json(rollout.view()),
            Err(e) => {
                let mut r = json(serde_json::json!({ "error": e }));
                *r.status_mut() = StatusCode::CONFLICT;
                r
            }
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
                    "head_latency": head_latency(&p.health.head_latency()),
                    "endpoints": endpoints,
                })
            })
            .collect();
        serde_json::json!({ "pools": pools })
    }
}

/// The pool's recent time to response head, per class (what `per_try_timeout: auto` reads):
/// p50 and p99 in milliseconds, `null` until enough attempts were seen.
fn head_latency(h: &LatencyHistogram) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for class in HeadClass::ALL {
        let ms = |q| h.quantile(class, q).map(|s| s * 1000.0);
        out.insert(
            class.as_str().into(),
            serde_json::json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99)}),
        );
    }
    out.into()
}

fn connection_builder(header_read: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_buf_size(MAX_REQUEST_HEAD);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD as u32)
        .max_concurrent_streams(16)
        .keep_alive_interval(Some(header_read))
        .keep_alive_timeout(header_read);
    b
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
