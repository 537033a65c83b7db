//! Scraping model servers' Prometheus metrics into [`EndpointSignals`].
//!
//! The Gateway API Inference Extension's EPP and the llm-d scheduler poll each model server's
//! `/metrics` every ~50 ms and route on queue depth, KV-cache usage and LoRA state; we do the
//! same. Each endpoint gets its own task, so a slow or dead server only delays its own data; the
//! interval is jittered so that scrapes of a large pool do not synchronise. A scrape that fails
//! (connect error, timeout, non-200, a page over [`MAX_SCRAPE_BYTES`], an unparsable page, or
//! one without any of the expected series) marks the endpoint's data stale, which the picker
//! treats as "unknown" rather than "idle". Metric names differ per server, so they are data
//! ([`MetricNames`]), with presets for vLLM, SGLang, TGI, Triton and llama.cpp.
//!
//! A failing scrape must not be silent: a pool whose servers expose no metrics the gateway can
//! read routes on its own in-flight counts, which is least-request by another name. Every
//! failure goes to the caller's [`ScrapeSink`] with its [`ScrapeError`], marked `first` the
//! first time that cause is seen since the endpoint last scraped cleanly (the caller warns once
//! per endpoint and cause, and counts every failure), and a clean scrape after failures reports
//! [`ScrapeEvent::Recovered`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::prom_text::{self, Sample};
use crate::signals::{EndpointSignals, LoraState, ScrapedMetrics, KV_BLOCK_TOKENS};

/// The largest metrics page read; a longer one fails the scrape as `too_large`. vLLM's page with
/// a few LoRA adapters and every histogram is well under 1 MiB.
pub const MAX_SCRAPE_BYTES: usize = 4 << 20;

/// Why a scrape failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeError {
    /// No connection (refused, unreachable, connect timeout).
    Connect,
    /// Connected, but the exchange failed before a response head.
    Request,
    /// No complete page within `stale_after`.
    Timeout,
    /// A response other than 200 (a server without metrics answers 404, llama.cpp without
    /// `--metrics` 501).
    HttpStatus(u16),
    /// The body failed mid-way.
    Body,
    /// The page is over [`MAX_SCRAPE_BYTES`].
    TooLarge,
    /// Not UTF-8 or not Prometheus text.
    Parse,
    /// A page without any of the queue, running or KV series of the pool's `metrics:` preset
    /// (a server of another kind, or one that has not served yet).
    MissingMetrics,
}

impl ScrapeError {
    /// The `cause` label value.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Request => "request",
            Self::Timeout => "timeout",
            Self::HttpStatus(_) => "http_status",
            Self::Body => "body",
            Self::TooLarge => "too_large",
            Self::Parse => "parse",
            Self::MissingMetrics => "missing_metrics",
        }
    }

    /// The HTTP status of an `http_status` error.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::HttpStatus(code) => Some(code),
            _ => None,
        }
    }
}

impl std::fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HttpStatus(code) => write!(f, "http_status {code}"),
            other => f.write_str(other.cause()),
        }
    }
}

/// What a scrape task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeEvent {
    /// A scrape of `endpoint` failed; `first` the first time for this cause since the endpoint
    /// last scraped cleanly.
    Failed {
        endpoint: SocketAddr,
        error: ScrapeError,
        first: bool,
    },
    /// A clean scrape of `endpoint` after failures.
    Recovered { endpoint: SocketAddr },
}

/// Where scrape tasks report failures and recoveries.
pub type ScrapeSink = Arc<dyn Fn(ScrapeEvent) + Send + Sync>;

/// A metric name with an optional required label value (`nv_trt_llm_kv_cache_block_metrics`
/// with `kv_cache_block_type="fraction"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub label: Option<(String, String)>,
}

impl Selector {
    pub fn name(name: &str) -> Self {
        Self {
            name: name.to_string(),
            label: None,
        }
    }

    pub fn with_label(name: &str, key: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            label: Some((key.to_string(), value.to_string())),
        }
    }

    fn matches(&self, s: &Sample<'_>) -> bool {
        s.name == self.name
            && match &self.label {
                None => true,
                Some((k, v)) => s.label(k) == Some(v.as_str()),
            }
    }
}

/// Which series carry each signal. Each list is tried in order and the first name present on the
/// page wins (vLLM renamed `gpu_cache_usage_perc` to `kv_cache_usage_perc`). Queue and running
/// counts are summed over the series (one per served model); KV usage takes the maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricNames {
    pub waiting: Vec<Selector>,
    pub running: Vec<Selector>,
    /// KV cache usage as a fraction 0..1.
    pub kv_usage: Vec<Selector>,
    /// A series whose label `num_gpu_blocks` gives the KV cache size (vLLM `cache_config_info`).
    pub cache_info: Option<String>,
    /// A series with labels `running_lora_adapters`, `waiting_lora_adapters` (comma-separated)
    /// and `max_lora` (vLLM `lora_requests_info`).
    pub lora_info: Option<String>,
    /// The label naming the served base model on the queue, running and KV series (vLLM and
    /// SGLang `model_name`). With LoRA on, a requested model that is none of these is an
    /// adapter (vLLM serves adapters under their own model names).
    pub model_label: Option<String>,
    /// KV cache tokens in use (llama.cpp `kv_cache_tokens`): with KV usage it gives the cache
    /// size, in place of `cache_info`.
    pub kv_tokens: Option<String>,
    /// Prefix-cache counters (queries, hits), summed over their series: the hit share over a
    /// window is what operators read to see whether prefix affinity works (vLLM v1
    /// `prefix_cache_queries`/`prefix_cache_hits`, in tokens).
    pub prefix_cache: Option<(String, String)>,
    /// The metrics path.
    pub path: String,
}

impl MetricNames {
    /// vLLM (v0 and v1 names).
    pub fn vllm() -> Self {
        Self {
            waiting: vec![Selector::name("vllm:num_requests_waiting")],
            running: vec![Selector::name("vllm:num_requests_running")],
            kv_usage: vec![
                Selector::name("vllm:kv_cache_usage_perc"),
                Selector::name("vllm:gpu_cache_usage_perc"),
            ],
            cache_info: Some("vllm:cache_config_info".into()),
            lora_info: Some("vllm:lora_requests_info".into()),
            model_label: Some("model_name".into()),
            kv_tokens: None,
            prefix_cache: Some((
                "vllm:prefix_cache_queries_total".into(),
                "vllm:prefix_cache_hits_total".into(),
            )),
            path: "/metrics".into(),
        }
    }

    /// SGLang.
    pub fn sglang() -> Self {
        Self {
            waiting: vec![Selector::name("sglang:num_queue_reqs")],
            running: vec![Selector::name("sglang:num_running_reqs")],
            kv_usage: vec![Selector::name("sglang:token_usage")],
            cache_info: None,
            lora_info: None,
            model_label: Some("model_name".into()),
            kv_tokens: None,
            prefix_cache: None,
            path: "/metrics".into(),
        }
    }

    /// Hugging Face Text Generation Inference (no KV usage metric).
    pub fn tgi() -> Self {
        Self {
            waiting: vec![Selector::name("tgi_queue_size")],
            running: vec![Selector::name("tgi_batch_current_size")],
            kv_usage: vec![],
            cache_info: None,
            lora_info: None,
            model_label: None,
            kv_tokens: None,
            prefix_cache: None,
            path: "/metrics".into(),
        }
    }

    /// NVIDIA Triton (with the TensorRT-LLM backend's KV and request metrics when present).
    pub fn triton() -> Self {
        Self {
            waiting: vec![
                Selector::with_label("nv_trt_llm_request_metrics", "request_type", "waiting"),
                Selector::name("nv_inference_pending_request_count"),
            ],
            running: vec![Selector::with_label(
                "nv_trt_llm_request_metrics",
                "request_type",
                "active",
            )],
            kv_usage: vec![Selector::with_label(
                "nv_trt_llm_kv_cache_block_metrics",
                "kv_cache_block_type",
                "fraction",
            )],
            cache_info: None,
            lora_info: None,
            model_label: None,
            kv_tokens: None,
            prefix_cache: None,
            path: "/metrics".into(),
        }
    }

    /// llama.cpp's `llama-server --metrics`: deferred and processing requests, and KV cache use
    /// where the server still exports it (`kv_cache_usage_ratio`, `kv_cache_tokens`, dropped by
    /// later versions). No model label: one server serves one model.
    pub fn llamacpp() -> Self {
        Self {
            waiting: vec![Selector::name("llamacpp:requests_deferred")],
            running: vec![Selector::name("llamacpp:requests_processing")],
            kv_usage: vec![Selector::name("llamacpp:kv_cache_usage_ratio")],
            cache_info: None,
            lora_info: None,
            model_label: None,
            kv_tokens: Some("llamacpp:kv_cache_tokens".into()),
            prefix_cache: None,
            path: "/metrics".into(),
        }
    }

    /// The preset named by a pool's `metrics:` setting (`vllm`, `sglang`, `tgi`, `triton`,
    /// `llamacpp`).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "vllm" => Self::vllm(),
            "sglang" => Self::sglang(),
            "tgi" => Self::tgi(),
            "triton" => Self::triton(),
            "llamacpp" => Self::llamacpp(),
            _ => return None,
        })
    }

    /// Read the signals out of a metrics page.
    pub fn extract(&self, text: &str) -> Result<ScrapedMetrics, prom_text::ParseError> {
        let samples = prom_text::parse(text)?;
        let pick = |sels: &[Selector], fold: fn(f64, f64) -> f64| {
            sels.iter().find_map(|sel| {
                samples
                    .iter()
                    .filter(|s| sel.matches(s) && s.value.is_finite())
                    .map(|s| s.value)
                    .reduce(fold)
            })
        };
        let kv_usage = pick(&self.kv_usage, f64::max);
        let num_gpu_blocks = self.cache_info.as_ref().and_then(|n| {
            samples
                .iter()
                .filter(|s| s.name == n)
                .find_map(|s| s.label("num_gpu_blocks")?.parse().ok())
        });
        // Tokens in use over the fraction in use is the cache size (unknown while it is empty).
        let num_gpu_blocks = num_gpu_blocks.or_else(|| {
            let n = self.kv_tokens.as_ref()?;
            let tokens = samples
                .iter()
                .find(|s| s.name == n && s.value.is_finite())?;
            let usage = kv_usage.filter(|u| *u > 0.0)?;
            let blocks = (tokens.value / usage / KV_BLOCK_TOKENS as f64).round();
            (blocks >= 1.0).then_some(blocks as u64)
        });
        let lora = self.lora_info.as_ref().and_then(|n| {
            // vLLM emits one series per change, valued with its time; the newest is current.
            let s = samples
                .iter()
                .filter(|s| s.name == n)
                .max_by(|a, b| a.value.total_cmp(&b.value))?;
            let list = |key| -> Vec<String> {
                s.label(key)
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect()
            };
            Some(LoraState {
                running: list("running_lora_adapters"),
                waiting: list("waiting_lora_adapters"),
                max_lora: s
                    .label("max_lora")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0),
            })
        });
        let models = self.model_label.as_ref().map(|label| {
            let mut models: Vec<String> = Vec::new();
            let signal_series = self
                .waiting
                .iter()
                .chain(&self.running)
                .chain(&self.kv_usage);
            for sel in signal_series {
                for s in samples.iter().filter(|s| sel.matches(s)) {
                    if let Some(m) = s.label(label).filter(|m| !m.is_empty()) {
                        if !models.iter().any(|x| x == m) {
                            models.push(m.to_string());
                        }
                    }
                }
            }
            models
        });
        let sum = |name: &str| {
            samples
                .iter()
                .filter(|s| s.name == name && s.value.is_finite() && s.value >= 0.0)
                .map(|s| s.value)
                .reduce(|a, b| a + b)
        };
        let prefix_cache = self
            .prefix_cache
            .as_ref()
            .and_then(|(queries, hits)| Some((sum(queries)?, sum(hits)?)));
        Ok(ScrapedMetrics {
            prefix_cache,
            models: models.filter(|m| !m.is_empty()),
            waiting: pick(&self.waiting, |a, b| a + b),
            running: pick(&self.running, |a, b| a + b),
            kv_usage,
            num_gpu_blocks,
            lora,
        })
    }
}

/// Running scrape tasks; dropping it stops them.
#[derive(Debug)]
pub struct Scraper {
    tasks: Vec<JoinHandle<()>>,
}

impl Scraper {
    /// Stop scraping now.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scrape each endpoint's metrics every `interval.0..=interval.1` (uniformly jittered; 50–100 ms
/// is a good default) until the returned [`Scraper`] drops. A scrape times out after
/// `stale_after` or fails as [`ScrapeError`] says, marking the endpoint stale and reporting to
/// `sink`; the next one is tried on schedule. Must be called inside a tokio runtime.
pub fn spawn_scraper(
    endpoints: Vec<(SocketAddr, Arc<EndpointSignals>)>,
    names: MetricNames,
    interval: (Duration, Duration),
    stale_after: Duration,
    sink: ScrapeSink,
) -> Scraper {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(stale_after));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    let names = Arc::new(names);
    // A zero interval would spin; a millisecond is already far faster than useful.
    let floor = Duration::from_millis(1);
    let (lo, hi) = (
        interval.0.min(interval.1).max(floor),
        interval.0.max(interval.1).max(floor),
    );
    let tasks = endpoints
        .into_iter()
        .map(|(addr, signals)| {
            let client = client.clone();
            let names = names.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let uri: Option<hyper::Uri> = format!("http://{addr}{}", names.path).parse().ok();
                // Causes reported since the last clean scrape.
                let mut seen: Vec<&'static str> = Vec::new();
                loop {
                    let outcome = match &uri {
                        Some(uri) => {
                            tokio::time::timeout(stale_after, scrape_once(&client, uri, &names))
                                .await
                                .unwrap_or(Err(ScrapeError::Timeout))
                        }
                        None => Err(ScrapeError::Request),
                    };
                    match outcome {
                        Ok(m) => {
                            signals.apply_scrape(&m, Instant::now());
                            if !seen.is_empty() {
                                seen.clear();
                                sink(ScrapeEvent::Recovered { endpoint: addr });
                            }
                        }
                        Err(error) => {
                            signals.mark_failed(error);
                            let first = !seen.contains(&error.cause());
                            if first {
                                seen.push(error.cause());
                            }
                            sink(ScrapeEvent::Failed {
                                endpoint: addr,
                                error,
                                first,
                            });
                        }
                    }
                    let span = (hi - lo).as_nanos() as u64;
                    let jitter = Duration::from_nanos(fastrand::u64(0..=span));
                    tokio::time::sleep(lo + jitter).await;
                }
            })
        })
        .collect();
    Scraper { tasks }
}

async fn scrape_once(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
    names: &MetricNames,
) -> Result<ScrapedMetrics, ScrapeError> {
    let resp = client.get(uri.clone()).await.map_err(|e| {
        if e.is_connect() {
            ScrapeError::Connect
        } else {
            ScrapeError::Request
        }
    })?;
    if resp.status() != http::StatusCode::OK {
        return Err(ScrapeError::HttpStatus(resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ScrapeError::TooLarge
            } else {
                ScrapeError::Body
            }
        })?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::Parse)?;
    let m = names.extract(text).map_err(|_| ScrapeError::Parse)?;
    if m.waiting.is_none() && m.running.is_none() && m.kv_usage.is_none() {
        return Err(ScrapeError::MissingMetrics);
    }
    Ok(m)
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
