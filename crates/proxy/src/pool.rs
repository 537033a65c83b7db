//! A pool of one config generation, compiled: endpoints with live state, the picker, admission
//! controls, passive health, and the upstream transports.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use switchyard_balance::{Endpoint, Picker};
use switchyard_config::{Pool, Protocol};
use switchyard_health::Outcome;
use switchyard_resilience::{CircuitBreaker, ConcurrencyLimiter};
use switchyard_telemetry::metrics::PoolReasonLabels;

use crate::models::PoolModelMetrics;
use crate::passive_health::PassiveHealth;
use crate::upstream::Upstream;

/// A pool, compiled: endpoints with live state, the picker, and the connection pool.
pub struct PoolEntry {
    pub spec: Pool,
    pub endpoints: Vec<Endpoint>,
    pub picker: Arc<dyn Picker>,
    /// How requests reach the endpoints (HTTP/1 inline, HTTP/2, upgrades).
    pub upstream: Upstream,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub resets: Counter,
    pub breaker: CircuitBreaker,
    pub limiter: Option<ConcurrencyLimiter>,
    /// Priority, tenant and metrics for the limiter; present exactly when `limiter` is.
    pub admission: Option<crate::admission::Admission>,
    /// Failing flags and outlier detection, fed by attempts and by finished streams.
    pub health: Arc<PassiveHealth>,
    pub(crate) overflow: prometheus_client::metrics::family::Family<PoolReasonLabels, Counter>,
    /// The `inference` picker, for pools whose balancer is `inference`.
    pub inference: Option<Arc<switchyard_inference::InferencePicker>>,
    /// Attempts per endpoint (parallel to `endpoints`).
    pub picks: Vec<Counter>,
    /// Streamed inference responses per endpoint and model.
    pub model_metrics: PoolModelMetrics,
    /// Health or outlier detection can take endpoints out, so panic mode applies.
    pub(crate) guarded: bool,
    /// Slow start: a newly entered endpoint's share ramps up over the window.
    pub slow_start: Option<switchyard_health::SlowStartSettings>,
    pub(crate) panic_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl PoolEntry {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn http2(&self) -> bool {
        self.spec.protocol == Protocol::Http2
    }

    pub fn count_overflow(&self, reason: &'static str) {
        self.overflow
            .get_or_create(&PoolReasonLabels {
                pool: self.spec.name.clone(),
                reason,
            })
            .inc();
    }

    /// Panic mode (Envoy's healthy panic threshold): when fewer than `panic_threshold` percent
    /// of endpoints are available, health is ignored and any endpoint may be picked, because
    /// piling all traffic on the few survivors would take them down too.
    pub fn in_panic(&self) -> bool {
        if !self.guarded || self.endpoints.is_empty() {
            return false;
        }
        let available = self.endpoints.iter().filter(|e| e.is_available()).count();
        let panic = available * 100 < self.spec.panic_threshold as usize * self.endpoints.len();
        self.panic_gauge.set(i64::from(panic));
        panic
    }

    /// Slow start on the pick path: an endpoint still warming up is kept with probability equal
    /// to its ramped weight fraction; otherwise the caller picks again. Works with any picker.
    pub fn warming_declines(&self, index: usize) -> bool {
        let Some(settings) = &self.slow_start else {
            return false;
        };
        let Some(since) = self.endpoints[index].state.entered_at() else {
            return false;
        };
        let now = std::time::Instant::now();
        let fraction = switchyard_health::effective_weight(
            1.0,
            tokio::time::Instant::from_std(since),
            tokio::time::Instant::from_std(now),
            settings,
        );
        fraction < 1.0 && fastrand::f64() > fraction
    }

    /// Feed passive outlier detection (and the endpoint's failing flag, which steers retries)
    /// with one attempt's outcome.
    pub fn record_outcome(&self, index: usize, outcome: Outcome) {
        self.health.record(index, outcome);
    }

    /// Ask the backend for an ORCA load report on each response (gRFC A51): the balancer reads
    /// them.
    pub fn wants_load_reports(&self) -> bool {
        self.picker.wants_load_reports() || self.inference.as_ref().is_some_and(|p| p.config().orca)
    }
}
