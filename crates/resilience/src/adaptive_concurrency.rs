//! Envoy's gradient controller: find how much concurrency an upstream takes before latency
//! rises, and keep the limit there.
//!
//! Little's law says that past the point where an upstream is saturated, more concurrency buys
//! no throughput, only queueing delay. The controller watches that delay directly: it compares
//! the latency of recent requests (`sampleRTT`, the median over a `sample_window`) with the
//! latency of the upstream when it is not queueing (`minRTT`), and moves the limit by the ratio
//! (Envoy `adaptive_concurrency` filter; Netflix `concurrency-limits` `Gradient2Limit`):
//!
//! ```text
//! gradient  = clamp((minRTT + buffer) / sampleRTT, 0.5, 2.0)     buffer = 25% of minRTT
//! new_limit = clamp(limit × gradient + sqrt(limit), min_limit, max_limit)
//! ```
//!
//! While latency stays near minRTT the gradient is above 1 and the `sqrt(limit)` headroom lets
//! the limit grow; when requests start to queue, sampleRTT rises, the gradient drops below 1 and
//! the limit shrinks, at most by half per window.
//!
//! `minRTT` cannot be observed while the upstream is busy, so every `min_rtt_interval` (jittered
//! by up to 15%, so that gateways sharing an upstream do not all measure at once) the controller
//! drops the limit to `min_limit` and takes the median of the next `min_rtt_samples` requests as
//! the new minRTT, then restores the limit it had. It starts in that phase. Only requests that
//! started after the drop count: those admitted before it still carry the old queueing delay.
//!
//! The controller is a plain state machine over `(now, rtt)` samples; the
//! [`crate::ConcurrencyLimiter`] feeds it and applies the limits it returns.

use std::time::Duration;

use tokio::time::Instant;

/// The controller's settings, with Envoy's defaults where Envoy has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientParams {
    pub min_limit: u32,
    pub max_limit: u32,
    /// How often the limit is recomputed from the samples of the last window.
    pub sample_window: Duration,
    /// How often minRTT is measured again.
    pub min_rtt_interval: Duration,
    /// Requests whose median becomes the new minRTT.
    pub min_rtt_samples: usize,
    /// Fraction of minRTT tolerated as natural jitter before the limit shrinks.
    pub buffer: f64,
    /// Up to this fraction of `min_rtt_interval` is added at random to each interval.
    pub jitter: f64,
}

impl Default for GradientParams {
    fn default() -> Self {
        GradientParams {
            min_limit: 3,
            max_limit: 1000,
            sample_window: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_samples: 50,
            buffer: 0.25,
            jitter: 0.15,
        }
    }
}

/// Samples kept per window; beyond this the median of what was kept is good enough.
const MAX_SAMPLES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Measuring minRTT at `min_limit` from requests started at or after `since`; `restore` is
    /// the limit to return to.
    MinRtt { restore: u32, since: Instant },
    /// Adjusting the limit each window.
    Gradient,
}

/// The gradient controller's state.
#[derive(Debug)]
pub struct Gradient {
    params: GradientParams,
    phase: Phase,
    limit: u32,
    min_rtt: Option<Duration>,
    samples: Vec<Duration>,
    window_start: Instant,
    next_min_rtt: Instant,
    rng: fastrand::Rng,
}

impl Gradient {
    pub fn new(params: GradientParams, now: Instant) -> Gradient {
        Gradient::with_rng(params, now, fastrand::Rng::new())
    }

    /// As `new`, with a seeded generator for the jitter.
    pub fn with_rng(params: GradientParams, now: Instant, rng: fastrand::Rng) -> Gradient {
        let min_limit = params.min_limit.max(1);
        let params = GradientParams {
            min_limit,
            max_limit: params.max_limit.max(min_limit),
            min_rtt_samples: params.min_rtt_samples.max(1),
            ..params
        };
        Gradient {
            phase: Phase::MinRtt {
                restore: min_limit,
                since: now,
            },
            limit: min_limit,
            min_rtt: None,
            samples: Vec::new(),
            window_start: now,
            next_min_rtt: now,
            rng,
            params,
        }
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The last measured minRTT.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Records one request that started at `started` and finished (its RTT sample) at `now`.
    /// Returns the new limit when it changed.
    pub fn on_sample(&mut self, started: Instant, now: Instant) -> Option<u32> {
        let before = self.limit;
        if let Phase::MinRtt { since, .. } = self.phase {
            if started < since {
                return None;
            }
        }
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(now.saturating_duration_since(started));
        }
        match self.phase {
            Phase::MinRtt { restore, .. } => {
                if self.samples.len() >= self.params.min_rtt_samples {
                    self.min_rtt = Some(median(&mut self.samples));
                    self.samples.clear();
                    self.limit = restore;
                    self.phase = Phase::Gradient;
                    self.window_start = now;
                    self.schedule_min_rtt(now);
                }
            }
            Phase::Gradient => {
                if now >= self.next_min_rtt {
                    self.phase = Phase::MinRtt {
                        restore: self.limit,
                        since: now,
                    };
                    self.limit = self.params.min_limit;
                    self.samples.clear();
                } else if now.saturating_duration_since(self.window_start)
                    >= self.params.sample_window
                {
                    let sample_rtt = median(&mut self.samples);
                    self.samples.clear();
                    self.window_start = now;
                    self.limit = self.next_limit(sample_rtt);
                }
            }
        }
        (self.limit != before).then_some(self.limit)
    }

    fn next_limit(&self, sample_rtt: Duration) -> u32 {
        let Some(min_rtt) = self.min_rtt else {
            return self.limit;
        };
        let target = min_rtt.as_secs_f64() * (1.0 + self.params.buffer);
        let sample = sample_rtt.as_secs_f64().max(1e-9);
        let gradient = (target / sample).clamp(0.5, 2.0);
        let limit = f64::from(self.limit);
        let next = (limit * gradient + limit.sqrt()).round();
        (next as u32).clamp(self.params.min_limit, self.params.max_limit)
    }

    fn schedule_min_rtt(&mut self, now: Instant) {
        let jitter = self
            .params
            .min_rtt_interval
            .mul_f64(self.params.jitter * self.rng.f64());
        self.next_min_rtt = now + self.params.min_rtt_interval + jitter;
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mid = samples.len() / 2;
    *samples.select_nth_unstable(mid).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn params() -> GradientParams {
        GradientParams {
            min_rtt_samples: 10,
            ..GradientParams::default()
        }
    }

    /// Feeds `n` windows of samples at `rtt`, one every 10 ms; returns the limit after each.
    fn windows(g: &mut Gradient, now: &mut Instant, rtt: Duration, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                for _ in 0..10 {
                    *now += 10 * MS;
                    g.on_sample(*now - rtt, *now);
                }
                g.limit()
            })
            .collect()
    }

    fn measured(rtt: Duration) -> (Gradient, Instant) {
        let mut now = Instant::now();
        let mut g = Gradient::with_rng(params(), now, fastrand::Rng::with_seed(1));
        assert_eq!(g.limit(), 3);
        for _ in 0..10 {
            now += rtt;
            g.on_sample(now - rtt, now);
        }
        assert_eq!(g.min_rtt(), Some(rtt));
        (g, now)
    }

    #[tokio::test(start_paused = true)]
    async fn limit_grows_while_latency_stays_at_min_rtt() {
        let (mut g, mut now) = measured(20 * MS);
        let limits = windows(&mut g, &mut now, 20 * MS, 30);
        assert!(limits.windows(2).all(|w| w[1] >= w[0]), "{limits:?}");
        assert_eq!(*limits.last().unwrap(), 1000, "{limits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn limit_falls_when_rtt_rises_and_recovers_when_it_falls() {
        let (mut g, mut now) = measured(20 * MS);
        windows(&mut g, &mut now, 20 * MS, 10);
        let high = g.limit();
        assert!(high > 100, "{high}");
        // Queueing: RTT quadruples. The gradient clamps at 0.5, so the limit at most halves
        // (plus headroom) each window, and keeps falling.
        let falling = windows(&mut g, &mut now, 80 * MS, 8);
        assert!(
            falling[0] >= high / 2 && falling[0] < high,
            "{high} {falling:?}"
        );
        assert!(falling.windows(2).all(|w| w[1] <= w[0]), "{falling:?}");
        let low = *falling.last().unwrap();
        assert!(low < 20, "{falling:?}");
        // RTT comes back down: the limit rises again.
        let rising = windows(&mut g, &mut now, 20 * MS, 5);
        assert!(
            rising.windows(2).all(|w| w[1] >= w[0]) && rising[4] > low * 2,
            "{rising:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limit_settles_where_rtt_matches_the_buffer() {
        let (mut g, mut now) = measured(20 * MS);
        // RTT exactly minRTT × 1.25 + sqrt headroom: the limit grows only by sqrt(limit), and at
        // 2× minRTT it shrinks; never leaves [min_limit, max_limit].
        for rtt in [25 * MS, 40 * MS, 200 * MS, MS] {
            for l in windows(&mut g, &mut now, rtt, 10) {
                assert!((3..=1000).contains(&l));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn min_rtt_is_remeasured_at_min_limit_then_restored() {
        let (mut g, mut now) = measured(20 * MS);
        windows(&mut g, &mut now, 20 * MS, 3);
        let before = g.limit();
        // Past the interval (plus at most 15% jitter), the next sample starts a measurement.
        now += Duration::from_secs(70);
        assert_eq!(g.on_sample(now - 20 * MS, now), Some(3));
        // Requests admitted before the drop still carry queueing delay: ignored.
        for _ in 0..20 {
            now += MS;
            assert_eq!(g.on_sample(now - 50 * MS, now), None);
        }
        for _ in 0..9 {
            now += 10 * MS;
            g.on_sample(now - 10 * MS, now);
        }
        now += 10 * MS;
        assert_eq!(g.on_sample(now - 10 * MS, now), Some(before));
        assert_eq!(g.min_rtt(), Some(10 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_are_sane_even_for_odd_params() {
        let now = Instant::now();
        let p = GradientParams {
            min_limit: 0,
            max_limit: 0,
            ..GradientParams::default()
        };
        let g = Gradient::new(p, now);
        assert_eq!(g.limit(), 1);
        assert_eq!(g.next_limit(MS), 1);
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
