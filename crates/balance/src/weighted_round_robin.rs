//! Weighted round robin over the configured endpoint weights. Where nginx's smooth weighted
//! round robin keeps a current-weight counter per endpoint under a lock, this uses gRPC's static
//! stride scheduler ([`crate::stride`]): the same interleaved, exactly proportional sequence on
//! a single thread, and lock-free under concurrency. Weights are rescaled over the available
//! endpoints on each pick, so an unhealthy heavy endpoint never stalls the schedule.

use std::sync::atomic::AtomicU64;

use crate::endpoint::Endpoint;
use crate::picker::Picker;
use crate::stride;

#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    seq: AtomicU64,
}

impl Picker for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        let mut best = None;
        let mut max = 0;
        for (i, e) in endpoints.iter().enumerate() {
            let w = e.weight.max(1);
            if e.is_available() && w > max {
                (best, max) = (Some(i), w);
            }
        }
        let best = best?;
        let max = f64::from(max);
        stride::pick(&self.seq, endpoints, |i| {
            stride::scale(f64::from(endpoints[i].weight.max(1)), max)
        })
        .or(Some(best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{endpoints, shares, weighted};
    use proptest::prelude::*;

    #[test]
    fn interleaves_in_proportion() {
        let eps = weighted(&[5, 1, 1]);
        let wrr = WeightedRoundRobin::default();
        let picks: Vec<_> = (0..7000).map(|_| wrr.pick(&eps).unwrap()).collect();
        let s = shares(&picks, 3);
        assert!((s[0] - 5.0 / 7.0).abs() < 0.01, "{s:?}");
        // Smooth: the heavy endpoint never gets a long run to itself.
        let longest = picks.chunk_by(|a, b| a == b).map(<[usize]>::len).max();
        assert!(longest <= Some(6), "{longest:?}");
    }

    #[test]
    fn unhealthy_heavy_endpoint_does_not_stall() {
        let eps = weighted(&[1000, 1, 1]);
        eps[0].state.set_healthy(false);
        let wrr = WeightedRoundRobin::default();
        let picks: Vec<_> = (0..1000).map(|_| wrr.pick(&eps).unwrap()).collect();
        let s = shares(&picks, 3);
        assert!(s[0] == 0.0 && (s[1] - 0.5).abs() < 0.05, "{s:?}");
    }

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20)) {
            let eps = endpoints(&health);
            let wrr = WeightedRoundRobin::default();
            for _ in 0..50 {
                match wrr.pick(&eps) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }

        #[test]
        fn share_follows_weights(ws in prop::collection::vec(1u32..20, 1..12)) {
            let eps = weighted(&ws);
            let wrr = WeightedRoundRobin::default();
            let total: u32 = ws.iter().sum();
            let picks: Vec<_> = (0..total as usize * 200).map(|_| wrr.pick(&eps).unwrap()).collect();
            for (i, s) in shares(&picks, ws.len()).iter().enumerate() {
                let want = f64::from(ws[i]) / f64::from(total);
                prop_assert!((s - want).abs() < 0.02 + want * 0.05, "endpoint {} got {} want {}", i, s, want);
            }
        }
    }
}
