//! Run results: per-target aggregation, the JSON shape, and the stdout table.
//!
//! [`Collector`] accumulates raw samples while the run goes; [`Report`] is the finished,
//! serialisable result (it is exactly what `--out` writes). Throughputs divide by the run's wall
//! time from the first arrival to the last completion, like vLLM's `benchmark_serving`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Measurement;
use crate::stats::{self, RequestTimes, Slo, Summary};

/// Results of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The [`crate::LoadSpec`] that produced this report.
    pub config: serde_json::Value,
    /// Wall time from start to the last completion, in seconds.
    pub elapsed_s: f64,
    /// Whether the run was cancelled before its bounds were reached.
    pub cancelled: bool,
    /// One entry per target, in the order given.
    pub targets: Vec<TargetReport>,
}

/// Results for one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    /// Requests sent (completed + failed).
    pub sent: u64,
    /// Requests that streamed to `[DONE]` with at least one token.
    pub completed: u64,
    pub failed: u64,
    /// Open-loop arrivals not sent because `max_in_flight` requests were outstanding.
    pub dropped: u64,
    /// Failures by kind: `connect`, `http_503`, `timeout`, `stream_broken`, ...
    pub errors: BTreeMap<String, u64>,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens (of completed requests) per second.
    pub output_token_throughput: f64,
    /// Output tokens of completed requests.
    pub output_tokens: u64,
    /// Prompt tokens of completed requests, as reported in `usage` (0 if never reported).
    pub prompt_tokens: u64,
    pub ttft_ms: Summary,
    pub itl_ms: Summary,
    pub tpot_ms: Summary,
    pub e2e_ms: Summary,
    /// Present when an SLO was given.
    pub goodput: Option<Goodput>,
}

/// Requests that met every objective of the SLO.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goodput {
    pub slo: Slo,
    /// Requests meeting the SLO.
    pub good: u64,
    /// `good / sent` (failures count against it).
    pub share: f64,
    /// `good` per second.
    pub rate: f64,
}

/// Raw samples of one target while the run is going.
#[derive(Debug, Default)]
pub struct TargetSamples {
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    e2e: Vec<f64>,
    itl_us: Vec<u32>,
    completed: u64,
    failed: u64,
    dropped: u64,
    good: u64,
    output_tokens: u64,
    prompt_tokens: u64,
    errors: BTreeMap<String, u64>,
}

/// Accumulates measurements for every target.
#[derive(Debug)]
pub struct Collector {
    slo: Slo,
    targets: Vec<TargetSamples>,
}

impl Collector {
    /// A collector for `targets` targets judging goodput by `slo`.
    pub fn new(targets: usize, slo: Slo) -> Self {
        Self {
            slo,
            targets: (0..targets).map(|_| TargetSamples::default()).collect(),
        }
    }

    /// Adds one finished request.
    pub fn record(&mut self, target: usize, m: Measurement) {
        let t = &mut self.targets[target];
        if let Some(kind) = m.error {
            t.failed += 1;
            *t.errors.entry(kind.label()).or_default() += 1;
            return;
        }
        let ttft_ms = ms(m.ttft.unwrap_or_default());
        let e2e_ms = ms(m.e2e);
        let tpot_ms = stats::tpot_ms(e2e_ms, ttft_ms, m.output_tokens as u64);
        let max_itl_ms = m.itl_us.iter().max().map(|&us| us as f64 / 1000.0);
        let times = RequestTimes {
            ttft_ms,
            e2e_ms,
            tpot_ms,
            max_itl_ms,
        };
        if self.slo.met_by(&times) {
            t.good += 1;
        }
        t.completed += 1;
        t.ttft.push(ttft_ms);
        t.e2e.push(e2e_ms);
        t.tpot.extend(tpot_ms);
        t.itl_us.extend_from_slice(&m.itl_us);
        t.output_tokens += m.output_tokens as u64;
        t.prompt_tokens += m.prompt_tokens.unwrap_or(0) as u64;
    }

    /// Counts an arrival dropped at the in-flight cap.
    pub fn dropped(&mut self, target: usize) {
        self.targets[target].dropped += 1;
    }

    /// Builds the report; `names` are `(name, url)` per target.
    pub fn finish(
        self,
        names: &[(String, String)],
        elapsed: Duration,
        config: serde_json::Value,
        cancelled: bool,
    ) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let slo = self.slo;
        let targets = self
            .targets
            .into_iter()
            .zip(names)
            .map(|(mut t, (name, url))| {
                let sent = t.completed + t.failed;
                TargetReport {
                    name: name.clone(),
                    url: url.clone(),
                    sent,
                    completed: t.completed,
                    failed: t.failed,
                    dropped: t.dropped,
                    errors: t.errors,
                    request_throughput: t.completed as f64 / secs,
                    output_token_throughput: t.output_tokens as f64 / secs,
                    output_tokens: t.output_tokens,
                    prompt_tokens: t.prompt_tokens,
                    ttft_ms: Summary::of(&mut t.ttft),
                    itl_ms: Summary::of_micros(&mut t.itl_us),
                    tpot_ms: Summary::of(&mut t.tpot),
                    e2e_ms: Summary::of(&mut t.e2e),
                    goodput: (!slo.is_empty()).then(|| Goodput {
                        slo,
                        good: t.good,
                        share: if sent == 0 {
                            0.0
                        } else {
                            t.good as f64 / sent as f64
                        },
                        rate: t.good as f64 / secs,
                    }),
                }
            })
            .collect();
        Report {
            config,
            elapsed_s: elapsed.as_secs_f64(),
            cancelled,
            targets,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    /// A plain-text table: one block per target, latency rows in milliseconds.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "elapsed {:.2}s{}",
            self.elapsed_s,
            if self.cancelled { " (cancelled)" } else { "" }
        );
        for t in &self.targets {
            let _ = writeln!(s, "\ntarget {}  {}", t.name, t.url);
            let _ = write!(
                s,
                "  requests    sent {}  ok {}  failed {}",
                t.sent, t.completed, t.failed
            );
            if t.dropped > 0 {
                let _ = write!(s, "  dropped {}", t.dropped);
            }
            if !t.errors.is_empty() {
                let e: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = write!(s, "  ({})", e.join(", "));
            }
            let _ = writeln!(
                s,
                "\n  throughput  {:.2} req/s  {:.1} output tok/s  ({} output tokens)",
                t.request_throughput, t.output_token_throughput, t.output_tokens
            );
            if let Some(g) = &t.goodput {
                let _ = writeln!(
                    s,
                    "  goodput     {:.1}% ({} of {})  {:.2} req/s  SLO {}",
                    g.share * 100.0,
                    g.good,
                    t.sent,
                    g.rate,
                    slo_text(&g.slo)
                );
            }
            let _ = writeln!(
                s,
                "  {:<10}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}",
                "ms", "count", "mean", "p50", "p90", "p99", "max"
            );
            for (label, m) in [
                ("ttft", &t.ttft_ms),
                ("itl", &t.itl_ms),
                ("tpot", &t.tpot_ms),
                ("e2e", &t.e2e_ms),
            ] {
                let _ = writeln!(
                    s,
                    "  {:<10}{:>8}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    label, m.count, m.mean, m.p50, m.p90, m.p99, m.max
                );
            }
        }
        s
    }
}

/// `ttft<=500ms tpot<=50ms`.
pub fn slo_text(slo: &Slo) -> String {
    let parts: Vec<String> = [
        ("ttft", slo.ttft),
        ("tpot", slo.tpot),
        ("itl", slo.itl),
        ("e2e", slo.e2e),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|d| format!("{k}<={}", humantime::format_duration(d))))
    .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ErrorKind;

    fn ok(ttft: u64, e2e: u64, tokens: u32, itl: &[u32]) -> Measurement {
        Measurement {
            ttft: Some(Duration::from_millis(ttft)),
            e2e: Duration::from_millis(e2e),
            itl_us: itl.to_vec(),
            chunks: tokens,
            output_tokens: tokens,
            ..Default::default()
        }
    }

    #[test]
    fn goodput_counts_failures_against_share() {
        let mut c = Collector::new(1, Slo::parse("ttft=100ms,tpot=10ms").unwrap());
        c.record(0, ok(50, 140, 10, &[10_000; 9])); // tpot 10 ms: good
        c.record(0, ok(150, 200, 10, &[5_000; 9])); // ttft misses
        c.record(0, ok(50, 500, 10, &[50_000; 9])); // tpot 50 ms misses
        c.record(
            0,
            Measurement {
                error: Some(ErrorKind::Status(503)),
                ..Default::default()
            },
        );
        c.dropped(0);
        let r = c.finish(
            &[("a".into(), "u".into())],
            Duration::from_secs(2),
            serde_json::Value::Null,
            false,
        );
        let t = &r.targets[0];
        assert_eq!((t.sent, t.completed, t.failed, t.dropped), (4, 3, 1, 1));
        assert_eq!(t.errors.get("http_503"), Some(&1));
        let g = t.goodput.as_ref().unwrap();
        assert_eq!(g.good, 1);
        assert!((g.share - 0.25).abs() < 1e-9 && (g.rate - 0.5).abs() < 1e-9);
        assert!((t.request_throughput - 1.5).abs() < 1e-9);
        assert!((t.output_token_throughput - 15.0).abs() < 1e-9);
        assert_eq!(t.itl_ms.count, 27);
        assert_eq!(t.tpot_ms.max, 50.0);
        let table = r.to_table();
        assert!(
            table.contains("goodput     25.0%") && table.contains("http_503 1"),
            "{table}"
        );
    }

    #[test]
    fn no_slo_no_goodput() {
        let mut c = Collector::new(1, Slo::default());
        c.record(0, ok(1, 2, 1, &[]));
        let r = c.finish(
            &[("a".into(), "u".into())],
            Duration::from_secs(1),
            serde_json::Value::Null,
            false,
        );
        assert!(r.targets[0].goodput.is_none());
        assert_eq!(r.targets[0].tpot_ms.count, 0);
    }
}
