//! Latency summaries and SLO checks.
//!
//! Percentiles are exact, computed from every sample with linear interpolation between closest
//! ranks (numpy's default, which vLLM's `benchmark_serving` also uses), so numbers from this tool
//! and from vLLM's can be compared directly. Exactness costs memory (4–8 bytes per sample), which
//! the request cap bounds; a sketch would save memory but makes small-sample tails lie.
//!
//! Goodput follows DistServe (Zhong et al., OSDI 2024): throughput counts only requests that met
//! every latency objective, because a server that answers fast but misses the SLO is not serving.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Summary of one latency metric, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// The tail a fleet's worst replica sets (reports before it had none: 0).
    #[serde(default)]
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (sorted in place). All fields are 0 when there are no samples.
    pub fn of(samples: &mut [f64]) -> Self {
        samples.sort_unstable_by(f64::total_cmp);
        Self::of_sorted(samples.len(), |i| samples[i])
    }

    /// Summarises inter-token gaps stored as whole microseconds (sorted in place).
    pub fn of_micros(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        Self::of_sorted(samples.len(), |i| samples[i] as f64 / 1000.0)
    }

    fn of_sorted(n: usize, at: impl Fn(usize) -> f64) -> Self {
        if n == 0 {
            return Self::default();
        }
        let sum: f64 = (0..n).map(&at).sum();
        Self {
            count: n as u64,
            mean: sum / n as f64,
            min: at(0),
            p50: percentile_sorted(n, &at, 50.0),
            p90: percentile_sorted(n, &at, 90.0),
            p99: percentile_sorted(n, &at, 99.0),
            p999: percentile_sorted(n, &at, 99.9),
            max: at(n - 1),
        }
    }
}

/// The `p`th percentile (0–100) of sorted data, interpolating linearly between closest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    percentile_sorted(sorted.len(), |i| sorted[i], p)
}

fn percentile_sorted(n: usize, at: impl Fn(usize) -> f64, p: f64) -> f64 {
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (at(lo), at(hi));
    a + (b - a) * (rank - lo as f64)
}

/// Latency objectives a request must meet to count toward goodput. Unset fields are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttft: Option<Duration>,
    /// Time per output token after the first.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tpot: Option<Duration>,
    /// The request's largest inter-token gap (a stall anywhere in the stream fails it).
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub itl: Option<Duration>,
    /// End-to-end latency.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub e2e: Option<Duration>,
}

impl Slo {
    /// Parses `ttft=500ms,tpot=50ms` (any subset of ttft, tpot, itl, e2e; humantime durations).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("SLO `{part}` should look like ttft=500ms"))?;
            let d = humantime::parse_duration(v.trim())
                .map_err(|e| anyhow::anyhow!("SLO `{part}`: {e}"))?;
            match k.trim() {
                "ttft" => slo.ttft = Some(d),
                "tpot" => slo.tpot = Some(d),
                "itl" => slo.itl = Some(d),
                "e2e" => slo.e2e = Some(d),
                other => {
                    anyhow::bail!("unknown SLO metric `{other}`; expected ttft, tpot, itl or e2e")
                }
            }
        }
        Ok(slo)
    }

    /// True when no objective is set (goodput is then not reported).
    pub fn is_empty(&self) -> bool {
        self.ttft.is_none() && self.tpot.is_none() && self.itl.is_none() && self.e2e.is_none()
    }

    /// Whether a successful request met every set objective. TPOT and ITL are undefined for a
    /// single-token reply and count as met.
    pub fn met_by(&self, r: &RequestTimes) -> bool {
        let ok = |limit: Option<Duration>, v: Option<f64>| match (limit, v) {
            (Some(l), Some(v)) => v <= l.as_secs_f64() * 1000.0,
            _ => true,
        };
        ok(self.ttft, Some(r.ttft_ms))
            && ok(self.tpot, r.tpot_ms)
            && ok(self.itl, r.max_itl_ms)
            && ok(self.e2e, Some(r.e2e_ms))
    }
}

/// The timings of one successful request, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTimes {
    pub ttft_ms: f64,
    pub e2e_ms: f64,
    /// `(e2e - ttft) / (output_tokens - 1)`; `None` for a single-token reply.
    pub tpot_ms: Option<f64>,
    /// Largest gap between token chunks; `None` with fewer than two chunks.
    pub max_itl_ms: Option<f64>,
}

/// Time per output token: the decode time spread over every token after the first.
pub fn tpot_ms(e2e_ms: f64, ttft_ms: f64, output_tokens: u64) -> Option<f64> {
    (output_tokens > 1).then(|| (e2e_ms - ttft_ms) / (output_tokens - 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([1..=10], [50, 90, 99]) == [5.5, 9.1, 9.91]
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((percentile(&v, 50.0) - 5.5).abs() < 1e-9);
        assert!((percentile(&v, 90.0) - 9.1).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 9.91).abs() < 1e-9);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // numpy.percentile([15, 20, 35, 40, 50], 40) == 29.0
        assert!((percentile(&[15.0, 20.0, 35.0, 40.0, 50.0], 40.0) - 29.0).abs() < 1e-9);
    }

    #[test]
    fn summary_sorts_and_summarises() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let s = Summary::of(&mut v);
        assert_eq!(
            (s.count, s.min, s.p50, s.max, s.mean),
            (5, 1.0, 3.0, 5.0, 3.0)
        );
        assert!((s.p90 - 4.6).abs() < 1e-9 && (s.p99 - 4.96).abs() < 1e-9);
        let mut us = vec![3000u32, 1000, 2000];
        let s = Summary::of_micros(&mut us);
        assert_eq!((s.min, s.p50, s.max, s.mean), (1.0, 2.0, 3.0, 2.0));
        assert_eq!(Summary::of(&mut []), Summary::default());
    }

    #[test]
    fn slo_parse_and_check() {
        let slo = Slo::parse("ttft=500ms, tpot=50ms").unwrap();
        assert_eq!(slo.ttft, Some(Duration::from_millis(500)));
        assert_eq!(slo.tpot, Some(Duration::from_millis(50)));
        assert!(slo.itl.is_none() && slo.e2e.is_none());
        assert!(Slo::parse("ttfb=1s").is_err());
        assert!(Slo::parse("ttft").is_err());
        assert!(Slo::parse("ttft=fast").is_err());
        assert!(Slo::parse("").unwrap().is_empty());

        let good = RequestTimes {
            ttft_ms: 499.0,
            e2e_ms: 3000.0,
            tpot_ms: Some(50.0),
            max_itl_ms: Some(400.0),
        };
        assert!(slo.met_by(&good));
        assert!(!slo.met_by(&RequestTimes {
            ttft_ms: 501.0,
            ..good
        }));
        assert!(!slo.met_by(&RequestTimes {
            tpot_ms: Some(50.5),
            ..good
        }));
        assert!(slo.met_by(&RequestTimes {
            tpot_ms: None,
            ..good
        }));
        let stall = Slo::parse("itl=200ms,e2e=2s").unwrap();
        assert!(!stall.met_by(&good));
        assert!(!stall.met_by(&RequestTimes {
            max_itl_ms: Some(100.0),
            ..good
        }));
        assert!(stall.met_by(&RequestTimes {
            max_itl_ms: Some(100.0),
            e2e_ms: 1999.0,
            ..good
        }));
    }

    #[test]
    fn tpot_definition() {
        assert_eq!(tpot_ms(1100.0, 100.0, 11), Some(100.0));
        assert_eq!(tpot_ms(100.0, 100.0, 1), None);
    }
}
