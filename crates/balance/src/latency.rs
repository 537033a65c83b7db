//! Peak-EWMA latency, after Finagle's `PeakEwma` and Linkerd/tower's `peak_ewma`: a sample above
//! the estimate replaces it at once (so a slowdown is seen on the first slow response), a lower
//! sample pulls the estimate down with weight `1 - exp(-elapsed/τ)` (so recovery is believed only
//! gradually). Readers see the estimate decayed toward zero since the last sample, so an endpoint
//! that was slow once and then starved of traffic is eventually probed again; a sample starts
//! from that decayed value, so a fast response can never raise the estimate.
//!
//! Lock-free: the estimate is f64 bits in an `AtomicU64` updated by compare-and-swap, next to the
//! sample time. The pair is not updated atomically together; a reader racing a writer may decay
//! a fresh estimate from a slightly older stamp, which only errs toward probing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The default time constant τ, as in Linkerd.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// Estimate in nanoseconds, as f64 bits.
    estimate_ns: AtomicU64,
    /// Nanoseconds since the owner's epoch at the last sample, plus one; zero means no sample.
    stamp: AtomicU64,
    /// τ in nanoseconds, as f64 bits.
    decay_ns: AtomicU64,
}

impl PeakEwma {
    pub(crate) fn new() -> Self {
        Self {
            estimate_ns: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            decay_ns: AtomicU64::new((DEFAULT_DECAY.as_nanos() as f64).to_bits()),
        }
    }

    pub(crate) fn set_decay(&self, tau: Duration) {
        let bits = (tau.as_nanos().max(1) as f64).to_bits();
        if self.decay_ns.load(Ordering::Relaxed) != bits {
            self.decay_ns.store(bits, Ordering::Relaxed);
        }
    }

    fn decay_ns(&self) -> f64 {
        f64::from_bits(self.decay_ns.load(Ordering::Relaxed))
    }

    /// Fold in one sample of `rtt`, taken `at` (nanoseconds since the epoch).
    pub(crate) fn observe(&self, rtt: Duration, at: u64) {
        let rtt = rtt.as_nanos() as f64;
        let last = self.stamp.load(Ordering::Relaxed);
        let elapsed = if last == 0 {
            f64::INFINITY
        } else {
            at.saturating_sub(last - 1) as f64
        };
        let w = (-elapsed / self.decay_ns()).exp();
        let _ = self
            .estimate_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                // The estimate as readers see it now (decayed toward zero), then the sample.
                let cur = f64::from_bits(bits) * w;
                let next = if rtt > cur || last == 0 {
                    rtt
                } else {
                    cur * w + rtt * (1.0 - w)
                };
                Some(next.to_bits())
            });
        self.stamp.fetch_max(at + 1, Ordering::Relaxed);
    }

    /// The estimate in nanoseconds as seen `at`, or `None` before the first sample.
    pub(crate) fn get(&self, at: u64) -> Option<f64> {
        let last = self.stamp.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let est = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let elapsed = at.saturating_sub(last - 1) as f64;
        Some(est * (-elapsed / self.decay_ns()).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_sample_no_estimate() {
        assert_eq!(PeakEwma::new().get(0), None);
    }

    #[test]
    fn peak_jumps_then_decays_toward_lower_samples() {
        let e = PeakEwma::new();
        e.observe(ms(10), 0);
        e.observe(ms(100), 1);
        assert!((e.get(1).unwrap() - 100.0 * MS as f64).abs() < 1e3);
        // One τ later the estimate has decayed to 100/e, and a 10 ms sample pulls that
        // 1 - 1/e of the way down to 10 ms.
        let seen = e.get(10_000 * MS + 1).unwrap() / MS as f64;
        assert!((seen - 100.0 / std::f64::consts::E).abs() < 0.01, "{seen}");
        e.observe(ms(10), 10_000 * MS + 1);
        let w = (-1f64).exp();
        let want = seen * w + 10.0 * (1.0 - w);
        assert!(want < seen);
        let got = e.get(10_000 * MS + 1).unwrap() / MS as f64;
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
    }

    #[test]
    fn steady_samples_hold_the_estimate() {
        let e = PeakEwma::new();
        for i in 0..1000 {
            e.observe(ms(10), i * 10 * MS);
        }
        let got = e.get(10_000 * MS).unwrap() / MS as f64;
        assert!((got - 10.0).abs() < 0.1, "{got}");
    }

    #[test]
    fn reads_decay_toward_zero_without_samples() {
        let e = PeakEwma::new();
        e.set_decay(Duration::from_secs(1));
        e.observe(ms(100), 0);
        let later = e.get(5_000 * MS).unwrap();
        assert!(later < 100.0 * MS as f64 * 0.01, "{later}");
    }

    proptest! {
        #[test]
        fn estimate_stays_between_zero_and_the_peak(samples in prop::collection::vec((0u64..1000, 0u64..20_000), 1..50)) {
            let e = PeakEwma::new();
            let mut t = 0;
            for (rtt, dt) in samples {
                t += dt * MS;
                let before = e.get(t).unwrap_or(0.0);
                e.observe(ms(rtt), t);
                let after = e.get(t).unwrap();
                let rtt = (rtt * MS) as f64;
                prop_assert!(after >= 0.0);
                // A sample above what readers saw becomes the estimate; one below never raises it.
                if rtt > before {
                    prop_assert!((after - rtt).abs() < 1.0);
                } else {
                    prop_assert!(after <= before + 1.0 && after >= rtt - 1.0);
                }
            }
        }
    }
}
