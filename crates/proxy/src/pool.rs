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
    /// `inference` pools: picks by [`switchyard_inference::PrefixOutcome`], in the order of
    /// its `ALL` (counted on every request, so resolved once per generation).
    pub(crate) prefix_picks: Option<[Counter; 4]>,
    /// Attempts per second, for capacity reports.
    pub rate: RateMeter,
    /// Endpoints nearest first, for a pool with `locality` and more than one tier.
    pub locality: Option<switchyard_balance::locality::Tiers>,
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
    /// TLS failure causes already logged in this generation.
    pub tls_errors: crate::tls::TlsErrorLog,
    pub(crate) tls_error_counts:
        prometheus_client::metrics::family::Family<PoolReasonLabels, Counter>,
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

    pub fn count_prefix_pick(&self, outcome: switchyard_inference::PrefixOutcome) {
        if let Some(counters) = &self.prefix_picks {
            counters[outcome as usize].inc();
        }
    }

    pub fn count_tls_error(&self, cause: crate::tls::TlsCause) {
        self.tls_error_counts
            .get_or_create(&PoolReasonLabels {
                pool: self.spec.name.clone(),
                reason: cause.as_str(),
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

/// Whether the latency-only outlier detection a pool gets by default (no `outlier` section, more
/// than two endpoints) could take out enough endpoints for panic mode. Its cap (10%, at least
/// one endpoint) keeps a pool of three or more above the default 50% threshold, so such pools
/// skip the availability scan panic mode costs on every pick; a threshold set higher keeps it.
pub(crate) fn implicit_detection_may_panic(p: &Pool) -> bool {
    let Some(o) = switchyard_config::health::OutlierDetection::implicit(p.endpoints.len()) else {
        return false;
    };
    let n = p.endpoints.len();
    let most_out = (n * o.max_ejected_percent as usize / 100).max(1);
    (n - most_out) * 100 < p.panic_threshold as usize * n
}

/// The pool's locality tiers, when it asks for them and they differ.
pub(crate) fn locality_tiers(
    p: &switchyard_config::Pool,
    here: Option<&switchyard_config::Locality>,
    endpoints: &[switchyard_balance::Endpoint],
) -> Option<switchyard_balance::locality::Tiers> {
    use switchyard_balance::locality::{Here, Placement, Tiers};
    let settings = p.locality.as_ref()?;
    let placements: Vec<Placement> = p
        .endpoints
        .iter()
        .map(|e| Placement {
            priority: e.priority,
            capacity: e.capacity,
        })
        .collect();
    let here = match settings.mode {
        switchyard_config::LocalityMode::PreferLocal => here.map(|l| Here {
            region: l.region.clone(),
            zone: l.zone.clone(),
        }),
        switchyard_config::LocalityMode::Priority => None,
    };
    Tiers::build(endpoints, &placements, here.as_ref(), settings.spill_at)
}

/// Attempts per second, measured between two reads at least a second apart.
#[derive(Debug)]
pub struct RateMeter(std::sync::Mutex<(std::time::Instant, u64, f64)>);

impl RateMeter {
    pub fn new(count: u64) -> Self {
        Self(std::sync::Mutex::new((
            std::time::Instant::now(),
            count,
            0.0,
        )))
    }

    pub(crate) fn rate(&self, count: u64) -> f64 {
        let Ok(mut m) = self.0.lock() else { return 0.0 };
        let elapsed = m.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            m.2 = count.saturating_sub(m.1) as f64 / elapsed;
            *m = (std::time::Instant::now(), count, m.2);
        }
        m.2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(endpoints: usize, panic_threshold: u32) -> Pool {
        let eps: Vec<String> = (0..endpoints)
            .map(|i| format!("127.0.0.1:{}", 9000 + i))
            .collect();
        let yaml = format!(
            "name: p\nendpoints: [{}]\npanic_threshold: {panic_threshold}\n",
            eps.join(", ")
        );
        switchyard_config::yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn default_latency_detection_needs_no_panic_scan_at_the_default_threshold() {
        assert!(
            !implicit_detection_may_panic(&pool(2, 50)),
            "no default detection"
        );
        assert!(!implicit_detection_may_panic(&pool(3, 50)));
        assert!(!implicit_detection_may_panic(&pool(40, 50)));
        assert!(
            implicit_detection_may_panic(&pool(3, 80)),
            "2 of 3 is below 80%"
        );
        assert!(
            implicit_detection_may_panic(&pool(40, 95)),
            "36 of 40 is below 95%"
        );
    }

    #[test]
    fn the_rate_is_measured_over_a_window_of_a_second_or_more() {
        let meter = RateMeter::new(10);
        assert_eq!(meter.rate(50), 0.0, "no window has passed");
        *meter.0.lock().unwrap() = (
            std::time::Instant::now() - std::time::Duration::from_secs(2),
            10,
            0.0,
        );
        let r = meter.rate(50);
        assert!((19.0..=20.0).contains(&r), "{r}");
        assert_eq!(meter.rate(60), r, "kept until the next window");
    }
}
