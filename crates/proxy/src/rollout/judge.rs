//! The canary judge: what one arm of a rollout saw in an interval ([`ArmWindow`]), and the
//! comparison of canary with baseline over the same interval. A check fails only when its
//! threshold is crossed *and* a one-sided test at [`Z_CRITICAL`] says the canary is worse, so two
//! identical arms almost never fail by noise, however small the sample: a p99 of 100 latencies
//! moves a lot from one interval to the next, their ranks much less.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use switchyard_config::rollout::{Check, CheckMetric};

/// One-sided z at α = 0.01. A check of identical arms fails by noise in under 1% of intervals
/// (it must also cross its threshold), and a rollback needs `failure_limit` failed analyses in a
/// row; a stricter α would miss a 30% slowdown in a hundred canary requests too often.
pub const Z_CRITICAL: f64 = 2.33;

/// Latency samples kept per arm per interval (a uniform reservoir past that).
const SAMPLES: usize = 4096;

/// What one arm saw since the last analysis.
#[derive(Default)]
pub struct ArmWindow {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Reservoir>,
    ttft: Mutex<Reservoir>,
    tpot: Mutex<Reservoir>,
}

#[derive(Default)]
struct Reservoir {
    seen: u64,
    samples: Vec<f64>,
}

impl Reservoir {
    fn add(&mut self, v: f64) {
        self.seen += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(v);
        } else {
            let i = fastrand::u64(..self.seen);
            if let Ok(i) = usize::try_from(i) {
                if i < SAMPLES {
                    self.samples[i] = v;
                }
            }
        }
    }
}

/// An arm's interval, taken for judging.
#[derive(Debug, Default, Clone)]
pub struct ArmSample {
    pub requests: u64,
    pub errors: u64,
    pub latency: Vec<f64>,
    pub ttft: Vec<f64>,
    pub tpot: Vec<f64>,
}

impl ArmWindow {
    /// A finished request: its status (5xx and gateway errors count as errors) and duration.
    pub fn record(&self, status: u16, duration: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut r) = self.latency.lock() {
            r.add(duration.as_secs_f64());
        }
    }

    /// A streamed response's time to its first chunk.
    pub fn record_ttft(&self, ttft: Duration) {
        if let Ok(mut r) = self.ttft.lock() {
            r.add(ttft.as_secs_f64());
        }
    }

    /// A streamed response's time per output token after the first.
    pub fn record_tpot(&self, seconds_per_token: f64) {
        if let Ok(mut r) = self.tpot.lock() {
            r.add(seconds_per_token);
        }
    }

    /// Everything since the last take, leaving the window empty.
    pub fn take(&self) -> ArmSample {
        let take = |m: &Mutex<Reservoir>| {
            m.lock()
                .map(|mut r| std::mem::take(&mut *r).samples)
                .unwrap_or_default()
        };
        ArmSample {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            latency: take(&self.latency),
            ttft: take(&self.ttft),
            tpot: take(&self.tpot),
        }
    }
}

/// One check's result over one interval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub metric: &'static str,
    pub baseline: f64,
    pub canary: f64,
    /// The compared value: canary − baseline for error rates, canary ÷ baseline for latencies.
    pub value: f64,
    /// Latencies: the canary's typical slowdown factor (Hodges–Lehmann shift of log latencies),
    /// a steadier read of "how much slower" than a ratio of two small-sample p99s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    pub threshold: f64,
    /// The one-sided test's z (positive: the canary is worse).
    pub z: f64,
    pub passed: bool,
}

/// Judge `check` on the two arms' samples.
pub fn judge(check: &Check, baseline: &ArmSample, canary: &ArmSample) -> CheckResult {
    match check.metric {
        CheckMetric::ErrorRate => {
            let delta = check.max_increase.unwrap_or(0.0);
            let (pb, pc) = (rate(baseline), rate(canary));
            // Significance of "the canary fails more than the baseline" and relevance of "by
            // more than `max_increase`", as for latencies: testing against the margin itself
            // would let one error in a hundred canary requests pass as noise.
            let z = proportion_z(baseline, canary, 0.0);
            CheckResult {
                metric: check.metric.as_str(),
                baseline: pb,
                canary: pc,
                value: pc - pb,
                shift: None,
                threshold: delta,
                z,
                passed: !(pc - pb > delta && z > Z_CRITICAL),
            }
        }
        CheckMetric::LatencyP99 | CheckMetric::TtftP99 | CheckMetric::TpotP99 => {
            let (b, c) = match check.metric {
                CheckMetric::LatencyP99 => (&baseline.latency, &canary.latency),
                CheckMetric::TtftP99 => (&baseline.ttft, &canary.ttft),
                _ => (&baseline.tpot, &canary.tpot),
            };
            let ratio_max = check.max_ratio.unwrap_or(f64::INFINITY);
            let (pb, pc) = (percentile(b, 0.99), percentile(c, 0.99));
            let ratio = if pb > 0.0 { pc / pb } else { 1.0 };
            let z = mann_whitney_z(b, c);
            let shift = log_shift(b, c).exp();
            // Significantly slower by ranks, and slower than allowed: at the p99 (a tail that
            // grew) or throughout (a p99 of a hundred samples misses a uniform slowdown often).
            let slower = ratio.max(shift) > ratio_max;
            CheckResult {
                metric: check.metric.as_str(),
                baseline: pb,
                canary: pc,
                value: ratio,
                shift: Some(shift),
                threshold: ratio_max,
                z,
                passed: !(slower && z > Z_CRITICAL),
            }
        }
    }
}

fn rate(a: &ArmSample) -> f64 {
    if a.requests == 0 {
        0.0
    } else {
        a.errors as f64 / a.requests as f64
    }
}

/// z of the test "the canary's error rate exceeds the baseline's by more than `delta`", with the
/// pooled rate's standard error (floored at one error in the pooled sample, so two clean arms
/// and a canary with a few errors still give a finite, meaningful z).
pub fn proportion_z(baseline: &ArmSample, canary: &ArmSample, delta: f64) -> f64 {
    let (nb, nc) = (baseline.requests as f64, canary.requests as f64);
    if nb == 0.0 || nc == 0.0 {
        return 0.0;
    }
    let pooled = ((baseline.errors + canary.errors) as f64).max(1.0) / (nb + nc);
    let se = (pooled * (1.0 - pooled).max(f64::EPSILON) * (1.0 / nb + 1.0 / nc)).sqrt();
    (rate(canary) - rate(baseline) - delta) / se
}

/// z of the Mann–Whitney U test that the canary's values are stochastically larger than the
/// baseline's (normal approximation, ties given their mean rank). 0 when either is empty.
pub fn mann_whitney_z(baseline: &[f64], canary: &[f64]) -> f64 {
    let (nb, nc) = (baseline.len(), canary.len());
    if nb == 0 || nc == 0 {
        return 0.0;
    }
    let mut all: Vec<(f64, bool)> = baseline
        .iter()
        .map(|v| (*v, false))
        .chain(canary.iter().map(|v| (*v, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_canary = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        rank_sum_canary += mean_rank * all[i..=j].iter().filter(|(_, c)| *c).count() as f64;
        i = j + 1;
    }
    let (nb, nc) = (nb as f64, nc as f64);
    let n = nb + nc;
    let u = rank_sum_canary - nc * (nc + 1.0) / 2.0;
    let mean = nb * nc / 2.0;
    let var = nb * nc / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return 0.0;
    }
    (u - mean) / var.sqrt()
}

/// The Hodges–Lehmann estimate of how far the canary's log latencies sit above the baseline's:
/// the median of all pairwise differences, over at most [`HL_SAMPLES`] of each (a uniform
/// subsample), so it costs at most 160,000 differences per interval. 0 when either is empty.
pub fn log_shift(baseline: &[f64], canary: &[f64]) -> f64 {
    let logs = |v: &[f64]| -> Vec<f64> {
        let step = v.len().div_ceil(HL_SAMPLES).max(1);
        v.iter().step_by(step).map(|x| x.max(1e-9).ln()).collect()
    };
    let (b, c) = (logs(baseline), logs(canary));
    if b.is_empty() || c.is_empty() {
        return 0.0;
    }
    let mut d: Vec<f64> = c
        .iter()
        .flat_map(|ci| b.iter().map(move |bj| ci - bj))
        .collect();
    let mid = d.len() / 2;
    let (_, m, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// Samples of each arm the shift estimate reads.
const HL_SAMPLES: usize = 400;

/// The `q` quantile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, latency: Vec<f64>) -> ArmSample {
        ArmSample {
            requests,
            errors,
            ttft: latency.clone(),
            tpot: latency.clone(),
            latency,
        }
    }

    /// Latencies with a long right tail (log-normal, σ = 0.3 of the log).
    fn lognormal(n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                // Sum of uniforms: near-normal, exponentiated into a long right tail.
                let z: f64 = (0..12).map(|_| fastrand::f64()).sum::<f64>() - 6.0;
                scale * (0.3 * z).exp()
            })
            .collect()
    }

    fn check(metric: CheckMetric) -> Check {
        match metric {
            CheckMetric::ErrorRate => Check {
                metric,
                max_increase: Some(0.01),
                max_ratio: None,
            },
            _ => Check {
                metric,
                max_increase: None,
                max_ratio: Some(1.2),
            },
        }
    }

    #[test]
    fn identical_arms_almost_never_fail() {
        fastrand::seed(7);
        let mut failed = 0;
        for _ in 0..500 {
            // A 5% canary step at 200 req/s for 10 s: 1,900 baseline and 100 canary requests.
            let b = arm(1900, 0, lognormal(1900, 0.1));
            let c = arm(100, 0, lognormal(100, 0.1));
            for m in [
                CheckMetric::ErrorRate,
                CheckMetric::LatencyP99,
                CheckMetric::TpotP99,
            ] {
                if !judge(&check(m), &b, &c).passed {
                    failed += 1;
                }
            }
            // Both with a 1% error rate of their own.
            let b = arm(1900, 19, vec![]);
            let c = arm(100, fastrand::u64(0..=3), vec![]);
            if !judge(&check(CheckMetric::ErrorRate), &b, &c).passed {
                failed += 1;
            }
        }
        assert!(failed <= 20, "{failed} false failures in 2,000 checks");
    }

    #[test]
    fn a_slower_or_failing_canary_fails_at_the_first_step() {
        fastrand::seed(11);
        let mut missed_slow = 0;
        for _ in 0..200 {
            let b = arm(1900, 0, lognormal(1900, 0.1));
            let slow = arm(100, 0, lognormal(100, 0.13));
            if judge(&check(CheckMetric::LatencyP99), &b, &slow).passed {
                missed_slow += 1;
            }
            // The same samples as time per token: the same verdict.
            assert_eq!(
                judge(&check(CheckMetric::TpotP99), &b, &slow).passed,
                judge(&check(CheckMetric::LatencyP99), &b, &slow).passed
            );
            let failing = arm(100, 5, lognormal(100, 0.1));
            let r = judge(&check(CheckMetric::ErrorRate), &b, &failing);
            assert!(!r.passed, "5% errors passed: {r:?}");
        }
        // +30% on every request, judged on a hundred of them: caught in at least 97% of
        // intervals, so two in a row (a rollback) in at least 94%.
        assert!(
            missed_slow <= 6,
            "+30% latency passed {missed_slow} of 200 intervals"
        );
    }

    #[test]
    fn mann_whitney_and_percentiles_read_right() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
        let low: Vec<f64> = (0..50).map(f64::from).collect();
        let high: Vec<f64> = (50..100).map(f64::from).collect();
        assert!(mann_whitney_z(&low, &high) > 8.0);
        assert!(mann_whitney_z(&high, &low) < -8.0);
        let same = vec![1.0; 40];
        assert_eq!(mann_whitney_z(&same, &same), 0.0);
        let slower: Vec<f64> = low.iter().map(|v| (v + 1.0) * 1.5).collect();
        let base: Vec<f64> = low.iter().map(|v| v + 1.0).collect();
        assert!((log_shift(&base, &slower).exp() - 1.5).abs() < 1e-9);
    }
}
