//! Time to the response head, per endpoint, for two readers that run once an interval: latency
//! outlier detection (is this endpoint slower than its peers?) and adaptive per-try timeouts
//! (how long do this pool's attempts usually take?). The request path only adds: one bucket
//! increment when an attempt ends, and a count and a start-time sum while it waits, so an
//! endpoint that holds its requests without answering shows up before they finish. A 10× slow
//! replica under least-request gets few requests and finishes fewer; what it holds is the
//! evidence.
//!
//! Two classes, because mixing them compares unlike things: attempts whose head comes at once
//! (a stream's head, most HTTP) in seconds, and attempts whose head waits for a whole generation
//! (a non-streamed completion that says `max_tokens`) in seconds per requested token.
//!
//! Buckets are logarithmic (two per doubling from 50 µs, the last one open), so a median or a
//! p99 is read to within one bucket (±25%), which is all a factor-of-three outlier test or a
//! timeout needs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Two buckets per doubling from 50 µs: the last one starts at ~26 s and is open.
pub const BUCKETS: usize = 40;
const BASE_SECS: f64 = 50e-6;

/// How an attempt's head latency is measured: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadClass {
    /// The head comes before the work (streams) or with small work: seconds.
    Immediate = 0,
    /// The head comes with a whole generation: seconds per requested output token.
    PerToken = 1,
}

impl HeadClass {
    pub const ALL: [HeadClass; 2] = [HeadClass::Immediate, HeadClass::PerToken];

    /// The class of a request and its size (the divisor of its latency).
    pub fn of(whole_generation_tokens: Option<u32>) -> (HeadClass, u32) {
        match whole_generation_tokens {
            Some(t) if t > 0 => (HeadClass::PerToken, t),
            _ => (HeadClass::Immediate, 1),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HeadClass::Immediate => "head",
            HeadClass::PerToken => "per_token",
        }
    }
}

/// The bucket of `secs`: read off the float's bits (the exponent is the doubling, the top
/// mantissa bit the half of it), because a logarithm per attempt cost ~50 instructions of the
/// request path.
pub fn bucket(secs: f64) -> usize {
    log_bucket::<1>(secs, BUCKETS)
}

/// Where bucket `i` starts: 2^(i/2) × (1 or 1.5) × 50 µs.
pub fn bucket_start(i: usize) -> f64 {
    log_bucket_start::<1>(i)
}

/// Log-linear buckets from 50 µs: each doubling split into 2^`SUB` equal parts, read off the
/// float's exponent and top `SUB` mantissa bits; the last of `buckets` is open.
pub fn log_bucket<const SUB: u32>(secs: f64, buckets: usize) -> usize {
    let x = secs / BASE_SECS;
    if x.is_nan() || x <= 1.0 {
        return 0;
    }
    let bits = x.to_bits();
    let doubling = ((bits >> 52) & 0x7ff).saturating_sub(1023);
    let part = (bits >> (52 - SUB)) & ((1 << SUB) - 1);
    usize::try_from((doubling << SUB) + part)
        .unwrap_or(usize::MAX)
        .min(buckets - 1)
}

/// Where bucket `i` of [`log_bucket`] starts: 2^(i / 2^SUB) × (1 + part / 2^SUB) × 50 µs.
pub fn log_bucket_start<const SUB: u32>(i: usize) -> f64 {
    let doubling = BASE_SECS * (1u64 << (i >> SUB).min(62)) as f64;
    let part = (i & ((1 << SUB) - 1)) as f64;
    doubling * (1.0 + part / f64::from(1u32 << SUB))
}

/// The value a bucket stands for: the geometric middle of its edges.
pub fn bucket_value(i: usize) -> f64 {
    (bucket_start(i) * bucket_start(i + 1)).sqrt()
}

#[derive(Debug)]
struct ClassRecorder {
    buckets: [AtomicU32; BUCKETS],
    waiting: AtomicU64,
    /// Sum of the waiting attempts' start times (µs since the endpoint's epoch).
    waiting_since: AtomicU64,
    /// Sum of the waiting attempts' sizes.
    waiting_size: AtomicU64,
}

// By hand: `Default` is derived for arrays of at most 32.
impl Default for ClassRecorder {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            waiting: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            waiting_size: AtomicU64::new(0),
        }
    }
}

impl Default for ClassWindow {
    fn default() -> Self {
        Self {
            finished: [0; BUCKETS],
            waiting: 0,
            waiting_age: 0.0,
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            classes: [[0.0; BUCKETS]; 2],
        }
    }
}

/// One endpoint's recorder (inside `EndpointState`).
#[derive(Debug, Default)]
pub struct HeadRecorder {
    classes: [ClassRecorder; 2],
}

/// An attempt waiting for its head: what to take back from the waiting sums when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    class: HeadClass,
    size: u32,
    since_us: u64,
}

impl HeadRecorder {
    pub(crate) fn wait(&self, class: HeadClass, size: u32, since_us: u64) -> Waiting {
        let c = &self.classes[class as usize];
        c.waiting.fetch_add(1, Ordering::Relaxed);
        c.waiting_since.fetch_add(since_us, Ordering::Relaxed);
        c.waiting_size.fetch_add(u64::from(size), Ordering::Relaxed);
        Waiting {
            class,
            size,
            since_us,
        }
    }

    /// The attempt stopped waiting; with its latency when it ended rather than was dropped.
    pub(crate) fn end(&self, w: Waiting, latency: Option<Duration>) {
        let c = &self.classes[w.class as usize];
        c.waiting.fetch_sub(1, Ordering::Relaxed);
        c.waiting_since.fetch_sub(w.since_us, Ordering::Relaxed);
        c.waiting_size
            .fetch_sub(u64::from(w.size), Ordering::Relaxed);
        if let Some(l) = latency {
            let secs = l.as_secs_f64() / f64::from(w.size.max(1));
            c.buckets[bucket(secs)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the interval's finished attempts (the buckets start again at zero) and read the
    /// waiting ones at `now_us`.
    pub(crate) fn take(&self, now_us: u64) -> HeadWindow {
        let mut w = HeadWindow::default();
        for (i, c) in self.classes.iter().enumerate() {
            let out = &mut w.classes[i];
            for (b, n) in c.buckets.iter().zip(out.finished.iter_mut()) {
                *n = b.swap(0, Ordering::Relaxed);
            }
            let waiting = c.waiting.load(Ordering::Relaxed);
            let since = c.waiting_since.load(Ordering::Relaxed);
            let size = c.waiting_size.load(Ordering::Relaxed).max(1);
            out.waiting = u32::try_from(waiting).unwrap_or(u32::MAX);
            // The three sums are read one after another, so they may disagree by an attempt
            // that started or ended between the reads: clamp rather than trust.
            let age_us = waiting.saturating_mul(now_us).saturating_sub(since);
            out.waiting_age = if waiting == 0 {
                0.0
            } else {
                age_us as f64 / 1e6 / size as f64
            };
        }
        w
    }
}

/// One class of one endpoint over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassWindow {
    pub finished: [u32; BUCKETS],
    /// Attempts still waiting for their head at the end of the interval.
    pub waiting: u32,
    /// Their mean age so far (in the class's unit), a lower bound of their latency.
    pub waiting_age: f64,
}

impl ClassWindow {
    /// Attempts that say something about the endpoint: finished, or waiting for their head.
    pub fn samples(&self) -> u64 {
        self.finished.iter().map(|&n| u64::from(n)).sum::<u64>() + u64::from(self.waiting)
    }

    /// The median latency (in the class's unit) over finished attempts and waiting ones (each
    /// counted at the waiting attempts' mean age). A median, not a mean: one long request (a
    /// long poll, a huge generation) among many says nothing about the endpoint.
    pub fn median(&self) -> Option<f64> {
        let total = self.samples();
        if total == 0 {
            return None;
        }
        let mut counts = self.finished.map(u64::from);
        counts[bucket(self.waiting_age)] += u64::from(self.waiting);
        let half = total.div_ceil(2);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= half {
                return Some(bucket_value(i));
            }
        }
        None
    }
}

/// One endpoint over an interval, both classes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeadWindow {
    pub classes: [ClassWindow; 2],
}

impl HeadWindow {
    pub fn class(&self, class: HeadClass) -> &ClassWindow {
        &self.classes[class as usize]
    }

    /// A window with these finished latencies in `class`, for tests and tools.
    pub fn from_latencies(class: HeadClass, latencies: &[f64]) -> Self {
        let mut w = Self::default();
        for &l in latencies {
            w.classes[class as usize].finished[bucket(l)] += 1;
        }
        w
    }
}

/// A pool's recent head latencies (finished attempts only), decayed by an eighth a second (a
/// half-life of about five seconds) so the last seconds weigh most and a pool of a few requests
/// a second still has enough: what adaptive per-try timeouts read.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    classes: [[f64; BUCKETS]; 2],
}

/// Fewer recent attempts than this and the pool's latency is not known well enough to time
/// attempts by it.
pub const MIN_QUANTILE_SAMPLES: f64 = 20.0;

const DECAY_PER_SECOND: f64 = 0.875;

impl LatencyHistogram {
    /// Decay what was there by `elapsed` and add an interval's finished attempts.
    pub fn decay_and_add<'a>(
        &mut self,
        elapsed: Duration,
        windows: impl IntoIterator<Item = &'a HeadWindow>,
    ) {
        let keep = DECAY_PER_SECOND.powf(elapsed.as_secs_f64());
        for class in &mut self.classes {
            for v in class.iter_mut() {
                *v *= keep;
            }
        }
        for w in windows {
            for (class, cw) in self.classes.iter_mut().zip(w.classes.iter()) {
                for (v, &n) in class.iter_mut().zip(cw.finished.iter()) {
                    *v += f64::from(n);
                }
            }
        }
    }

    /// The `q` quantile (0–1) of `class`, the upper edge of its bucket (a timeout should err
    /// long), or `None` with too few samples.
    pub fn quantile(&self, class: HeadClass, q: f64) -> Option<f64> {
        let counts = &self.classes[class as usize];
        let total: f64 = counts.iter().sum();
        if total < MIN_QUANTILE_SAMPLES {
            return None;
        }
        let want = total * q.clamp(0.0, 1.0);
        let mut seen = 0.0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(bucket_start(i + 1));
            }
        }
        Some(bucket_start(BUCKETS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finer_buckets_agree_with_their_edges() {
        for i in 1..80 {
            let start = log_bucket_start::<2>(i);
            assert_eq!(log_bucket::<2>(start * 1.0001, 84), i, "above {i}'s start");
            assert_eq!(
                log_bucket::<2>(log_bucket_start::<2>(i + 1) * 0.9999, 84),
                i
            );
            assert!(log_bucket_start::<2>(i + 1) / start <= 1.25 + 1e-9);
        }
        assert_eq!(log_bucket::<2>(1e9, 84), 83);
    }

    #[test]
    fn bucket_edges_agree_with_the_bit_reading() {
        for i in 0..BUCKETS - 1 {
            let start = bucket_start(i);
            assert_eq!(bucket(start * 1.0001), i, "just above bucket {i}'s start");
            assert_eq!(
                bucket(bucket_start(i + 1) * 0.9999),
                i,
                "just below bucket {}",
                i + 1
            );
        }
    }

    #[test]
    fn buckets_cover_50us_to_tens_of_seconds_in_order() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e9), BUCKETS - 1);
        let mut last = 0;
        for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
            let b = bucket(ms / 1000.0);
            assert!(b > last, "{ms} ms in bucket {b}");
            let v = bucket_value(b);
            assert!((v / (ms / 1000.0) - 1.0).abs() < 0.5, "{ms} ms reads {v}");
            last = b;
        }
    }

    #[test]
    fn the_median_counts_waiting_attempts_and_ignores_one_long_request() {
        let mut lat = vec![0.1; 20];
        lat.push(30.0);
        let w = HeadWindow::from_latencies(HeadClass::Immediate, &lat);
        let m = w.class(HeadClass::Immediate).median().unwrap();
        assert!((0.08..0.13).contains(&m), "{m}");
        // Four finished slowly, six still waiting at 0.8 s on average: the endpoint is slow.
        let mut w = HeadWindow::from_latencies(HeadClass::Immediate, &[1.5; 4]);
        w.classes[0].waiting = 6;
        w.classes[0].waiting_age = 0.8;
        assert_eq!(w.class(HeadClass::Immediate).samples(), 10);
        assert!(w.class(HeadClass::Immediate).median().unwrap() > 0.6);
        assert_eq!(w.class(HeadClass::PerToken).median(), None);
    }

    #[test]
    fn the_recorder_tracks_waiting_attempts_and_sizes() {
        let r = HeadRecorder::default();
        let a = r.wait(HeadClass::PerToken, 100, 1_000_000);
        let b = r.wait(HeadClass::PerToken, 100, 2_000_000);
        let w = r.take(3_000_000);
        let c = w.class(HeadClass::PerToken);
        assert_eq!(c.waiting, 2);
        // Ages 2 s and 1 s over 200 tokens: 15 ms per token.
        assert!((c.waiting_age - 0.015).abs() < 1e-9, "{}", c.waiting_age);
        r.end(a, Some(Duration::from_secs(2)));
        r.end(b, None);
        let w = r.take(3_000_000);
        let c = w.class(HeadClass::PerToken);
        assert_eq!((c.waiting, c.samples()), (0, 1));
        assert!((c.median().unwrap() / 0.02 - 1.0).abs() < 0.3);
        // Taken: the next interval starts empty.
        assert_eq!(r.take(4_000_000).class(HeadClass::PerToken).samples(), 0);
    }

    #[test]
    fn the_pool_histogram_decays_and_needs_enough_samples() {
        let mut h = LatencyHistogram::default();
        let few = HeadWindow::from_latencies(HeadClass::Immediate, &[0.1; 10]);
        let second = Duration::from_secs(1);
        h.decay_and_add(second, [&few]);
        assert_eq!(h.quantile(HeadClass::Immediate, 0.99), None);
        let mut lat = vec![0.1; 99];
        lat.push(0.5);
        let many = HeadWindow::from_latencies(HeadClass::Immediate, &lat);
        h.decay_and_add(second, [&many]);
        let p50 = h.quantile(HeadClass::Immediate, 0.5).unwrap();
        let p99 = h.quantile(HeadClass::Immediate, 0.99).unwrap();
        assert!((0.1..0.16).contains(&p50), "{p50}");
        assert!(p99 >= p50);
        for _ in 0..40 {
            h.decay_and_add(second, std::iter::empty());
        }
        assert_eq!(
            h.quantile(HeadClass::Immediate, 0.5),
            None,
            "old samples fade"
        );
    }
}
