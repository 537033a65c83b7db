//! Mirroring (`routes[].mirror`): a copy of some of a route's requests goes to another pool, and
//! its response is drained and discarded, so a shadow model sees production traffic. A copy never
//! delays, fails or changes the request it copies: it runs in a task of its own, bounded in
//! number (`max_in_flight`, past which copies are dropped and counted) and in time, and its pool
//! has its own breaker, endpoints and connections. The pipeline's `mirror` stage decides which
//! requests are copied and where; this is the copy's life after that.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::HeaderMap;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_resilience::BreakerGuard;
use switchyard_telemetry::metrics::{MirrorLabels, RouteLabels};
use switchyard_telemetry::Metrics;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::pool::PoolEntry;
use crate::upstream::{Failure, InlineConn, SendError};

/// A copy whose response takes longer than this in all is cut off (counted as `timeout`): a
/// shadow's stream must not hold a task and a connection for ever.
const MAX_COPY: Duration = Duration::from_secs(15 * 60);

/// Outcomes a copy is counted under, in [`Mirror::outcomes`]' order.
const OUTCOMES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "error", "timeout"];
/// Reasons a due copy is not sent, in [`Mirror::dropped`]' order.
pub const DROP_REASONS: [&str; 4] = ["in_flight", "overflow", "no_endpoint", "body"];

/// One mirror of a route, compiled.
pub struct Mirror {
    pub pool: Arc<PoolEntry>,
    /// A request is copied when a draw in `0..1_000_000` falls below this.
    per_million: u32,
    max_in_flight: u32,
    in_flight: AtomicU32,
    /// Bounds the response head (the route's `timeout`), then each body chunk (`idle_timeout`).
    timeout: Duration,
    idle_timeout: Duration,
    outcomes: [Counter; 6],
    dropped: [Counter; 4],
    duration: Histogram,
}

impl Mirror {
    pub fn new(
        route: &switchyard_config::Route,
        mirror: &switchyard_config::Mirror,
        pool: Arc<PoolEntry>,
        metrics: &Metrics,
    ) -> Self {
        let labels = |outcome| MirrorLabels {
            route: route.name.clone(),
            pool: mirror.pool.clone(),
            outcome,
        };
        Self {
            pool,
            per_million: (mirror.percent * 10_000.0).round().clamp(0.0, 1e6) as u32,
            max_in_flight: mirror.max_in_flight,
            in_flight: AtomicU32::new(0),
            timeout: route.timeout,
            idle_timeout: route.idle_timeout,
            outcomes: OUTCOMES.map(|o| metrics.mirror_requests.get_or_create(&labels(o)).clone()),
            dropped: DROP_REASONS.map(|r| metrics.mirror_dropped.get_or_create(&labels(r)).clone()),
            duration: metrics
                .mirror_duration
                .get_or_create(&RouteLabels {
                    route: route.name.clone(),
                    pool: mirror.pool.clone(),
                })
                .clone(),
        }
    }

    /// Whether this request is one to copy.
    pub fn sampled(&self) -> bool {
        self.per_million >= 1_000_000 || fastrand::u32(..1_000_000) < self.per_million
    }

    /// A place among the mirror's copies in flight, if one is free.
    pub fn slot(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.clone()))
    }

    /// Count a copy that was due but not sent (`reason` is one of [`DROP_REASONS`]).
    pub fn drop_copy(&self, reason: &'static str) {
        if let Some(i) = DROP_REASONS.iter().position(|r| *r == reason) {
            self.dropped[i].inc();
        }
    }

    /// Send the copy to endpoint `index` from a task of its own, holding its slot and its
    /// pool's breaker guard until its response is drained.
    pub fn spawn_copy(
        slot: Slot,
        guard: BreakerGuard,
        index: usize,
        head: Parts,
        headers: HeaderMap,
        body: RequestBody,
    ) {
        tokio::spawn(async move {
            let mirror = &slot.0;
            let outcome = mirror.copy(index, &head, headers, body).await;
            if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
                mirror.outcomes[i].inc();
            }
            drop(guard);
        });
    }

    async fn copy(
        &self,
        index: usize,
        head: &Parts,
        headers: HeaderMap,
        body: RequestBody,
    ) -> &'static str {
        let pool = &self.pool;
        let endpoint = &pool.endpoints[index];
        let _in_flight = endpoint.state.begin();
        pool.picks[index].inc();
        let start = Instant::now();
        let head_by = start + self.timeout;
        let sending = pool.upstream.send(
            index,
            head,
            headers,
            body,
            false,
            Some(head_by),
            &pool.breaker,
            &endpoint.state,
        );
        let (resp, conn) = match tokio::time::timeout_at(head_by, sending).await {
            Ok(Ok(sent)) => sent,
            Err(_) | Ok(Err(Failure::Inline(SendError::Timeout))) => return "timeout",
            Ok(Err(_)) => return "error",
        };
        let class = match resp.status().as_u16() / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "error",
        };
        let drained =
            tokio::time::timeout(MAX_COPY, drain(resp.into_body(), conn, self.idle_timeout)).await;
        match drained {
            Ok(Ok(())) => {
                self.duration.observe(start.elapsed().as_secs_f64());
                class
            }
            Ok(Err(outcome)) => outcome,
            Err(_) => "timeout",
        }
    }
}

/// A copy's place among its mirror's copies in flight; given back on drop.
pub struct Slot(Arc<Mirror>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Read a response body to its end and discard it (an inline HTTP/1 connection then goes back
/// to its pool), each chunk within `idle`.
async fn drain(
    body: Option<crate::upstream::UpstreamIncoming>,
    conn: Option<InlineConn>,
    idle: Duration,
) -> Result<(), &'static str> {
    if let Some(mut conn) = conn {
        loop {
            match tokio::time::timeout(idle, std::future::poll_fn(|cx| conn.poll_frame(cx))).await {
                Err(_) => return Err("timeout"),
                Ok(None) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) => return Err("error"),
            }
        }
        conn.release();
    }
    if let Some(mut body) = body {
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err("timeout"),
                Ok(None) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) => return Err("error"),
            }
        }
    }
    Ok(())
}

/// The head of a copy: the upstream request's method, target and version.
pub fn head_of(parts: &Parts) -> Parts {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head
}

/// Mark on every copy, so the mirror's servers (and their logs) can tell it from real traffic.
pub static X_SWITCHYARD_MIRROR: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-mirror");
