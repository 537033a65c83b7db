//! Endpoints and their live state. The state ([`EndpointState`]) outlives config reloads: an
//! endpoint that stays in a pool keeps its in-flight count and health, so a reload never makes
//! the balancer forget what it knew. Latency (peak EWMA) and ORCA load reports live here too,
//! as atomics the proxy updates per response and pickers read per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::head_latency::{HeadClass, HeadRecorder, HeadWindow, Waiting};
use crate::latency::PeakEwma;
use crate::orca::LoadReport;
use crate::reported_load::{ReportedLoad, WeightPolicy};

/// Counters and flags for one upstream address, shared by every config generation that uses it.
#[derive(Debug)]
pub struct EndpointState {
    pub address: SocketAddr,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    healthy: AtomicBool,
    /// Set by passive outlier detection; independent of active health.
    ejected: AtomicBool,
    /// The last attempt sent here failed (gateway error or 5xx); cleared by a success.
    failing: AtomicBool,
    /// When the endpoint last entered service (nanoseconds since `epoch`, plus one; zero when
    /// never recorded), for slow start.
    entered: AtomicU64,
    /// Origin of the nanosecond timestamps below.
    epoch: Instant,
    latency: PeakEwma,
    reported: ReportedLoad,
    /// Time to response head, for latency outlier detection and adaptive per-try timeouts.
    head: HeadRecorder,
}

impl EndpointState {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            entered: AtomicU64::new(0),
            epoch: Instant::now(),
            latency: PeakEwma::new(),
            reported: ReportedLoad::default(),
            head: HeadRecorder::default(),
        }
    }

    /// Count a request as started; it stays in flight until the guard drops (after the last
    /// response byte for streams).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: self.clone(),
            waiting: None,
        }
    }

    /// This interval's head latencies (finished attempts, from zero again after this) and the
    /// attempts still waiting for their head at `now`.
    pub fn take_head_window(&self, now: Instant) -> HeadWindow {
        self.head.take(self.nanos(now) / 1000)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Record a failed attempt (connect error, reset, timeout).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Note whether the latest attempt here failed. Retries steer away from failing endpoints
    /// while others remain. A success on a healthy endpoint costs one relaxed load.
    pub fn set_failing(&self, failing: bool) {
        if self.failing.load(Ordering::Relaxed) != failing {
            self.failing.store(failing, Ordering::Relaxed);
        }
    }

    /// Whether the latest attempt here failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Outlier detection took the endpoint out (or put it back).
    pub fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    /// Record that the endpoint (re-)entered service now: added, turned healthy, or returned
    /// from ejection. Slow start ramps its share up from here.
    pub fn mark_entered(&self, now: Instant) {
        self.entered.store(self.nanos(now) + 1, Ordering::Relaxed);
    }

    /// When the endpoint last entered service, if recorded.
    pub fn entered_at(&self) -> Option<Instant> {
        match self.entered.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Healthy and not ejected: what pickers may choose.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Record one response latency (time to response headers, or to the first token for a
    /// stream) into the peak-EWMA estimate. Call once per completed attempt, failures included.
    pub fn record_latency(&self, rtt: Duration) {
        self.record_latency_at(rtt, Instant::now());
    }

    /// [`EndpointState::record_latency`] with an explicit clock, for tests and replays.
    pub fn record_latency_at(&self, rtt: Duration, now: Instant) {
        self.latency.observe(rtt, self.nanos(now));
    }

    /// The peak-EWMA latency as seen at `now` (decayed toward zero since the last sample), or
    /// `None` before the first sample.
    pub fn latency_at(&self, now: Instant) -> Option<Duration> {
        self.latency_ns_at(now)
            .map(|ns| Duration::from_nanos(ns as u64))
    }

    pub(crate) fn latency_ns_at(&self, now: Instant) -> Option<f64> {
        self.latency.get(self.nanos(now))
    }

    /// Set the EWMA time constant τ. The `peak_ewma` picker does this itself for the endpoints
    /// it sees, so the proxy need not; until then τ is 10s.
    pub fn set_latency_decay(&self, tau: Duration) {
        self.latency.set_decay(tau);
    }

    /// Record an ORCA load report parsed from a response's `endpoint-load-metrics` header (see
    /// [`crate::parse_orca`]). Returns false when the report carries no weight (no qps or no
    /// utilization) and was ignored.
    pub fn record_load_report(&self, report: LoadReport) -> bool {
        self.record_load_report_at(&report, Instant::now())
    }

    /// The last kept load report as (utilization, qps, eps), for operators.
    pub fn last_load_report(&self) -> Option<(f64, f64, f64)> {
        self.reported.last()
    }

    /// The utilization of a load report no older than `max_age` at `now`: a report only
    /// arrives with a response, so one from an endpoint no longer sent traffic would otherwise
    /// stand forever.
    pub fn recent_utilization(&self, max_age: Duration, now: Instant) -> Option<f64> {
        let age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        self.reported
            .utilization_since(self.nanos(now).saturating_sub(age))
    }

    /// [`EndpointState::record_load_report`] with an explicit clock.
    pub fn record_load_report_at(&self, report: &LoadReport, now: Instant) -> bool {
        self.reported.record(report, self.nanos(now))
    }

    pub(crate) fn reported_weight_at(&self, now: Instant, policy: &WeightPolicy) -> Option<f64> {
        self.reported.weight(self.nanos(now), policy)
    }
}

/// Keeps an endpoint counted as in flight while alive.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<EndpointState>,
    /// Counted among the endpoint's attempts waiting for a response head.
    waiting: Option<Waiting>,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Count this attempt as waiting for its head since `since` (see [`crate::head_latency`]),
    /// until [`InFlight::head_done`] or the drop.
    pub fn wait_head(&mut self, class: HeadClass, size: u32, since: Instant) {
        if self.waiting.is_none() {
            let us = self.state.nanos(since) / 1000;
            self.waiting = Some(self.state.head.wait(class, size, us));
        }
    }

    /// The attempt's head came (or it failed or timed out) after `latency`.
    pub fn head_done(&mut self, latency: Duration) {
        if let Some(w) = self.waiting.take() {
            self.state.head.end(w, Some(latency));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(w) = self.waiting.take() {
            self.state.head.end(w, None);
        }
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint as a given config generation sees it: shared state plus this config's weight and
/// locality.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub state: Arc<EndpointState>,
    pub weight: u32,
    pub zone: Option<String>,
    pub region: Option<String>,
}

impl Endpoint {
    pub fn address(&self) -> SocketAddr {
        self.state.address
    }

    /// Whether a picker may choose this endpoint: healthy and not ejected.
    pub fn is_available(&self) -> bool {
        self.state.is_available()
    }
}

/// Endpoint states keyed by pool and address, carried from one config generation to the next.
#[derive(Debug, Default)]
pub struct StateRegistry {
    states: HashMap<(String, SocketAddr), Arc<EndpointState>>,
}

impl StateRegistry {
    /// The existing state for `(pool, address)`, or a fresh one.
    pub fn get_or_create(&mut self, pool: &str, address: SocketAddr) -> Arc<EndpointState> {
        self.states
            .entry((pool.to_string(), address))
            .or_insert_with(|| Arc::new(EndpointState::new(address)))
            .clone()
    }

    /// Drop states that the new generation no longer uses.
    pub fn retain(&mut self, keep: impl Fn(&str, SocketAddr) -> bool) {
        self.states.retain(|(pool, addr), _| keep(pool, *addr));
    }
}
