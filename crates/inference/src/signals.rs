//! Live load signals for one model-server endpoint: what its metrics said at the last scrape,
//! corrected by what the gateway has sent it since.
//!
//! A scrape every 50–100 ms is fresh enough for steady load but not for a burst: a thousand
//! requests can arrive between two scrapes, and a router that trusts only the last scrape sends
//! them all to the replica that looked idle (herding). The Gateway API Inference Extension's EPP
//! and the llm-d scheduler both fold in the router's own view; we keep two kinds of gateway-side
//! counts: requests and estimated tokens picked *since the last scrape* (added to the scraped
//! queue depth and KV usage, and reset by the next scrape, which then already includes them), and
//! requests and tokens *in flight* (picked and not yet finished), for the in-flight-tokens scorer
//! and for endpoints whose scrape is stale.
//!
//! A second source can be fresher than the scrape: an ORCA load report (`endpoint-load-metrics`)
//! that a server such as vLLM or Triton attaches to a response when the request asks for one.
//! It comes with every response, so under load it is usually milliseconds old while the scrape
//! is tens. Each source keeps its own timestamp and its own baseline of the gateway's picks, and
//! a pick reads each signal (queue, running, KV usage) from the newest source that is within
//! `stale_after`, adding the picks made since *that* source's reading. A scrape that fails makes
//! the scrape stale, not a fresh report. A report never carries LoRA state or cache size; those
//! come from scrapes only.
//!
//! Everything is atomics, except the LoRA adapter sets, which change rarely and sit behind an
//! `ArcSwap`; a pick reads them without locking.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use switchyard_balance::LoadReport;

use crate::scrape::ScrapeError;

/// Tokens per KV block in vLLM's default configuration, used to turn picked tokens into KV usage.
pub const KV_BLOCK_TOKENS: u64 = 16;

/// LoRA adapter state reported by the model server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraState {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    /// Adapters that may be resident at once (vLLM `--max-loras`); 0 when unknown.
    pub max_lora: u32,
}

/// What one scrape read. Fields the server does not expose are `None` and keep their old value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapedMetrics {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_usage: Option<f64>,
    pub num_gpu_blocks: Option<u64>,
    pub lora: Option<LoraState>,
    /// Base models the server says it serves (the model label of its signal series).
    pub models: Option<Vec<String>>,
    /// Prefix-cache counters as scraped: (queries, hits), cumulative.
    pub prefix_cache: Option<(f64, f64)>,
}

/// Queue and KV signals read from an ORCA load report on a response, in a scrape's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OrcaSignals {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    /// KV cache usage 0..1.
    pub kv_usage: Option<f64>,
}

/// Named metrics read as the queue depth, running count and KV usage. vLLM's in-band report
/// names `kv_cache_utilization` and `num_requests_waiting`; Triton's names
/// `kv_cache_utilization`; the others are the Prometheus names some servers reuse.
const ORCA_WAITING: &[&str] = &["num_requests_waiting", "num_queue_reqs"];
const ORCA_RUNNING: &[&str] = &["num_requests_running", "num_running_reqs"];
const ORCA_KV: &[&str] = &[
    "kv_cache_utilization",
    "kv_cache_usage_perc",
    "kv_cache_usage",
    "gpu_cache_usage_perc",
];

impl OrcaSignals {
    /// The signals in `report`, or `None` when it has none. KV usage is a named KV metric, else
    /// the standard `application_utilization` (what the application says limits it: for a model
    /// server, its KV cache). `cpu_utilization` is not used: CPU is not what fills up on a GPU
    /// server, and a busy host CPU must not make a replica look saturated.
    pub fn from_orca(report: &LoadReport) -> Option<Self> {
        let named = |names: &[&str]| {
            names.iter().find_map(|n| {
                report
                    .named
                    .iter()
                    .find(|(k, v)| k == n && v.is_finite() && *v >= 0.0)
                    .map(|(_, v)| *v)
            })
        };
        let app = report.application_utilization;
        let signals = OrcaSignals {
            waiting: named(ORCA_WAITING),
            running: named(ORCA_RUNNING),
            kv_usage: named(ORCA_KV)
                .or((app > 0.0 && app.is_finite()).then_some(app))
                .map(|kv| kv.clamp(0.0, 1.0)),
        };
        (signals != OrcaSignals::default()).then_some(signals)
    }
}

/// "Not reported" in the ORCA slots.
const ABSENT: u64 = u64::MAX;

/// Signals for one endpoint, shared by the scraper (writer) and the picker (reader).
#[derive(Debug)]
pub struct EndpointSignals {
    epoch: Instant,
    waiting: AtomicU64,
    running: AtomicU64,
    kv_usage_bits: AtomicU64,
    num_gpu_blocks: AtomicU64,
    has_kv: AtomicBool,
    lora: ArcSwap<LoraState>,
    models: ArcSwap<Vec<String>>,
    /// Nanoseconds since `epoch` of the last successful scrape, plus one; 0 = never.
    last_scrape: AtomicU64,
    last_failed: AtomicBool,
    /// The last failed scrape's error and when (kept after a clean scrape, for `/pools`).
    last_error: Mutex<Option<(ScrapeError, Instant)>>,
    /// Requests and tokens picked ever; each source remembers these totals as of its reading.
    picked_total: AtomicU64,
    tokens_total: AtomicU64,
    scrape_picked: AtomicU64,
    scrape_tokens: AtomicU64,
    /// The last ORCA report: counts (`ABSENT` when not reported), KV usage bits (`ABSENT`
    /// likewise), when (nanoseconds since `epoch` plus one; 0 = never), and the pick totals
    /// then.
    orca_waiting: AtomicU64,
    orca_running: AtomicU64,
    orca_kv_bits: AtomicU64,
    orca_at: AtomicU64,
    orca_picked: AtomicU64,
    orca_tokens: AtomicU64,
    in_flight: AtomicU64,
    in_flight_tokens: AtomicU64,
    /// Requests sent and not yet answered with a first byte, and their prompt tokens: the
    /// prefill queued ahead of a new request, as the gateway counts it (the latency predictor's
    /// feature; counted only for pools with one).
    prefilling: AtomicU64,
    prefilling_tokens: AtomicU64,
    /// The last scraped prefix-cache counters, as f64 bits; `ABSENT` until a page had them.
    prefix_queries_bits: AtomicU64,
    prefix_hits_bits: AtomicU64,
}

impl Default for EndpointSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// A consistent-enough copy of an endpoint's signals at pick time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalSnapshot {
    /// Queued requests: scraped waiting plus picks since that scrape (or, when stale, the
    /// gateway's in-flight count).
    pub waiting: f64,
    pub running: f64,
    /// KV cache usage 0..1 including tokens picked since the scrape; `None` when unknown or stale.
    pub kv_usage: Option<f64>,
    /// Estimated tokens the gateway has in flight on the endpoint.
    pub in_flight_tokens: f64,
    pub num_gpu_blocks: u64,
    /// Whether some source (the last scrape, if it succeeded, or an ORCA report) is within
    /// `stale_after`.
    pub fresh: bool,
}

impl EndpointSignals {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_usage_bits: AtomicU64::new(0f64.to_bits()),
            num_gpu_blocks: AtomicU64::new(0),
            has_kv: AtomicBool::new(false),
            lora: ArcSwap::from_pointee(LoraState::default()),
            models: ArcSwap::from_pointee(Vec::new()),
            last_scrape: AtomicU64::new(0),
            last_failed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            picked_total: AtomicU64::new(0),
            tokens_total: AtomicU64::new(0),
            scrape_picked: AtomicU64::new(0),
            scrape_tokens: AtomicU64::new(0),
            orca_waiting: AtomicU64::new(ABSENT),
            orca_running: AtomicU64::new(ABSENT),
            orca_kv_bits: AtomicU64::new(ABSENT),
            orca_at: AtomicU64::new(0),
            orca_picked: AtomicU64::new(0),
            orca_tokens: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_tokens: AtomicU64::new(0),
            prefilling: AtomicU64::new(0),
            prefilling_tokens: AtomicU64::new(0),
            prefix_queries_bits: AtomicU64::new(ABSENT),
            prefix_hits_bits: AtomicU64::new(ABSENT),
        }
    }

    /// The prefix-cache counters (queries, hits) of the last scrape that had them.
    pub fn prefix_cache(&self) -> Option<(f64, f64)> {
        let q = self.prefix_queries_bits.load(Ordering::Relaxed);
        let h = self.prefix_hits_bits.load(Ordering::Relaxed);
        (q != ABSENT && h != ABSENT).then(|| (f64::from_bits(q), f64::from_bits(h)))
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// The gateway sent a request with `est_tokens` (prompt + expected output) to this endpoint.
    pub fn on_pick(&self, est_tokens: u32) {
        let t = u64::from(est_tokens);
        self.picked_total.fetch_add(1, Ordering::Relaxed);
        self.tokens_total.fetch_add(t, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_tokens.fetch_add(t, Ordering::Relaxed);
    }

    /// A request counted by [`EndpointSignals::on_pick`] finished (pass the same estimate).
    pub fn on_finish(&self, est_tokens: u32) {
        let t = u64::from(est_tokens);
        saturating_sub(&self.in_flight, 1);
        saturating_sub(&self.in_flight_tokens, t);
    }

    /// Store one successful scrape taken at `now`; resets the since-scrape counts.
    pub fn apply_scrape(&self, m: &ScrapedMetrics, now: Instant) {
        if let Some(w) = m.waiting {
            self.waiting.store(f64_count(w), Ordering::Relaxed);
        }
        if let Some(r) = m.running {
            self.running.store(f64_count(r), Ordering::Relaxed);
        }
        if let Some(kv) = m.kv_usage.filter(|kv| kv.is_finite()) {
            self.kv_usage_bits
                .store(kv.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
            self.has_kv.store(true, Ordering::Relaxed);
        }
        if let Some(b) = m.num_gpu_blocks {
            self.num_gpu_blocks.store(b, Ordering::Relaxed);
        }
        if let Some((queries, hits)) = m.prefix_cache {
            self.prefix_queries_bits
                .store(queries.to_bits(), Ordering::Relaxed);
            self.prefix_hits_bits
                .store(hits.to_bits(), Ordering::Relaxed);
        }
        if let Some(l) = &m.lora {
            if **self.lora.load() != *l {
                self.lora.store(Arc::new(l.clone()));
            }
        }
        if let Some(models) = &m.models {
            if **self.models.load() != *models {
                self.models.store(Arc::new(models.clone()));
            }
        }
        self.scrape_picked
            .store(self.picked_total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.scrape_tokens
            .store(self.tokens_total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.last_failed.store(false, Ordering::Relaxed);
        self.last_scrape
            .store(self.nanos(now) + 1, Ordering::Relaxed);
    }

    /// Store an ORCA load report received at `now` (it replaces the previous report whole).
    pub fn apply_orca(&self, r: &OrcaSignals, now: Instant) {
        let count = |v: Option<f64>| v.map_or(ABSENT, f64_count);
        self.orca_waiting.store(count(r.waiting), Ordering::Relaxed);
        self.orca_running.store(count(r.running), Ordering::Relaxed);
        let kv = r.kv_usage.filter(|kv| kv.is_finite());
        self.orca_kv_bits.store(
            kv.map_or(ABSENT, |kv| kv.clamp(0.0, 1.0).to_bits()),
            Ordering::Relaxed,
        );
        self.orca_picked
            .store(self.picked_total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.orca_tokens
            .store(self.tokens_total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.orca_at.store(self.nanos(now) + 1, Ordering::Relaxed);
    }

    /// When the last ORCA report arrived.
    pub fn last_orca(&self) -> Option<Instant> {
        match self.orca_at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// The last scrape failed with `error`.
    pub fn mark_failed(&self, error: ScrapeError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((error, Instant::now()));
        self.last_failed.store(true, Ordering::Relaxed);
    }

    /// The last failed scrape's error and when it happened, whether or not a clean scrape has
    /// come since ([`EndpointSignals::is_fresh`] says which is current).
    pub fn last_error(&self) -> Option<(ScrapeError, Instant)> {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the last scrape failed.
    pub fn last_scrape_failed(&self) -> bool {
        self.last_failed.load(Ordering::Relaxed)
    }

    /// Whether a scrape has come back at all, succeeded or failed: until then the picker scores
    /// this endpoint blind.
    pub fn scraped_once(&self) -> bool {
        self.last_scrape.load(Ordering::Relaxed) != 0 || self.last_failed.load(Ordering::Relaxed)
    }

    /// When the last successful scrape happened.
    pub fn last_scrape(&self) -> Option<Instant> {
        match self.last_scrape.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Whether the scraped data is current: the last scrape succeeded and is younger than
    /// `stale_after` (ORCA reports aside; [`EndpointSignals::snapshot`] weighs both).
    pub fn is_fresh(&self, now: Instant, stale_after: Duration) -> bool {
        !self.last_failed.load(Ordering::Relaxed)
            && self
                .last_scrape()
                .is_some_and(|t| now.saturating_duration_since(t) <= stale_after)
    }

    /// The LoRA adapters reported at the last scrape.
    pub fn lora(&self) -> arc_swap::Guard<Arc<LoraState>> {
        self.lora.load()
    }

    /// The base models reported at the last scrape that named any.
    pub fn models(&self) -> arc_swap::Guard<Arc<Vec<String>>> {
        self.models.load()
    }

    /// KV cache size in blocks, 0 when unknown.
    pub fn num_gpu_blocks(&self) -> u64 {
        self.num_gpu_blocks.load(Ordering::Relaxed)
    }

    /// The engine's batch, when the last scrape found it full: the requests running while
    /// others waited (as scraped, without the gateway's picks since). `None` while it has room.
    ///
    /// Only live evidence: a limit remembered from an earlier scrape (the most ever seen
    /// running with a queue) was set low by the first scrapes of a burst, and with sheddable
    /// traffic it never rose again, since the requests that would have shown the real limit
    /// were shed on its account.
    pub fn full_batch(&self) -> Option<u64> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let running = self.running.load(Ordering::Relaxed);
        (waiting > 0 && running > 0).then_some(running)
    }

    /// Requests the gateway has in flight here.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request with `prompt_tokens` was sent here and awaits its first byte.
    pub fn on_prefill(&self, prompt_tokens: u32) {
        self.prefilling.fetch_add(1, Ordering::Relaxed);
        self.prefilling_tokens
            .fetch_add(u64::from(prompt_tokens), Ordering::Relaxed);
    }

    /// A request counted by [`EndpointSignals::on_prefill`] got its first byte (or ended).
    pub fn on_prefilled(&self, prompt_tokens: u32) {
        saturating_sub(&self.prefilling, 1);
        saturating_sub(&self.prefilling_tokens, u64::from(prompt_tokens));
    }

    /// Requests awaiting their first byte here, and their prompt tokens.
    pub fn prefilling(&self) -> (f64, f64) {
        (
            self.prefilling.load(Ordering::Relaxed) as f64,
            self.prefilling_tokens.load(Ordering::Relaxed) as f64,
        )
    }

    /// Read the signals for a pick: each from the newest source within `stale_after`, plus the
    /// picks since that source's reading. With no fresh source for the queue, it reads as the
    /// gateway's in-flight count, and KV usage as unknown, so a silent endpoint is neither
    /// trusted nor starved.
    pub fn snapshot(&self, now: Instant, stale_after: Duration) -> SignalSnapshot {
        let within =
            |t: Option<Instant>| t.filter(|t| now.saturating_duration_since(*t) <= stale_after);
        let scrape_at = if self.last_failed.load(Ordering::Relaxed) {
            None
        } else {
            within(self.last_scrape())
        };
        let orca_at = within(self.last_orca());
        let in_flight_tokens = self.in_flight_tokens.load(Ordering::Relaxed) as f64;
        let blocks = self.num_gpu_blocks();
        let picked = self.picked_total.load(Ordering::Relaxed);
        let tokens = self.tokens_total.load(Ordering::Relaxed);
        let since =
            |total: u64, base: &AtomicU64| total.saturating_sub(base.load(Ordering::Relaxed));
        let orca = |slot: &AtomicU64| {
            orca_at
                .map(|t| (t, slot.load(Ordering::Relaxed)))
                .filter(|(_, v)| *v != ABSENT)
        };
        // The newer of a scraped and a reported reading; a tie goes to the report.
        let newest = |scraped: Option<(Instant, f64)>, reported: Option<(Instant, f64)>| match (
            scraped, reported,
        ) {
            (Some(s), Some(r)) if s.0 > r.0 => Some((s.1, false)),
            (_, Some(r)) => Some((r.1, true)),
            (s, None) => s.map(|s| (s.1, false)),
        };

        let waiting = newest(
            scrape_at.map(|t| (t, self.waiting.load(Ordering::Relaxed) as f64)),
            orca(&self.orca_waiting).map(|(t, v)| (t, v as f64)),
        )
        .map(|(v, reported)| {
            let base = if reported {
                &self.orca_picked
            } else {
                &self.scrape_picked
            };
            v + since(picked, base) as f64
        })
        .unwrap_or(self.in_flight() as f64);
        let running = newest(
            scrape_at.map(|t| (t, self.running.load(Ordering::Relaxed) as f64)),
            orca(&self.orca_running).map(|(t, v)| (t, v as f64)),
        )
        .map_or(0.0, |(v, _)| v);
        let scraped_kv = scrape_at
            .filter(|_| self.has_kv.load(Ordering::Relaxed))
            .map(|t| {
                (
                    t,
                    f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed)),
                )
            });
        let kv_usage = newest(
            scraped_kv,
            orca(&self.orca_kv_bits).map(|(t, v)| (t, f64::from_bits(v))),
        )
        .map(|(kv, reported)| {
            let base = if reported {
                &self.orca_tokens
            } else {
                &self.scrape_tokens
            };
            let extra = match blocks {
                0 => 0.0,
                b => since(tokens, base) as f64 / (b * KV_BLOCK_TOKENS) as f64,
            };
            (kv + extra).min(1.0)
        });
        SignalSnapshot {
            waiting,
            running,
            kv_usage,
            in_flight_tokens,
            num_gpu_blocks: blocks,
            fresh: scrape_at.is_some() || orca_at.is_some(),
        }
    }
}

fn f64_count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
