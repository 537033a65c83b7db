//! Weighted round robin on backend-reported utilization: gRFC A58 (gRPC's
//! `weighted_round_robin`). Each endpoint's weight is `qps / (utilization + eps/qps ×
//! error_penalty)` from its ORCA load reports, so an endpoint that serves more per unit of CPU
//! (a faster GPU, a warmer cache) gets proportionally more traffic, and one that answers quickly
//! with errors is not rewarded for it.
//!
//! As in A58: a weight is used only after a blackout since the first report (one report is
//! noise) and until an expiration since the last (old numbers from a silent endpoint are no
//! longer true); endpoints without a usable weight get the mean of those with one; with fewer
//! than two usable weights the picker is plain round robin. Weights are recomputed at most once
//! per second and scheduled with the lock-free static stride scheduler ([`crate::stride`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::endpoint::Endpoint;
use crate::picker::Picker;
use crate::reported_load::WeightPolicy;
use crate::select::random_available;
use crate::stride::{self, MAX_WEIGHT};

pub const DEFAULT_BLACKOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(180);
pub const DEFAULT_ERROR_PENALTY: f64 = 1.0;
/// How often weights are recomputed from the latest reports (A58's `weight_update_period`).
pub const WEIGHT_UPDATE_PERIOD: Duration = Duration::from_secs(1);
/// Weights below this fraction of the mean are raised to it, as in gRPC's stride scheduler, so
/// one bad report cannot starve an endpoint entirely.
const MIN_RATIO: f64 = 0.1;

#[derive(Debug)]
pub struct WeightedLeastUtilization {
    policy: WeightPolicy,
    seq: AtomicU64,
    weights: ArcSwapOption<Weights>,
    refreshing: AtomicBool,
}

#[derive(Debug)]
struct Weights {
    /// The endpoint slice these were computed for (address and length).
    set: (usize, usize),
    computed_at: Instant,
    scaled: Vec<u16>,
}

impl WeightedLeastUtilization {
    pub fn new(blackout: Duration, expiration: Duration, error_penalty: f64) -> Self {
        Self {
            policy: WeightPolicy {
                blackout,
                expiration,
                error_penalty,
            },
            seq: AtomicU64::new(0),
            weights: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
        }
    }

    fn compute(&self, endpoints: &[Endpoint], now: Instant) -> Weights {
        let raw: Vec<Option<f64>> = endpoints
            .iter()
            .map(|e| e.state.reported_weight_at(now, &self.policy))
            .collect();
        let usable: Vec<f64> = raw.iter().flatten().copied().collect();
        let scaled = if usable.len() < 2 {
            vec![MAX_WEIGHT as u16; endpoints.len()]
        } else {
            let mean = usable.iter().sum::<f64>() / usable.len() as f64;
            let w: Vec<f64> = raw
                .iter()
                .map(|w| w.unwrap_or(mean).max(mean * MIN_RATIO))
                .collect();
            let max = w.iter().copied().fold(0.0, f64::max);
            w.iter().map(|&x| stride::scale(x, max) as u16).collect()
        };
        Weights {
            set: (endpoints.as_ptr() as usize, endpoints.len()),
            computed_at: now,
            scaled,
        }
    }

    /// [`Picker::pick`] at an explicit time, for tests.
    pub fn pick_at(&self, endpoints: &[Endpoint], now: Instant) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        let set = (endpoints.as_ptr() as usize, endpoints.len());
        {
            // Borrow the current weights (no reference count shared between cores) unless they
            // are stale; when stale, one picker recomputes while the others keep using them.
            let current = self.weights.load();
            if let Some(w) = current.as_ref().filter(|w| w.set == set) {
                let fresh = now.saturating_duration_since(w.computed_at) < WEIGHT_UPDATE_PERIOD;
                if fresh || self.refreshing.swap(true, Ordering::Acquire) {
                    return self.schedule(endpoints, w);
                }
            }
        }
        let w = Arc::new(self.compute(endpoints, now));
        self.weights.store(Some(w.clone()));
        self.refreshing.store(false, Ordering::Release);
        self.schedule(endpoints, &w)
    }

    fn schedule(&self, endpoints: &[Endpoint], w: &Weights) -> Option<usize> {
        stride::pick(&self.seq, endpoints, |i| u64::from(w.scaled[i]))
            .or_else(|| random_available(endpoints))
    }
}

impl Default for WeightedLeastUtilization {
    fn default() -> Self {
        Self::new(DEFAULT_BLACKOUT, DEFAULT_EXPIRATION, DEFAULT_ERROR_PENALTY)
    }
}

impl Picker for WeightedLeastUtilization {
    fn name(&self) -> &'static str {
        "weighted_least_utilization"
    }

    fn wants_load_reports(&self) -> bool {
        true
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        self.pick_at(endpoints, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orca::LoadReport;
    use crate::testing::{endpoints, shares};
    use proptest::prelude::*;

    fn report(qps: f64, cpu: f64) -> LoadReport {
        LoadReport {
            rps_fractional: qps,
            cpu_utilization: cpu,
            ..LoadReport::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn share_at(p: &WeightedLeastUtilization, eps: &[Endpoint], now: Instant) -> Vec<f64> {
        let picks: Vec<_> = (0..6000).map(|_| p.pick_at(eps, now).unwrap()).collect();
        shares(&picks, eps.len())
    }

    #[test]
    fn weights_follow_reports_after_blackout_until_expiry() {
        let eps = endpoints(&[true; 3]);
        let t0 = Instant::now();
        // qps per utilization: 100/0.5 = 200, 100/0.25 = 400, 300/0.5 = 600.
        let send = |at: Instant| {
            eps[0].state.record_load_report_at(&report(100.0, 0.5), at);
            eps[1].state.record_load_report_at(&report(100.0, 0.25), at);
            eps[2].state.record_load_report_at(&report(300.0, 0.5), at);
        };
        send(t0);
        let p = WeightedLeastUtilization::default();
        let s = share_at(&p, &eps, t0 + secs(5));
        assert!(
            s.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.02),
            "blackout: {s:?}"
        );
        send(t0 + secs(11));
        let s = share_at(&p, &eps, t0 + secs(12));
        assert!((s[0] - 1.0 / 6.0).abs() < 0.02, "{s:?}");
        assert!((s[2] - 0.5).abs() < 0.02, "{s:?}");
        let s = share_at(&p, &eps, t0 + secs(11 + 181));
        assert!(
            s.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.02),
            "expired: {s:?}"
        );
    }

    #[test]
    fn unreported_endpoint_gets_the_mean_and_errors_cost() {
        let eps = endpoints(&[true; 3]);
        let t0 = Instant::now();
        eps[0].state.record_load_report_at(&report(100.0, 0.5), t0);
        let mut erroring = report(100.0, 0.5);
        erroring.eps = 50.0; // 100 / (0.5 + 0.5 × 1.0) = 100
        eps[1].state.record_load_report_at(&erroring, t0);
        let p = WeightedLeastUtilization::default();
        // Weights 200, 100 and the mean 150.
        let s = share_at(&p, &eps, t0 + secs(10));
        assert!((s[0] - 200.0 / 450.0).abs() < 0.02, "{s:?}");
        assert!((s[2] - 150.0 / 450.0).abs() < 0.02, "{s:?}");
    }

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20), qps in prop::collection::vec(0.0..1000.0f64, 20)) {
            let eps = endpoints(&health);
            let t0 = Instant::now();
            for (e, q) in eps.iter().zip(&qps) {
                e.state.record_load_report_at(&report(*q, 0.5), t0);
            }
            let p = WeightedLeastUtilization::default();
            for k in 0..40 {
                match p.pick_at(&eps, t0 + secs(k)) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }

        #[test]
        fn share_follows_reported_weights(qps in prop::collection::vec(10.0..100.0f64, 2..8)) {
            let eps = endpoints(&vec![true; qps.len()]);
            let t0 = Instant::now();
            for (e, q) in eps.iter().zip(&qps) {
                e.state.record_load_report_at(&report(*q, 1.0), t0);
            }
            let p = WeightedLeastUtilization::default();
            let total: f64 = qps.iter().sum();
            for (s, q) in share_at(&p, &eps, t0 + secs(10)).iter().zip(&qps) {
                prop_assert!((s - q / total).abs() < 0.02 + q / total * 0.05, "got {} want {}", s, q / total);
            }
        }
    }
}
