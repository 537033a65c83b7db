//! How many retries the fleet can afford right now: a budget, not a per-request count.
//!
//! A per-request limit (`attempts: 3`) is the wrong safety valve. It is harmless when one
//! request in a thousand fails, and it is exactly wrong when the upstream is overloaded and
//! *every* request fails: each client request then turns into three upstream requests, the
//! overload triples, and the retries keep the upstream from ever recovering. Finagle's
//! `RetryBudget` and Envoy's `retry_budget` both answer this by bounding retries *relative to
//! the traffic they ride on*, so that retries can add at most a fixed fraction of load no matter
//! how many requests fail. (tower's `retry::budget` makes the same argument.)
//!
//! This follows Envoy's concurrency form: a retry may start while
//!
//! ```text
//! active_retries < max(min_concurrency, ratio × active_requests)
//! ```
//!
//! With the defaults (`ratio: 0.2`, `min_concurrency: 3`), a quiet route can still retry a few
//! sporadic failures, and a busy one retries at most one in five of its in-flight requests.
//! Counting in-flight work instead of a rate (Finagle deposits tokens per request) needs no
//! clock and no window, and it reacts instantly when load drops.
//!
//! Counts are plain atomics with RAII guards ([`RequestGuard`], [`RetryGuard`]), so a request
//! future dropped midway (client gone, timeout) still gives its counts back. A [`RetryGuard`]
//! should be taken before the backoff sleep and held until that retry attempt ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Envoy's default `budget_percent` (20%).
pub const DEFAULT_RATIO: f64 = 0.2;
/// Envoy's default `min_retry_concurrency`.
pub const DEFAULT_MIN_CONCURRENCY: u32 = 3;

/// A retry budget shared by the requests of one route; cheap to clone.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ratio: f64,
    min_concurrency: u32,
    active_requests: AtomicU32,
    active_retries: AtomicU32,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

/// A snapshot of a budget's counters, for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetStats {
    pub active_requests: u32,
    pub active_retries: u32,
    /// Retries the budget allows in flight right now.
    pub allowed: u32,
    /// Retries granted since start.
    pub retries: u64,
    /// Retries refused because the budget was spent.
    pub exhausted: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(DEFAULT_RATIO, DEFAULT_MIN_CONCURRENCY)
    }
}

impl RetryBudget {
    /// A budget of `ratio` (0.2 = 20%) of active requests, never below `min_concurrency`.
    pub fn new(ratio: f64, min_concurrency: u32) -> RetryBudget {
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        RetryBudget {
            inner: Arc::new(Inner {
                ratio,
                min_concurrency,
                active_requests: AtomicU32::new(0),
                active_retries: AtomicU32::new(0),
                retries: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a request as active until the guard drops. Take it at admission, for the whole
    /// downstream request (not per attempt).
    pub fn start_request(&self) -> RequestGuard {
        self.inner.active_requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            inner: self.inner.clone(),
        }
    }

    /// A retry slot, or `None` (counted as exhausted) when the budget is spent.
    pub fn try_acquire_retry(&self) -> Option<RetryGuard> {
        let inner = &self.inner;
        let mut current = inner.active_retries.load(Ordering::Acquire);
        loop {
            if current >= inner.allowed() {
                inner.exhausted.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match inner.active_retries.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        inner.retries.fetch_add(1, Ordering::Relaxed);
        Some(RetryGuard {
            inner: self.inner.clone(),
        })
    }

    pub fn stats(&self) -> RetryBudgetStats {
        let i = &self.inner;
        RetryBudgetStats {
            active_requests: i.active_requests.load(Ordering::Acquire),
            active_retries: i.active_retries.load(Ordering::Acquire),
            allowed: i.allowed(),
            retries: i.retries.load(Ordering::Relaxed),
            exhausted: i.exhausted.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn allowed(&self) -> u32 {
        let active = self.active_requests.load(Ordering::Acquire);
        let by_ratio = (self.ratio * f64::from(active)) as u32;
        by_ratio.max(self.min_concurrency)
    }
}

/// Keeps one request counted as active; releases on drop.
#[derive(Debug)]
pub struct RequestGuard {
    inner: Arc<Inner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.inner.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps one retry counted as active; releases on drop.
#[derive(Debug)]
pub struct RetryGuard {
    inner: Arc<Inner>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.inner.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn min_concurrency_at_low_load() {
        let b = RetryBudget::default();
        let _r = b.start_request();
        let retries: Vec<_> = (0..3).map(|_| b.try_acquire_retry().unwrap()).collect();
        assert!(b.try_acquire_retry().is_none());
        let s = b.stats();
        assert_eq!(
            (s.active_retries, s.allowed, s.retries, s.exhausted),
            (3, 3, 3, 1)
        );
        drop(retries);
        assert_eq!(b.stats().active_retries, 0);
        assert!(b.try_acquire_retry().is_some());
    }

    #[test]
    fn ratio_of_active_requests_at_high_load() {
        let b = RetryBudget::default();
        let mut requests: Vec<_> = (0..100).map(|_| b.start_request()).collect();
        let retries: Vec<_> = std::iter::from_fn(|| b.try_acquire_retry()).collect();
        assert_eq!(retries.len(), 20);
        // Load drops: no new retries until the active ones fall below the new allowance.
        drop(requests.split_off(50));
        assert_eq!(b.stats().allowed, 10);
        assert!(b.try_acquire_retry().is_none());
        drop(retries);
        assert_eq!(b.stats().active_retries, 0);
        assert_eq!(b.stats().active_requests, 50);
    }

    #[test]
    fn guards_release_on_drop_across_clones() {
        let b = RetryBudget::new(0.5, 0);
        let other = b.clone();
        let r1 = other.start_request();
        let r2 = b.start_request();
        let g = b.try_acquire_retry().unwrap();
        assert!(other.try_acquire_retry().is_none());
        drop((r1, r2, g));
        let s = b.stats();
        assert_eq!((s.active_requests, s.active_retries), (0, 0));
    }

    #[test]
    fn zero_budget_never_retries_and_bad_ratio_is_zero() {
        let b = RetryBudget::new(f64::NAN, 0);
        let _r: Vec<_> = (0..10).map(|_| b.start_request()).collect();
        assert!(b.try_acquire_retry().is_none());
        assert_eq!(b.stats().exhausted, 1);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_budget() {
        let b = RetryBudget::new(0.0, 8);
        let granted = AtomicU32::new(0);
        let all_tried = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut held = Vec::new();
                    for _ in 0..100 {
                        if let Some(g) = b.try_acquire_retry() {
                            assert!(b.stats().active_retries <= 8);
                            held.push(g);
                        }
                    }
                    granted.fetch_add(held.len() as u32, Ordering::Relaxed);
                    // Hold the guards until every thread has tried.
                    all_tried.wait();
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 8);
        assert_eq!(b.stats().active_retries, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start,
        End(usize),
        Retry,
        Done(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Start),
            1 => any::<usize>().prop_map(Op::End),
            3 => Just(Op::Retry),
            1 => any::<usize>().prop_map(Op::Done),
        ]
    }

    proptest! {
        /// Every granted retry keeps `active_retries <= max(min, ratio × active_requests)`,
        /// a refusal happens only when the budget is spent, and all counts return to zero.
        #[test]
        fn budget_invariant(
            ratio in 0.0f64..1.0,
            min in 0u32..5,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let b = RetryBudget::new(ratio, min);
            let mut requests = Vec::new();
            let mut retries = Vec::new();
            for op in ops {
                match op {
                    Op::Start => requests.push(b.start_request()),
                    Op::End(i) if !requests.is_empty() => {
                        requests.swap_remove(i % requests.len());
                    }
                    Op::Done(i) if !retries.is_empty() => {
                        retries.swap_remove(i % retries.len());
                    }
                    Op::Retry => {
                        let allowed = ((ratio * requests.len() as f64) as u32).max(min);
                        match b.try_acquire_retry() {
                            Some(g) => {
                                retries.push(g);
                                prop_assert!(retries.len() as u32 <= allowed);
                            }
                            None => prop_assert!(retries.len() as u32 >= allowed),
                        }
                    }
                    _ => {}
                }
                let s = b.stats();
                prop_assert_eq!(s.active_requests as usize, requests.len());
                prop_assert_eq!(s.active_retries as usize, retries.len());
            }
            drop((requests, retries));
            let s = b.stats();
            prop_assert_eq!((s.active_requests, s.active_retries), (0, 0));
        }
    }
}
