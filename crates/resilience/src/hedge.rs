//! Hedged requests: when the first attempt is slower than most, send a second one to another
//! endpoint and take whichever answers first.
//!
//! Dean and Barroso, "The Tail at Scale" (CACM 2013): deferring the hedge until the first
//! attempt has been outstanding longer than the 95th-percentile latency cuts the tail sharply
//! while adding only about 5% load, because only the slowest requests ever hedge. A fixed
//! `delay` is simpler and fine when the latency profile is known.
//!
//! Hedging trades load for latency, so it has its own budget, separate from retries: each
//! request earns `budget_percent`% of a hedge, and a hedge spends a whole one (a token bucket
//! filled by traffic, as in Finagle's `RetryBudget` and gRPC's hedging throttle). Over any
//! stretch of traffic, hedges stay under `budget_percent`% of requests plus a small burst, so an
//! upstream that slows down for everyone cannot make every request double.
//!
//! The race itself belongs to the proxy: it starts attempt one, sleeps [`Hedger::delay`], and if
//! the first attempt has not produced response headers by then and
//! [`Hedger::try_acquire_hedge`] grants a hedge, it sends attempt two to an endpoint not in the
//! request's [`crate::TriedSet`]. The first attempt to return response headers wins and is
//! streamed downstream; the other is dropped, which resets its stream or closes its HTTP/1
//! connection. Only replayable requests (see [`crate::replayable`]) can hedge, and non-idempotent
//! routes should not enable it. The winner's latency goes to [`Hedger::record_latency`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::latency_histogram::LatencyHistogram;

/// Units of budget one hedge costs; one request earns `budget_percent × 1000` of them.
const HEDGE_COST: u64 = 100_000;

/// When to send the hedge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After a fixed time.
    Fixed(Duration),
    /// After the route's observed latency at this percentile (e.g. 95.0).
    Percentile(f64),
}

/// A route's hedging settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeParams {
    pub delay: HedgeDelay,
    /// Hedges allowed per 100 requests.
    pub budget_percent: f64,
    /// Hedges that may be saved up while traffic does not need them.
    pub burst: u32,
    /// Latency window the percentile is computed over (one to two of these).
    pub window: Duration,
    /// Samples needed before a percentile delay is trusted; before that, no hedging.
    pub min_samples: u64,
}

impl HedgeParams {
    /// Defaults around a delay: 10% budget, burst of 10, 10 s window, 100 samples.
    pub fn new(delay: HedgeDelay) -> HedgeParams {
        HedgeParams {
            delay,
            budget_percent: 10.0,
            burst: 10,
            window: Duration::from_secs(10),
            min_samples: 100,
        }
    }
}

/// One route's hedging state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hedger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    params: HedgeParams,
    deposit: u64,
    max_balance: u64,
    balance: AtomicU64,
    latency: LatencyHistogram,
    requests: AtomicU64,
    hedges: AtomicU64,
    exhausted: AtomicU64,
    active: AtomicU32,
}

impl Hedger {
    pub fn new(params: HedgeParams) -> Hedger {
        let pct = if params.budget_percent.is_finite() {
            params.budget_percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        Hedger {
            inner: Arc::new(Inner {
                params,
                deposit: (pct * 1000.0).round() as u64,
                max_balance: HEDGE_COST * u64::from(params.burst.max(1)),
                balance: AtomicU64::new(0),
                latency: LatencyHistogram::new(params.window),
                requests: AtomicU64::new(0),
                hedges: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
                active: AtomicU32::new(0),
            }),
        }
    }

    /// Counts a request toward the hedge budget; call once per downstream request.
    pub fn start_request(&self) {
        let i = &self.inner;
        i.requests.fetch_add(1, Ordering::Relaxed);
        let _ = i
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + i.deposit).min(i.max_balance))
            });
    }

    /// How long to wait before hedging, or `None` not to hedge (a percentile without enough
    /// samples yet). The budget is checked later, by [`Hedger::try_acquire_hedge`], so requests
    /// that finish before the delay never spend it.
    pub fn delay(&self) -> Option<Duration> {
        match self.inner.params.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(p) => {
                let now = Instant::now();
                if self.inner.latency.count(now) < self.inner.params.min_samples {
                    return None;
                }
                self.inner.latency.quantile(p / 100.0, now)
            }
        }
    }

    /// Records the latency (to response headers) of a request's winning attempt.
    pub fn record_latency(&self, latency: Duration) {
        self.inner.latency.record(latency, Instant::now());
    }

    /// Spends one hedge from the budget, or `None` (counted) when it is empty.
    pub fn try_acquire_hedge(&self) -> Option<HedgeGuard> {
        let i = &self.inner;
        let spent = i
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_sub(HEDGE_COST)
            });
        if spent.is_err() {
            i.exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        i.hedges.fetch_add(1, Ordering::Relaxed);
        i.active.fetch_add(1, Ordering::AcqRel);
        Some(HedgeGuard {
            inner: self.inner.clone(),
        })
    }

    pub fn stats(&self) -> HedgeStats {
        let i = &self.inner;
        HedgeStats {
            requests: i.requests.load(Ordering::Relaxed),
            hedges: i.hedges.load(Ordering::Relaxed),
            exhausted: i.exhausted.load(Ordering::Relaxed),
            active: i.active.load(Ordering::Acquire),
        }
    }
}

/// A snapshot of a hedger's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeStats {
    /// Requests counted toward the budget.
    pub requests: u64,
    /// Hedges sent.
    pub hedges: u64,
    /// Hedges refused because the budget was spent.
    pub exhausted: u64,
    /// Hedges in flight.
    pub active: u32,
}

/// A hedge in flight; hold it for the hedge attempt's lifetime.
#[derive(Debug)]
pub struct HedgeGuard {
    inner: Arc<Inner>,
}

impl Drop for HedgeGuard {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_hedges_at_the_percentage() {
        let h = Hedger::new(HedgeParams::new(HedgeDelay::Fixed(Duration::from_millis(
            50,
        ))));
        assert_eq!(h.delay(), Some(Duration::from_millis(50)));
        let mut hedges = 0;
        for _ in 0..1000 {
            h.start_request();
            // Every request wants to hedge; only one in ten may.
            hedges += usize::from(h.try_acquire_hedge().is_some());
        }
        assert_eq!(hedges, 100);
        let s = h.stats();
        assert_eq!(
            (s.requests, s.hedges, s.exhausted, s.active),
            (1000, 100, 900, 0)
        );
    }

    #[test]
    fn idle_savings_are_capped_by_burst() {
        let mut p = HedgeParams::new(HedgeDelay::Fixed(Duration::from_millis(5)));
        p.budget_percent = 50.0;
        p.burst = 3;
        let h = Hedger::new(p);
        for _ in 0..100 {
            h.start_request();
        }
        let guards: Vec<_> = std::iter::from_fn(|| h.try_acquire_hedge()).collect();
        assert_eq!(guards.len(), 3);
        assert_eq!(h.stats().active, 3);
        drop(guards);
        assert_eq!(h.stats().active, 0);
    }

    #[test]
    fn zero_or_invalid_budget_never_hedges() {
        for pct in [0.0, f64::NAN] {
            let mut p = HedgeParams::new(HedgeDelay::Fixed(Duration::ZERO));
            p.budget_percent = pct;
            let h = Hedger::new(p);
            for _ in 0..1000 {
                h.start_request();
            }
            assert!(h.try_acquire_hedge().is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_delay_tracks_observed_latency() {
        let h = Hedger::new(HedgeParams::new(HedgeDelay::Percentile(95.0)));
        let mut rng = fastrand::Rng::with_seed(11);
        // Not enough samples: no hedging yet.
        for _ in 0..99 {
            h.record_latency(Duration::from_millis(rng.u64(10..=110)));
        }
        assert_eq!(h.delay(), None);
        for _ in 0..901 {
            h.record_latency(Duration::from_millis(rng.u64(10..=110)));
        }
        // Uniform 10..=110 ms: p95 is 105 ms.
        let d = h.delay().unwrap().as_secs_f64() * 1000.0;
        assert!((d - 105.0).abs() < 105.0 * 0.07, "{d}");

        // The upstream gets slower; after the window turns over the delay follows it.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(h.delay(), None);
        for _ in 0..1000 {
            h.record_latency(Duration::from_millis(rng.u64(200..=400)));
        }
        let d = h.delay().unwrap().as_secs_f64() * 1000.0;
        assert!((d - 390.0).abs() < 390.0 * 0.07, "{d}");
    }
}
