//! Least request by the power of d choices (Mitzenmacher; Envoy's and Linkerd's default): sample
//! d endpoints at random and take the one with the fewest in-flight requests per unit of weight.
//! Two choices already cut the maximum load exponentially versus one, with no shared state and
//! none of the herding that "global least loaded" causes when every proxy sees the same minimum.
//!
//! The cost is `(in_flight + 1) / weight`: the `+ 1` (as in Envoy's `weight / (active + 1)`)
//! makes weights count even when everything is idle. With equal weights this is plain P2C.
//! Weights bias the choice within each sampled pair, so a heavy endpoint's share is capped by
//! how often it is sampled (about d/N): use `weighted_round_robin` for exact proportions.

use crate::endpoint::Endpoint;
use crate::picker::Picker;
use crate::select::{random_available, random_pair};

/// Default number of choices.
pub const DEFAULT_CHOICES: u32 = 2;

#[derive(Debug)]
pub struct LeastRequest {
    choices: u32,
}

impl LeastRequest {
    pub fn new(choices: u32) -> Self {
        Self {
            choices: choices.max(1),
        }
    }
}

impl Default for LeastRequest {
    fn default() -> Self {
        Self::new(DEFAULT_CHOICES)
    }
}

/// Whether `a` carries less load per unit of weight than `b`.
#[inline]
fn lighter(a: &Endpoint, b: &Endpoint) -> bool {
    let la = u128::from(a.state.in_flight() + 1) * u128::from(b.weight.max(1));
    let lb = u128::from(b.state.in_flight() + 1) * u128::from(a.weight.max(1));
    la < lb
}

impl Picker for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        if self.choices == 2 {
            let (a, b) = random_pair(endpoints)?;
            return Some(if lighter(&endpoints[b], &endpoints[a]) {
                b
            } else {
                a
            });
        }
        let mut best = random_available(endpoints)?;
        for _ in 1..self.choices {
            let j = fastrand::usize(..endpoints.len());
            if endpoints[j].is_available() && lighter(&endpoints[j], &endpoints[best]) {
                best = j;
            }
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{endpoints, shares, weighted};
    use proptest::prelude::*;

    #[test]
    fn avoids_the_busy_endpoint() {
        let eps = endpoints(&[true, true]);
        let _busy: Vec<_> = (0..10).map(|_| eps[0].state.begin()).collect();
        let lr = LeastRequest::default();
        assert!((0..100).all(|_| lr.pick(&eps) == Some(1)));
    }

    #[test]
    fn holds_in_flight_level_under_recorded_picks() {
        let eps = endpoints(&[true; 16]);
        let lr = LeastRequest::default();
        let guards: Vec<_> = (0..1600)
            .map(|_| eps[lr.pick(&eps).unwrap()].state.begin())
            .collect();
        let max = eps.iter().map(|e| e.state.in_flight()).max().unwrap();
        // P2C keeps the maximum within a few of the mean (100) with high probability.
        assert!(max <= 110, "max in flight {max}");
        drop(guards);
    }

    #[test]
    fn weight_counts_when_idle_and_busy() {
        let eps = weighted(&[3, 1]);
        let lr = LeastRequest::default();
        let mut guards = Vec::new();
        let mut picks = Vec::new();
        for _ in 0..400 {
            let i = lr.pick(&eps).unwrap();
            picks.push(i);
            guards.push(eps[i].state.begin());
        }
        let s = shares(&picks, 2);
        assert!((s[0] - 0.75).abs() < 0.03, "{s:?}");
    }

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20), d in 1u32..5) {
            let eps = endpoints(&health);
            let lr = LeastRequest::new(d);
            for _ in 0..30 {
                match lr.pick(&eps) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }

        #[test]
        fn heavier_endpoints_carry_more(ws in prop::collection::vec(1u32..6, 2..8)) {
            // With every pick held open, a heavier endpoint ends with at least as many in
            // flight as a lighter one (less a little noise). Exact proportions are out of
            // reach for P2C: an endpoint is only a candidate in ~2/N of draws.
            let eps = weighted(&ws);
            let lr = LeastRequest::default();
            let total: u32 = ws.iter().sum();
            let guards: Vec<_> = (0..total * 100).map(|_| eps[lr.pick(&eps).unwrap()].state.begin()).collect();
            for (a, wa) in eps.iter().zip(&ws) {
                for (b, wb) in eps.iter().zip(&ws) {
                    if wa > wb {
                        prop_assert!(a.state.in_flight() + 10 >= b.state.in_flight(), "weight {} has {}, weight {} has {}", wa, a.state.in_flight(), wb, b.state.in_flight());
                    }
                }
            }
            drop(guards);
        }

        #[test]
        fn equal_weights_stay_level(n in 2usize..16) {
            let eps = endpoints(&vec![true; n]);
            let lr = LeastRequest::default();
            let guards: Vec<_> = (0..n * 50).map(|_| eps[lr.pick(&eps).unwrap()].state.begin()).collect();
            let max = eps.iter().map(|e| e.state.in_flight()).max().unwrap();
            let min = eps.iter().map(|e| e.state.in_flight()).min().unwrap();
            prop_assert!(max - min <= 12, "spread {}..{}", min, max);
            drop(guards);
        }
    }
}
