//! Uniform random choice among available endpoints: no shared cursor at all, the baseline that
//! every smarter picker must beat.

use crate::endpoint::Endpoint;
use crate::picker::Picker;

#[derive(Debug, Default)]
pub struct Random;

impl Picker for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let i = fastrand::usize(..n);
        if endpoints[i].is_available() {
            return Some(i);
        }
        // Rare path: scan from a random start so unhealthy endpoints don't skew the choice.
        (1..n)
            .map(|k| (i + k) % n)
            .find(|&j| endpoints[j].is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::endpoints;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_picks_unavailable(health in prop::collection::vec(any::<bool>(), 0..20)) {
            let eps = endpoints(&health);
            for _ in 0..20 {
                match Random.pick(&eps) {
                    Some(i) => prop_assert!(eps[i].is_available()),
                    None => prop_assert!(health.iter().all(|h| !h)),
                }
            }
        }
    }

    #[test]
    fn spreads_roughly_evenly() {
        let eps = endpoints(&[true; 4]);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[Random.pick(&eps).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
