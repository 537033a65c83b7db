//! A lock-free latency histogram over a recent window, for percentile estimates on the hot path.
//!
//! Buckets are log-linear, as in HdrHistogram: each power of two of microseconds is split into
//! 16 linear sub-buckets, so any estimate is within 1/16 (6.25%) of the true value while the
//! whole range, 1µs to two minutes, fits in 384 counters. Recording is two relaxed atomic adds.
//!
//! "Recent" is two alternating slots of `window` each: a sample goes to the slot of the current
//! epoch, and a quantile reads the current and previous slot, so it reflects the last one to two
//! windows. The first recorder of a new epoch claims the stale slot and clears it; a sample
//! racing with that clear can be lost, which only blurs an estimate that is approximate anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked: 2^27 µs ≈ 134 s; longer samples count as the maximum.
const MAX_EXP: u32 = 26;
const BUCKETS: usize = (SUB + (MAX_EXP as u64 - SUB_BITS as u64 + 1) * SUB) as usize;
const NO_EPOCH: u64 = u64::MAX;

fn bucket(us: u64) -> usize {
    let us = us.min((1 << (MAX_EXP + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let shift = exp - SUB_BITS;
    (SUB + u64::from(shift) * SUB + ((us >> shift) - SUB)) as usize
}

/// The middle of a bucket, in microseconds.
fn bucket_mid(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let shift = (idx - SUB) / SUB;
    let sub = (idx - SUB) % SUB;
    ((SUB + sub) << shift) + ((1 << shift) >> 1)
}

#[derive(Debug)]
struct Slot {
    epoch: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            epoch: AtomicU64::new(NO_EPOCH),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Latency distribution of the last one to two `window`s.
#[derive(Debug)]
pub struct LatencyHistogram {
    origin: Instant,
    window: Duration,
    slots: [Slot; 2],
}

impl LatencyHistogram {
    pub fn new(window: Duration) -> LatencyHistogram {
        LatencyHistogram {
            origin: Instant::now(),
            window: window.max(Duration::from_millis(1)),
            slots: [Slot::new(), Slot::new()],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.window.as_nanos()) as u64
    }

    /// Records one sample taken at `now`.
    pub fn record(&self, latency: Duration, now: Instant) {
        let epoch = self.epoch(now);
        let slot = &self.slots[(epoch % 2) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn live_slots(&self, now: Instant) -> impl Iterator<Item = &Slot> {
        let epoch = self.epoch(now);
        self.slots.iter().filter(move |s| {
            let e = s.epoch.load(Ordering::Acquire);
            e == epoch || e.checked_add(1) == Some(epoch)
        })
    }

    /// Samples in the live window at `now`.
    pub fn count(&self, now: Instant) -> u64 {
        self.live_slots(now)
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// The `q` quantile (0.0..=1.0) of the live window, or `None` without samples.
    pub fn quantile(&self, q: f64, now: Instant) -> Option<Duration> {
        let mut merged = [0u64; BUCKETS];
        for slot in self.live_slots(now) {
            for (m, b) in merged.iter_mut().zip(slot.buckets.iter()) {
                *m += b.load(Ordering::Relaxed);
            }
        }
        let total: u64 = merged.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let idx = merged.iter().position(|&n| {
            seen += n;
            seen >= rank
        })?;
        Some(Duration::from_micros(bucket_mid(idx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..2_000_000u64).step_by(7) {
            let b = bucket(us);
            assert!(b >= last && b < BUCKETS);
            last = b;
            let mid = bucket_mid(b) as f64;
            assert!(
                (mid - us as f64).abs() <= (us as f64 / 16.0).max(1.0),
                "{us} -> {mid}"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_of_a_known_distribution() {
        let h = LatencyHistogram::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(h.quantile(0.5, now), None);
        // 1..=1000 ms, shuffled.
        let mut rng = fastrand::Rng::with_seed(3);
        let mut ms: Vec<u64> = (1..=1000).collect();
        rng.shuffle(&mut ms);
        for m in ms {
            h.record(Duration::from_millis(m), now);
        }
        assert_eq!(h.count(now), 1000);
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q, now).unwrap().as_secs_f64() * 1000.0;
            assert!((got - want).abs() / want < 0.07, "p{q}: {got}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn old_windows_age_out() {
        let window = Duration::from_secs(1);
        let h = LatencyHistogram::new(window);
        for _ in 0..100 {
            h.record(Duration::from_millis(100), Instant::now());
        }
        tokio::time::advance(window).await;
        // One window later the old samples still count...
        assert_eq!(h.count(Instant::now()), 100);
        for _ in 0..100 {
            h.record(Duration::from_millis(10), Instant::now());
        }
        assert_eq!(h.count(Instant::now()), 200);
        tokio::time::advance(window).await;
        // ...two windows later only the newer ones do.
        assert_eq!(h.count(Instant::now()), 100);
        let p95 = h.quantile(0.95, Instant::now()).unwrap();
        assert!(p95 < Duration::from_millis(11), "{p95:?}");
        tokio::time::advance(window * 2).await;
        assert_eq!(h.quantile(0.5, Instant::now()), None);
    }
}
