//! Panic mode, after Envoy's "panic threshold": when fewer than `threshold` percent of a pool's
//! endpoints are available (healthy and not ejected), route to all of them.
//!
//! Why: health checks and outlier detection are themselves fallible. A network blip towards the
//! probers, or a bad deploy that makes every endpoint fail, would otherwise concentrate the whole
//! load on the one or two endpoints still marked available and take them down too. Past the
//! threshold, spreading load over endpoints of unknown health does less harm than overloading
//! the few known-good ones. The proxy exports [`PanicMode::is_active`] as a gauge and
//! [`PanicMode::panic_picks`] as a counter so operators see when this happens.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether a pool of `total` endpoints with `available` of them usable is in panic at
/// `threshold_percent` (0 turns panic mode off).
pub fn in_panic(total: usize, available: usize, threshold_percent: u32) -> bool {
    total > 0 && (available as u128) * 100 < (total as u128) * u128::from(threshold_percent)
}

/// The endpoints a picker may choose from, by index into the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibleSet {
    bits: Vec<u64>,
    len: usize,
    /// The pool was in panic: every endpoint is eligible.
    pub panic: bool,
}

impl EligibleSet {
    pub fn contains(&self, index: usize) -> bool {
        index < self.len && self.bits[index / 64] & (1 << (index % 64)) != 0
    }

    /// Number of eligible endpoints.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Indices of eligible endpoints, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }
}

/// Panic mode state for one pool.
#[derive(Debug)]
pub struct PanicMode {
    threshold_percent: u32,
    active: AtomicBool,
    panic_picks: AtomicU64,
}

impl PanicMode {
    pub fn new(threshold_percent: u32) -> Self {
        Self {
            threshold_percent,
            active: AtomicBool::new(false),
            panic_picks: AtomicU64::new(0),
        }
    }

    pub fn threshold_percent(&self) -> u32 {
        self.threshold_percent
    }

    /// Decide, for one pick, which of `len` endpoints are eligible given whether each is
    /// available. In panic every endpoint is eligible and the pick is counted.
    pub fn select(&self, len: usize, available: impl Fn(usize) -> bool) -> EligibleSet {
        let mut bits = vec![0u64; len.div_ceil(64)];
        let mut count = 0;
        for i in 0..len {
            if available(i) {
                bits[i / 64] |= 1 << (i % 64);
                count += 1;
            }
        }
        let panic = in_panic(len, count, self.threshold_percent);
        self.active.store(panic, Ordering::Relaxed);
        if panic {
            self.panic_picks.fetch_add(1, Ordering::Relaxed);
            for (w, word) in bits.iter_mut().enumerate() {
                let remaining = len - w * 64;
                *word = if remaining >= 64 {
                    u64::MAX
                } else {
                    (1 << remaining) - 1
                };
            }
        }
        EligibleSet { bits, len, panic }
    }

    /// Whether the last pick found the pool in panic (export as a gauge).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Picks made in panic so far (export as a counter, like Envoy's `lb_healthy_panic`).
    pub fn panic_picks(&self) -> u64 {
        self.panic_picks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_a_strict_lower_bound() {
        assert!(!in_panic(10, 5, 50), "exactly half available is not panic");
        assert!(in_panic(10, 4, 50));
        assert!(in_panic(3, 1, 50));
        assert!(!in_panic(3, 2, 50));
        assert!(!in_panic(10, 0, 0), "threshold 0 turns panic off");
        assert!(in_panic(10, 9, 100));
        assert!(
            !in_panic(0, 0, 50),
            "an empty pool has nothing to panic over"
        );
    }

    #[test]
    fn select_filters_or_panics() {
        let mode = PanicMode::new(50);
        let healthy = mode.select(4, |i| i != 1);
        assert!(!healthy.panic);
        assert_eq!(healthy.iter().collect::<Vec<_>>(), [0, 2, 3]);
        assert!(!mode.is_active());
        assert_eq!(mode.panic_picks(), 0);

        let panicked = mode.select(70, |i| i < 10);
        assert!(panicked.panic);
        assert_eq!(panicked.count(), 70);
        assert!(panicked.contains(69) && !panicked.contains(70));
        assert!(mode.is_active());
        assert_eq!(mode.panic_picks(), 1);

        mode.select(70, |_| true);
        assert!(!mode.is_active(), "the gauge follows the latest pick");
        assert_eq!(mode.panic_picks(), 1);
    }

    #[test]
    fn nothing_available_and_no_panic_means_nothing_eligible() {
        let mode = PanicMode::new(0);
        let set = mode.select(3, |_| false);
        assert!(!set.panic);
        assert_eq!(set.count(), 0);
    }

    proptest::proptest! {
        /// Outside panic the eligible set is exactly the available endpoints; in panic it is all
        /// of them. Either way an available endpoint is never excluded.
        #[test]
        fn eligible_is_available_or_everything(
            available in proptest::collection::vec(proptest::bool::ANY, 0..150),
            threshold in 0u32..=100,
        ) {
            let set = PanicMode::new(threshold).select(available.len(), |i| available[i]);
            let up = available.iter().filter(|a| **a).count();
            proptest::prop_assert_eq!(set.panic, in_panic(available.len(), up, threshold));
            for (i, &a) in available.iter().enumerate() {
                proptest::prop_assert_eq!(set.contains(i), a || set.panic);
            }
            proptest::prop_assert!(!set.contains(available.len()));
        }
    }
}
