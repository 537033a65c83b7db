//! The last ORCA load report an endpoint sent, kept as atomics so the proxy can record it from
//! any response and the `weighted_least_utilization` picker can read it without locks.
//!
//! The weight follows gRFC A58 (gRPC's weighted round robin): `qps / (utilization + eps/qps ×
//! error_penalty)`, ignored during a blackout after the first report (one report is noise) and
//! after an expiration since the last one (a silent endpoint's old numbers are no longer true).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::orca::LoadReport;

#[derive(Debug, Default)]
pub(crate) struct ReportedLoad {
    utilization: AtomicU64,
    qps: AtomicU64,
    eps: AtomicU64,
    /// Nanoseconds since the owner's epoch plus one, zero meaning never.
    last_update: AtomicU64,
    non_empty_since: AtomicU64,
}

/// The A58 knobs that turn a report into a weight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightPolicy {
    pub blackout: Duration,
    pub expiration: Duration,
    pub error_penalty: f64,
}

impl ReportedLoad {
    /// Store a report received `at`. Reports without both a positive qps and a positive
    /// utilization carry no weight and are ignored, as in A58. Returns whether it was kept.
    pub(crate) fn record(&self, report: &LoadReport, at: u64) -> bool {
        let qps = report.rps_fractional;
        let util = report.utilization();
        if !(qps > 0.0 && util > 0.0 && qps.is_finite() && util.is_finite()) {
            return false;
        }
        let eps = if report.eps.is_finite() && report.eps > 0.0 {
            report.eps
        } else {
            0.0
        };
        self.utilization.store(util.to_bits(), Ordering::Relaxed);
        self.qps.store(qps.to_bits(), Ordering::Relaxed);
        self.eps.store(eps.to_bits(), Ordering::Relaxed);
        let _ =
            self.non_empty_since
                .compare_exchange(0, at + 1, Ordering::Relaxed, Ordering::Relaxed);
        self.last_update.fetch_max(at + 1, Ordering::Relaxed);
        true
    }

    /// The last report kept: (utilization, qps, eps), or `None` before any.
    pub(crate) fn last(&self) -> Option<(f64, f64, f64)> {
        if self.last_update.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        Some((f(&self.utilization), f(&self.qps), f(&self.eps)))
    }

    /// The last utilization reported at or after `oldest` (same clock as `record`).
    pub(crate) fn utilization_since(&self, oldest: u64) -> Option<f64> {
        let last = self.last_update.load(Ordering::Relaxed);
        (last != 0 && last > oldest)
            .then(|| f64::from_bits(self.utilization.load(Ordering::Relaxed)))
    }

    /// The usable weight `at`, or `None` when there is no report, it is still in blackout, or it
    /// has expired (which also restarts the blackout for the next report).
    pub(crate) fn weight(&self, at: u64, policy: &WeightPolicy) -> Option<f64> {
        let last = self.last_update.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        if u128::from(at.saturating_sub(last - 1)) >= policy.expiration.as_nanos() {
            self.non_empty_since.store(0, Ordering::Relaxed);
            return None;
        }
        let since = self.non_empty_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let blackout = policy.blackout.as_nanos();
        if blackout > 0 && u128::from(at.saturating_sub(since - 1)) < blackout {
            return None;
        }
        let qps = f64::from_bits(self.qps.load(Ordering::Relaxed));
        let util = f64::from_bits(self.utilization.load(Ordering::Relaxed));
        let eps = f64::from_bits(self.eps.load(Ordering::Relaxed));
        let penalty = if policy.error_penalty > 0.0 && eps > 0.0 {
            eps / qps * policy.error_penalty
        } else {
            0.0
        };
        let w = qps / (util + penalty);
        (w.is_finite() && w > 0.0).then_some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn report(qps: f64, cpu: f64, eps: f64) -> LoadReport {
        LoadReport {
            cpu_utilization: cpu,
            rps_fractional: qps,
            eps,
            ..LoadReport::default()
        }
    }

    fn policy() -> WeightPolicy {
        WeightPolicy {
            blackout: Duration::from_secs(10),
            expiration: Duration::from_secs(180),
            error_penalty: 1.0,
        }
    }

    #[test]
    fn blackout_then_weight_then_expiry() {
        let r = ReportedLoad::default();
        assert!(r.record(&report(100.0, 0.5, 0.0), 0));
        assert_eq!(r.weight(5 * S, &policy()), None, "in blackout");
        assert!(r.record(&report(100.0, 0.5, 0.0), 9 * S));
        assert_eq!(r.weight(10 * S, &policy()), Some(200.0));
        assert_eq!(r.weight(9 * S + 180 * S, &policy()), None, "expired");
        // Reports after expiry start a new blackout.
        assert!(r.record(&report(100.0, 0.5, 0.0), 200 * S));
        assert_eq!(r.weight(201 * S, &policy()), None);
        assert_eq!(r.weight(210 * S, &policy()), Some(200.0));
    }

    #[test]
    fn errors_cost_weight_and_app_utilization_wins() {
        let r = ReportedLoad::default();
        let mut rep = report(100.0, 0.9, 10.0);
        rep.application_utilization = 0.4;
        r.record(&rep, 0);
        // 100 / (0.4 + 10/100 × 1.0) = 200
        let w = r.weight(20 * S, &policy()).unwrap();
        assert!((w - 200.0).abs() < 1e-9, "{w}");
    }

    #[test]
    fn empty_reports_are_ignored() {
        let r = ReportedLoad::default();
        assert!(!r.record(&report(0.0, 0.5, 0.0), 0));
        assert!(!r.record(&report(10.0, 0.0, 0.0), 0));
        assert_eq!(r.weight(100 * S, &policy()), None);
    }
}
