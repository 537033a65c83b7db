//! vLLM-compatible metrics, written as Prometheus text by hand.
//!
//! Scrapers built for vLLM (gateway endpoint pickers, dashboards) key on exact names such as
//! `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc`. `prometheus-client` appends
//! `_total` to counter names itself and rejects `:` in names, so rather than fight it the
//! exposition (text format 0.0.4) is written here directly: the set is small and fixed, and the
//! engine updates plain fields once per step under one lock.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `vllm:time_to_first_token_seconds` buckets (vLLM's).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// `vllm:inter_token_latency_seconds` buckets (vLLM's).
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// `vllm:e2e_request_latency_seconds` buckets (vLLM's).
pub const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A fixed-bucket histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds; +Inf is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if i < self.counts.len() {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Number of observations.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Everything a replica's engine reports. Updated by the engine, read by `/metrics` and the ORCA
/// load header.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Requests in the running batch.
    pub running: usize,
    /// Requests queued.
    pub waiting: usize,
    /// Referenced KV blocks / all blocks.
    pub kv_usage: f64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits: u64,
    /// Prompt tokens of requests whose prefill completed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Requests preempted (recompute) for lack of KV blocks.
    pub preemptions: u64,
    /// Cached prefix blocks evicted to make room (a simulator counter: vLLM exports none).
    pub evicted_blocks: u64,
    /// Requests finished, by reason: (length, stop, abort).
    pub finished: [u64; 3],
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of a request.
    pub itl: Histogram,
    /// Arrival to last token.
    pub e2e: Histogram,
    /// Adapters used by running requests (names).
    pub running_loras: Vec<String>,
    /// Adapters wanted by waiting requests (names).
    pub waiting_loras: Vec<String>,
    /// Arrivals for the request-rate estimate: (current window start, count now, count before).
    rate: (Option<Instant>, u64, u64),
    /// Time-weighted average of the running batch size (τ = 1 s) and when it was last updated:
    /// what the ORCA report calls utilization, so a report sent as a request finishes still
    /// says how busy the replica has been rather than "idle".
    busy: (f64, Option<Instant>),
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            prefix_queries: 0,
            prefix_hits: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            preemptions: 0,
            evicted_blocks: 0,
            finished: [0; 3],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            running_loras: Vec::new(),
            waiting_loras: Vec::new(),
            rate: (None, 0, 0),
            busy: (0.0, None),
        }
    }
}

const RATE_WINDOW_S: f64 = 1.0;

impl EngineMetrics {
    /// Counts an arriving request for the request-rate estimate.
    pub fn record_arrival(&mut self, now: Instant) {
        self.roll_rate(now);
        self.rate.1 += 1;
    }

    fn roll_rate(&mut self, now: Instant) {
        let start = *self.rate.0.get_or_insert(now);
        let elapsed = now.duration_since(start).as_secs_f64();
        if elapsed >= 2.0 * RATE_WINDOW_S {
            self.rate = (Some(now), 0, 0);
        } else if elapsed >= RATE_WINDOW_S {
            self.rate = (
                Some(start + std::time::Duration::from_secs_f64(RATE_WINDOW_S)),
                0,
                self.rate.1,
            );
        }
    }

    /// Requests per second over roughly the last second (sliding window of two buckets).
    /// Fold the current batch size into the busy average at `now`.
    pub fn observe_busy(&mut self, running: usize, now: Instant) {
        let (avg, last) = self.busy;
        let avg = match last {
            None => running as f64,
            Some(t) => {
                let w = (-now.duration_since(t).as_secs_f64() / BUSY_TAU_S).exp();
                avg * w + running as f64 * (1.0 - w)
            }
        };
        self.busy = (avg, Some(now));
    }

    /// The busy average (running requests, time-weighted over about a second).
    pub fn busy(&self) -> f64 {
        self.busy.0
    }

    pub fn request_rate(&mut self, now: Instant) -> f64 {
        self.roll_rate(now);
        let start = self.rate.0.unwrap_or(now);
        let frac = (now.duration_since(start).as_secs_f64() / RATE_WINDOW_S).min(1.0);
        (self.rate.2 as f64 * (1.0 - frac) + self.rate.1 as f64) / RATE_WINDOW_S
    }
}

/// Static facts about a replica that appear in its metrics.
#[derive(Debug, Clone)]
pub struct MetricsInfo {
    /// Served base model.
    pub model: String,
    /// KV cache blocks.
    pub num_gpu_blocks: usize,
    /// LoRA slots.
    pub max_loras: usize,
    /// Batch limit, used to express load as a fraction.
    pub max_num_seqs: usize,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the Prometheus text exposition of `m`.
pub fn render(info: &MetricsInfo, m: &EngineMetrics) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let model = escape_label(&info.model);
    let l = format!("model_name=\"{model}\"");
    let mut simple = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {value}\n"
        );
    };
    simple(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        m.running.to_string(),
    );
    simple(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        m.waiting.to_string(),
    );
    simple(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        fmt_f64(m.kv_usage),
    );
    simple(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        m.prefix_queries.to_string(),
    );
    simple(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        m.prefix_hits.to_string(),
    );
    simple(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        m.prompt_tokens.to_string(),
    );
    simple(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        m.generation_tokens.to_string(),
    );
    simple(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        m.preemptions.to_string(),
    );
    simple(
        "switchyard_sim_kv_evicted_blocks_total",
        "counter",
        "Cached prefix blocks evicted to make room for new ones.",
        m.evicted_blocks.to_string(),
    );

    let _ = write!(
        out,
        "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter\n"
    );
    for (reason, n) in ["length", "stop", "abort"].iter().zip(m.finished) {
        let _ = writeln!(
            out,
            "vllm:request_success_total{{{l},finished_reason=\"{reason}\"}} {n}"
        );
    }
    let _ = write!(
        out,
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{{l},block_size=\"{}\",enable_prefix_caching=\"True\",num_gpu_blocks=\"{}\"}} 1\n",
        crate::kv_cache::BLOCK_SIZE,
        info.num_gpu_blocks
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let _ = write!(
        out,
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{{l},max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {}\n",
        info.max_loras,
        escape_label(&m.running_loras.join(",")),
        escape_label(&m.waiting_loras.join(",")),
        fmt_f64(now)
    );
    histogram(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &l,
        &m.ttft,
    );
    histogram(
        &mut out,
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &l,
        &m.itl,
    );
    histogram(
        &mut out,
        "vllm:e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        &l,
        &m.e2e,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
    let mut cum = 0;
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        cum += c;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cum}",
            fmt_f64(*b)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", fmt_f64(h.sum));
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Formats a float the way Prometheus clients do (always with a decimal point or exponent).
fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Format of the ORCA `endpoint-load-metrics` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcaFormat {
    /// `TEXT key=value, ...`
    Text,
    /// `JSON {...}`
    Json,
}

impl OrcaFormat {
    /// Parses the `endpoint-load-metrics-format` request header value.
    pub fn parse(v: &str) -> Option<Self> {
        match v.trim().to_ascii_uppercase().as_str() {
            "TEXT" => Some(Self::Text),
            "JSON" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Time constant of the busy average behind the ORCA utilization.
const BUSY_TAU_S: f64 = 1.0;

/// The ORCA load report for the current state. `cpu_utilization` is batch occupancy averaged
/// over the last second or so (running / max_num_seqs); named metrics carry the vLLM gauges.
pub fn orca_report(
    fmt: OrcaFormat,
    info: &MetricsInfo,
    m: &mut EngineMetrics,
    now: Instant,
) -> String {
    m.observe_busy(m.running, now);
    let util = m.busy() / info.max_num_seqs.max(1) as f64;
    let rps = m.request_rate(now);
    match fmt {
        OrcaFormat::Text => format!(
            "TEXT cpu_utilization={util:.4}, rps_fractional={rps:.4}, named_metrics.kv_cache_usage={:.4}, named_metrics.num_requests_running={}, named_metrics.num_requests_waiting={}",
            m.kv_usage, m.running, m.waiting
        ),
        OrcaFormat::Json => format!(
            "JSON {}",
            serde_json::json!({
                "cpu_utilization": util,
                "rps_fractional": rps,
                "named_metrics": {
                    "kv_cache_usage": m.kv_usage,
                    "num_requests_running": m.running,
                    "num_requests_waiting": m.waiting,
                }
            })
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.1);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        histogram(&mut out, "x", "h", "a=\"b\"", &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"1.0\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_count{a=\"b\"} 4\n"));
    }

    #[test]
    fn request_rate_tracks_recent_arrivals() {
        let mut m = EngineMetrics::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            m.record_arrival(t0);
        }
        assert!((m.request_rate(t0) - 10.0).abs() < 1e-9);
        let later = t0 + std::time::Duration::from_secs(5);
        assert_eq!(m.request_rate(later), 0.0);
    }

    #[test]
    fn orca_formats() {
        let info = MetricsInfo {
            model: "m".into(),
            num_gpu_blocks: 1,
            max_loras: 1,
            max_num_seqs: 4,
        };
        let mut m = EngineMetrics {
            running: 2,
            kv_usage: 0.25,
            ..Default::default()
        };
        let t = orca_report(OrcaFormat::Text, &info, &mut m, Instant::now());
        assert!(
            t.starts_with("TEXT cpu_utilization=0.5000, rps_fractional="),
            "{t}"
        );
        assert!(t.contains("named_metrics.kv_cache_usage=0.2500"));
        let j = orca_report(OrcaFormat::Json, &info, &mut m, Instant::now());
        let v: serde_json::Value = serde_json::from_str(j.strip_prefix("JSON ").unwrap()).unwrap();
        assert_eq!(v["named_metrics"]["kv_cache_usage"], 0.25);
        assert_eq!(OrcaFormat::parse("json"), Some(OrcaFormat::Json));
    }
}
