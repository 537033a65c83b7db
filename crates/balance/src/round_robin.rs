//! Round robin: each available endpoint in turn. The cursor is one atomic, so concurrent picks
//! on many threads stay cheap and fair.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoint::Endpoint;
use crate::picker::Picker;

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Picker for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| endpoints[i].is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::endpoints;
    use proptest::prelude::*;

    #[test]
    fn cycles_evenly() {
        let eps = endpoints(&[true, true, true]);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&eps).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20), n in 1usize..50) {
            let eps = endpoints(&health);
            let rr = RoundRobin::default();
            for _ in 0..n {
                match rr.pick(&eps) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }
    }
}
