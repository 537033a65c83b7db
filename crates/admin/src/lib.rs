//! The admin listener: what an operator or a scraper asks the gateway about itself.
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text
//! - `GET /ready`: 200 once listeners are bound and config is loaded, 503 before and while draining
//! - `GET /live`: 200 while the process runs
//! - `GET /config`: the effective config as JSON
//! - `GET /pools`: pools, endpoints and their live state as JSON
//! - `GET /rollouts`, `POST /rollouts/{route}/{action}`: canary rollouts and their controls
//! - `GET /rate_limits`: each rate limit and its ten busiest keys now (hashed)
//! - `GET /dashboard`: the live dashboard, one page compiled in (`dashboard.html`)
//! - `GET /stats`, `/stats/stream`: live rates, latencies and state per route, pool and endpoint
//!   (`stats.rs`); the stream sends the last minutes first, then a frame a second
//! - `GET /tap`: a stream of request summaries as they finish; `GET /debug/requests[/{id}]`:
//!   the last requests kept (`requests.rs`)
//!
//! The admin port is for operators and scrapers, but it is a port all the same: a request head
//! must arrive within `admin.header_read_timeout` and fit in 16 KiB, a connection with nothing in
//! flight is closed after the same time, and at most `admin.max_connections` are served at once
//! (past that the listener stops accepting, as HAProxy does at `maxconn`, and the kernel's
//! backlog holds the rest).

mod body;
mod dashboard;
mod pools;
mod requests;
pub mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use switchyard_proxy::connection_idle::{Activity, Tracked};
use switchyard_proxy::GatewayHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use body::{json, text, AdminBody};
use stats::Stats;

/// Largest admin request head (request line and headers), in bytes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Shared admin state.
pub struct Admin {
    pub handle: Arc<GatewayHandle>,
    pub ready: AtomicBool,
    /// The live-numbers sampler, started with the admin listener.
    stats: OnceLock<Arc<Stats>>,
}

impl Admin {
    pub fn new(handle: Arc<GatewayHandle>) -> Arc<Self> {
        Arc::new(Self {
            handle,
            ready: AtomicBool::new(false),
            stats: OnceLock::new(),
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
        // The sampler runs from the start, so a page opened later has the last minutes.
        self.stats();
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

    fn route(&self, req: Request<Incoming>) -> Response<AdminBody> {
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
        let query = req.uri().query();
        if let Some(id) = req.uri().path().strip_prefix("/debug/requests/") {
            return requests::debug(&self.handle.observer, Some(id), query);
        }
        match req.uri().path() {
            "/dashboard" | "/dashboard/" => dashboard::page(),
            "/stats" => self.stats_now(),
            "/stats/stream" => self.stats_stream(),
            "/tap" => requests::tap(&self.handle.observer, query),
            "/debug/requests" => requests::debug(&self.handle.observer, None, query),
            "/metrics" => {
                self.handle.refresh_gauges();
                let mut r = Response::new(body::full(self.handle.metrics.encode()));
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
                let mut config = serde_json::to_value(&*g.config).unwrap_or_default();
                let source = self
                    .handle
                    .source
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default();
                if let Some(map) = config.as_object_mut() {
                    map.insert(
                        "source".into(),
                        serde_json::to_value(source).unwrap_or_default(),
                    );
                }
                json(&config)
            }
            "/pools" => json(&pools::pools(&self.handle)),
            "/capacity" => {
                let g = self.handle.load();
                let pools: Vec<_> = g
                    .pools
                    .iter()
                    .map(|p| switchyard_proxy::capacity::of(p))
                    .collect();
                let in_flight: u64 = pools.iter().map(|p| p.in_flight).sum();
                let capacity: Option<u64> =
                    pools.iter().filter_map(|p| p.capacity).reduce(|a, b| a + b);
                // Each pool's utilization weighted by its capacity: pools without one count
                // neither their requests nor their room.
                let used: f64 = pools
                    .iter()
                    .filter_map(|p| Some(p.utilization? * p.capacity? as f64))
                    .sum();
                let utilization = capacity.filter(|c| *c > 0).map(|c| used / c as f64);
                json(&serde_json::json!({
                    "in_flight": in_flight,
                    "capacity": capacity,
                    "utilization": utilization,
                    "pools": pools,
                }))
            }
            "/rollouts" => {
                let g = self.handle.load();
                let rollouts: Vec<_> = g
                    .routes
                    .iter()
                    .filter_map(|r| r.rollout.as_ref().map(|ro| ro.view()))
                    .collect();
                json(&serde_json::json!({ "rollouts": rollouts }))
            }
            "/rate_limits" => {
                let g = self.handle.load();
                let limits: Vec<_> = g.rate_limits.iter().map(|l| l.view(10)).collect();
                json(&serde_json::json!({ "rate_limits": limits }))
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /dashboard /metrics /stats /stats/stream /tap /debug/requests \
                 /ready /live /config /pools /capacity /rollouts /rate_limits\n",
            ),
        }
    }

    fn stats(&self) -> &Arc<Stats> {
        self.stats.get_or_init(|| Stats::spawn(self.handle.clone()))
    }

    /// `GET /stats`: the latest frame, serialized once by the sampler.
    fn stats_now(&self) -> Response<AdminBody> {
        let frame = self.stats().latest();
        if frame.is_empty() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no stats yet: the first frame comes a second after start\n",
            );
        }
        body::json_bytes(frame)
    }

    /// `GET /stats/stream`: the frames kept (the last minutes), then each new one.
    fn stats_stream(&self) -> Response<AdminBody> {
        let stats = self.stats().clone();
        let mut next = stats.subscribe();
        next.mark_unchanged();
        let watching = self.handle.observer.watch();
        let (tx, response) = body::event_stream();
        tokio::spawn(async move {
            let _watching = watching;
            for frame in stats.history(stats::HISTORY) {
                if tx.send(body::event(&frame)).await.is_err() {
                    return;
                }
            }
            // A reader slower than a frame a second skips to the newest (a watch keeps one).
            while next.changed().await.is_ok() {
                let frame = next.borrow_and_update().clone();
                if tx.send(body::event(&frame)).await.is_err() {
                    return;
                }
            }
        });
        response
    }

    /// `POST /rollouts/{route}/{pause|resume|promote|abort}`.
    fn rollout_action(&self, rest: &str) -> Response<AdminBody> {
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
            Ok(_) => json(&rollout.view()),
            Err(e) => {
                let mut r = json(&serde_json::json!({ "error": e }));
                *r.status_mut() = StatusCode::CONFLICT;
                r
            }
        }
    }
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

/// Bind the admin address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
