//! Live traffic numbers per route target, for `/stats`, the dashboard and `switchyard top`:
//! cumulative counters and log-bucket histograms that the admin's sampler reads once a second
//! and turns into rates and quantiles over the last seconds.
//!
//! Prometheus has the same counts, but reading them back means encoding the whole registry, and
//! its few fixed buckets give a poor p99 over five seconds. These cost the request path one
//! relaxed add per number, on memory that lives as long as the route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_balance::head_latency::{log_bucket, log_bucket_start};

/// Four buckets per doubling from 50 µs (at most ~12% from a quantile's true value), the last
/// one open from ~92 s.
const BUCKETS: usize = 84;
const SUB: u32 = 2;

fn bucket(secs: f64) -> usize {
    log_bucket::<SUB>(secs, BUCKETS)
}

fn bucket_start(i: usize) -> f64 {
    log_bucket_start::<SUB>(i)
}

/// A histogram of seconds, in log-linear buckets.
pub struct LiveHistogram {
    buckets: [AtomicU64; BUCKETS],
}

// By hand: `Default` is derived for arrays of at most 32.
impl Default for LiveHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LiveHistogram {
    pub fn observe(&self, secs: f64) {
        self.buckets[bucket(secs)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot(std::array::from_fn(|i| {
            self.buckets[i].load(Ordering::Relaxed)
        }))
    }
}

/// Counts per bucket at one moment, or between two moments.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HistogramSnapshot([u64; BUCKETS]);

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self([0; BUCKETS])
    }
}

impl HistogramSnapshot {
    /// What was observed after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        Self(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile in seconds, interpolated within its bucket on a log scale (the buckets
    /// are geometric); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let (lo, hi) = (bucket_start(i), bucket_start(i + 1));
                // The first bucket holds everything under 50 µs: report its top; the last is
                // open: report its start.
                if i == 0 {
                    return Some(hi);
                }
                if i == BUCKETS - 1 {
                    return Some(lo);
                }
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lo * (hi / lo).powf(within));
            }
            below += n;
        }
        Some(bucket_start(BUCKETS - 1))
    }
}

/// Why the gateway refused a request itself, as the live numbers count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A sheddable request on a saturated pool.
    Shed,
    /// A rate limit.
    Limited,
    /// A circuit breaker, the concurrency limit or its queue.
    Overflow,
}

impl Refusal {
    /// The refusal a finished request's error type stands for.
    pub fn of(error: &str) -> Option<Refusal> {
        match error {
            "shed" => Some(Refusal::Shed),
            "rate_limit_exceeded" => Some(Refusal::Limited),
            "overflow" | "tenant_queue_full" => Some(Refusal::Overflow),
            _ => None,
        }
    }
}

/// One route target's live numbers.
#[derive(Default)]
pub struct LiveRoute {
    requests: AtomicU64,
    /// 5xx responses, the gateway's own included.
    errors: AtomicU64,
    duration: LiveHistogram,
    /// Streamed responses: request start to the first chunk, and between chunks.
    ttft: LiveHistogram,
    itl: LiveHistogram,
    output_tokens: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    shed: AtomicU64,
    limited: AtomicU64,
    overflow: AtomicU64,
    /// Requests routed here and not finished (a stream, until its last byte).
    in_flight: AtomicI64,
}

impl LiveRoute {
    /// A request was routed here.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request routed here finished (or was routed elsewhere).
    pub fn left(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests routed here and not yet finished.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// A finished exchange (no longer in flight).
    pub fn finished(
        &self,
        status: u16,
        elapsed: Duration,
        error: Option<&str>,
        retries: usize,
        hedged: bool,
    ) {
        self.left();
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(elapsed.as_secs_f64());
        if retries > 0 {
            self.retries.fetch_add(retries as u64, Ordering::Relaxed);
        }
        if hedged {
            self.hedges.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(refusal) = error.and_then(Refusal::of) {
            let counter = match refusal {
                Refusal::Shed => &self.shed,
                Refusal::Limited => &self.limited,
                Refusal::Overflow => &self.overflow,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn first_chunk(&self, secs: f64) {
        self.ttft.observe(secs);
    }

    pub fn chunk_gap(&self, secs: f64) {
        self.itl.observe(secs);
    }

    pub fn output_tokens(&self, n: u64) {
        self.output_tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RouteSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouteSnapshot {
            requests: load(&self.requests),
            errors: load(&self.errors),
            duration: self.duration.snapshot(),
            ttft: self.ttft.snapshot(),
            itl: self.itl.snapshot(),
            output_tokens: load(&self.output_tokens),
            retries: load(&self.retries),
            hedges: load(&self.hedges),
            shed: load(&self.shed),
            limited: load(&self.limited),
            overflow: load(&self.overflow),
        }
    }
}

/// A route target's counts at one moment (or between two, with [`RouteSnapshot::since`]).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct RouteSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub duration: HistogramSnapshot,
    pub ttft: HistogramSnapshot,
    pub itl: HistogramSnapshot,
    pub output_tokens: u64,
    pub retries: u64,
    pub hedges: u64,
    pub shed: u64,
    pub limited: u64,
    pub overflow: u64,
}

impl RouteSnapshot {
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            duration: self.duration.since(&earlier.duration),
            ttft: self.ttft.since(&earlier.ttft),
            itl: self.itl.since(&earlier.itl),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            retries: self.retries.saturating_sub(earlier.retries),
            hedges: self.hedges.saturating_sub(earlier.hedges),
            shed: self.shed.saturating_sub(earlier.shed),
            limited: self.limited.saturating_sub(earlier.limited),
            overflow: self.overflow.saturating_sub(earlier.overflow),
        }
    }

    /// Add another target's counts (a pool's numbers are the sum of its routes').
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (h, o) in [
            (&mut self.duration, &other.duration),
            (&mut self.ttft, &other.ttft),
            (&mut self.itl, &other.itl),
        ] {
            for (a, b) in h.0.iter_mut().zip(o.0.iter()) {
                *a += b;
            }
        }
        self.output_tokens += other.output_tokens;
        self.retries += other.retries;
        self.hedges += other.hedges;
        self.shed += other.shed;
        self.limited += other.limited;
        self.overflow += other.overflow;
    }
}

/// Every route target's live numbers, by (route, pool): kept across reloads, so a reload does
/// not reset the rates, and pruned to the targets of the current config.
#[derive(Default)]
pub struct LiveRegistry {
    routes: Mutex<HashMap<TargetKey, Arc<LiveRoute>>>,
}

/// (route, pool).
type TargetKey = (Box<str>, Box<str>);

impl LiveRegistry {
    pub fn route(&self, route: &str, pool: &str) -> Arc<LiveRoute> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry((route.into(), pool.into()))
            .or_default()
            .clone()
    }

    /// Forget targets no longer configured.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|(r, p), _| keep(r, p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_within_a_bucket_of_the_truth() {
        let h = LiveHistogram::default();
        for ms in 1..=1000 {
            h.observe(f64::from(ms) / 1000.0);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        for (q, want) in [
            (0.5, 0.5),
            (0.99, 0.99),
            (0.1, 0.1),
            (0.9, 0.9),
            (0.999, 0.999),
        ] {
            let got = s.quantile(q).unwrap();
            // Buckets are at most 25% wide; interpolation keeps the error inside one.
            assert!((got / want - 1.0).abs() < 0.15, "q{q}: {got} vs {want}");
        }
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        // Past the last edge: reported at it, never beyond.
        let h = LiveHistogram::default();
        h.observe(1e6);
        assert_eq!(h.snapshot().quantile(0.5), Some(bucket_start(BUCKETS - 1)));
        assert!(bucket_start(BUCKETS - 1) > 90.0);
    }

    #[test]
    fn since_counts_only_what_came_after() {
        let r = LiveRoute::default();
        r.finished(200, Duration::from_millis(10), None, 0, false);
        let before = r.snapshot();
        r.finished(503, Duration::from_millis(20), Some("shed"), 1, true);
        r.finished(
            429,
            Duration::from_millis(1),
            Some("rate_limit_exceeded"),
            0,
            false,
        );
        let d = r.snapshot().since(&before);
        assert_eq!(
            (d.requests, d.errors, d.retries, d.hedges, d.shed, d.limited),
            (2, 1, 1, 1, 1, 1)
        );
        assert_eq!(d.duration.count(), 2);
        // A reset (a snapshot older than the counts) never goes negative.
        assert_eq!(before.since(&r.snapshot()).requests, 0);
    }

    #[test]
    fn in_flight_counts_requests_between_routing_and_their_end() {
        let r = LiveRoute::default();
        r.started();
        r.started();
        r.left();
        assert_eq!(r.in_flight(), 1);
        r.left();
        r.left();
        assert_eq!(r.in_flight(), 0, "never below zero");
    }

    #[test]
    fn a_pool_sums_its_routes() {
        let (a, b) = (LiveRoute::default(), LiveRoute::default());
        a.finished(200, Duration::from_millis(5), None, 0, false);
        b.finished(500, Duration::from_millis(5), None, 0, false);
        let mut sum = a.snapshot();
        sum.add(&b.snapshot());
        assert_eq!((sum.requests, sum.errors, sum.duration.count()), (2, 1, 2));
    }

    #[test]
    fn the_registry_keeps_a_target_across_lookups_until_pruned() {
        let reg = LiveRegistry::default();
        let a = reg.route("chat", "llama");
        assert!(Arc::ptr_eq(&a, &reg.route("chat", "llama")));
        reg.retain(|r, _| r != "chat");
        assert!(!Arc::ptr_eq(&a, &reg.route("chat", "llama")));
    }
}
