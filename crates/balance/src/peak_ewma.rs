//! Power of two choices on peak-EWMA latency × (in-flight + 1), the load metric of Finagle's and
//! Linkerd's `PeakEwma` balancer. Latency alone herds onto whichever endpoint was fast a moment
//! ago; in-flight alone ignores that one endpoint may be ten times slower. Their product
//! estimates how long a new request would wait, and the peak-sensitive average reacts to a
//! slowdown on the first slow response while trusting a recovery only gradually.
//!
//! An endpoint with no samples is costed at `default_rtt`, so new endpoints are probed rather
//! than flooded (cost 0) or starved (cost ∞). Estimates decay toward zero while an endpoint gets
//! no traffic, so one that was slow once is retried eventually. Costs are divided by weight.

use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use crate::picker::Picker;
use crate::select::random_pair;

pub use crate::latency::DEFAULT_DECAY;

/// Latency assumed for an endpoint with no samples.
pub const DEFAULT_RTT: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct PeakEwma {
    decay: Duration,
    default_rtt_ns: f64,
}

impl PeakEwma {
    pub fn new(decay: Duration, default_rtt: Duration) -> Self {
        Self {
            decay,
            default_rtt_ns: default_rtt.as_nanos() as f64,
        }
    }

    fn cost(&self, e: &Endpoint, now: Instant) -> f64 {
        e.state.set_latency_decay(self.decay);
        let rtt = e.state.latency_ns_at(now).unwrap_or(self.default_rtt_ns);
        rtt * (e.state.in_flight() + 1) as f64 / f64::from(e.weight.max(1))
    }

    /// [`Picker::pick`] at an explicit time, for tests.
    pub fn pick_at(&self, endpoints: &[Endpoint], now: Instant) -> Option<usize> {
        let (a, b) = random_pair(endpoints)?;
        if a == b {
            return Some(a);
        }
        Some(
            if self.cost(&endpoints[b], now) < self.cost(&endpoints[a], now) {
                b
            } else {
                a
            },
        )
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(DEFAULT_DECAY, DEFAULT_RTT)
    }
}

impl Picker for PeakEwma {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        self.pick_at(endpoints, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{endpoints, shares};
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn prefers_the_fast_endpoint() {
        let eps = endpoints(&[true, true]);
        let t0 = Instant::now();
        eps[0].state.record_latency_at(ms(50), t0);
        eps[1].state.record_latency_at(ms(5), t0);
        let p = PeakEwma::default();
        assert!((0..100).all(|_| p.pick_at(&eps, t0) == Some(1)));
    }

    #[test]
    fn in_flight_offsets_latency() {
        // 10 ms with 1 in flight (cost 20) beats 2 ms with 19 in flight (cost 40).
        let eps = endpoints(&[true, true]);
        let t0 = Instant::now();
        eps[0].state.record_latency_at(ms(10), t0);
        eps[1].state.record_latency_at(ms(2), t0);
        let _a = eps[0].state.begin();
        let _b: Vec<_> = (0..19).map(|_| eps[1].state.begin()).collect();
        assert_eq!(PeakEwma::default().pick_at(&eps, t0), Some(0));
    }

    #[test]
    fn unsampled_endpoint_is_probed_and_slow_one_recovers() {
        let eps = endpoints(&[true, true]);
        let t0 = Instant::now();
        let p = PeakEwma::new(Duration::from_secs(1), ms(5));
        eps[0].state.record_latency_at(ms(1), t0);
        // Unsampled (5 ms default) loses to 1 ms, but wins against a 100 ms peak.
        assert_eq!(p.pick_at(&eps, t0), Some(0));
        eps[0].state.record_latency_at(ms(100), t0);
        assert_eq!(p.pick_at(&eps, t0), Some(1));
        eps[1].state.record_latency_at(ms(20), t0);
        // Without traffic the 100 ms peak decays below the 20 ms one being sampled again.
        let later = t0 + Duration::from_secs(3);
        eps[1].state.record_latency_at(ms(20), later);
        assert_eq!(p.pick_at(&eps, later), Some(0));
    }

    #[test]
    fn spreads_over_equal_endpoints() {
        let eps = endpoints(&[true; 4]);
        let p = PeakEwma::default();
        let picks: Vec<_> = (0..4000).map(|_| p.pick(&eps).unwrap()).collect();
        assert!(shares(&picks, 4).iter().all(|s| (s - 0.25).abs() < 0.04));
    }

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20), rtts in prop::collection::vec(0u64..1000, 20)) {
            let eps = endpoints(&health);
            let t0 = Instant::now();
            for (e, r) in eps.iter().zip(&rtts) {
                if r % 3 != 0 {
                    e.state.record_latency_at(ms(*r), t0);
                }
            }
            let p = PeakEwma::default();
            for _ in 0..30 {
                match p.pick_at(&eps, t0) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }

        #[test]
        fn never_picks_the_costlier_of_a_pair(r0 in 1u64..100, r1 in 1u64..100, f0 in 0u32..5, f1 in 0u32..5) {
            let eps = endpoints(&[true, true]);
            let t0 = Instant::now();
            eps[0].state.record_latency_at(ms(r0), t0);
            eps[1].state.record_latency_at(ms(r1), t0);
            let _g0: Vec<_> = (0..f0).map(|_| eps[0].state.begin()).collect();
            let _g1: Vec<_> = (0..f1).map(|_| eps[1].state.begin()).collect();
            let (c0, c1) = (r0 * u64::from(f0 + 1), r1 * u64::from(f1 + 1));
            let i = PeakEwma::default().pick_at(&eps, t0).unwrap();
            let ok = if i == 0 { c0 <= c1 } else { c1 <= c0 };
            prop_assert!(ok, "picked {} with costs {} and {}", i, c0, c1);
        }
    }
}
