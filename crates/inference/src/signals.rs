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
//! Everything is atomics, except the LoRA adapter sets, which change rarely and sit behind an
//! `ArcSwap`; a pick reads them without locking.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

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
}

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
    picked_since_scrape: AtomicU64,
    tokens_since_scrape: AtomicU64,
    in_flight: AtomicU64,
    in_flight_tokens: AtomicU64,
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
    /// Whether the last scrape succeeded within `stale_after`.
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
            picked_since_scrape: AtomicU64::new(0),
            tokens_since_scrape: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_tokens: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// The gateway sent a request with `est_tokens` (prompt + expected output) to this endpoint.
    pub fn on_pick(&self, est_tokens: u32) {
        let t = u64::from(est_tokens);
        self.picked_since_scrape.fetch_add(1, Ordering::Relaxed);
        self.tokens_since_scrape.fetch_add(t, Ordering::Relaxed);
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
        self.picked_since_scrape.store(0, Ordering::Relaxed);
        self.tokens_since_scrape.store(0, Ordering::Relaxed);
        self.last_failed.store(false, Ordering::Relaxed);
        self.last_scrape
            .store(self.nanos(now) + 1, Ordering::Relaxed);
    }

    /// The last scrape failed (connect error, timeout, bad status or unparsable text).
    pub fn mark_failed(&self) {
        self.last_failed.store(true, Ordering::Relaxed);
    }

    /// When the last successful scrape happened.
    pub fn last_scrape(&self) -> Option<Instant> {
        match self.last_scrape.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Whether the data is current: the last scrape succeeded and is younger than `stale_after`.
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

    /// Requests the gateway has in flight here.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Read the signals for a pick. Stale endpoints report the gateway's in-flight count as
    /// their queue and no KV usage, so they are neither trusted nor starved.
    pub fn snapshot(&self, now: Instant, stale_after: Duration) -> SignalSnapshot {
        let fresh = self.is_fresh(now, stale_after);
        let in_flight_tokens = self.in_flight_tokens.load(Ordering::Relaxed) as f64;
        let blocks = self.num_gpu_blocks();
        if !fresh {
            return SignalSnapshot {
                waiting: self.in_flight() as f64,
                running: 0.0,
                kv_usage: None,
                in_flight_tokens,
                num_gpu_blocks: blocks,
                fresh,
            };
        }
        let picked = self.picked_since_scrape.load(Ordering::Relaxed) as f64;
        let kv_usage = self.has_kv.load(Ordering::Relaxed).then(|| {
            let kv = f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed));
            let extra = match blocks {
                0 => 0.0,
                b => {
                    self.tokens_since_scrape.load(Ordering::Relaxed) as f64
                        / (b * KV_BLOCK_TOKENS) as f64
                }
            };
            (kv + extra).min(1.0)
        });
        SignalSnapshot {
            waiting: self.waiting.load(Ordering::Relaxed) as f64 + picked,
            running: self.running.load(Ordering::Relaxed) as f64,
            kv_usage,
            in_flight_tokens,
            num_gpu_blocks: blocks,
            fresh,
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
mod tests {
    use super::*;

    #[test]
    fn picks_between_scrapes_count_until_the_next_scrape() {
        let s = EndpointSignals::new();
        let t0 = Instant::now();
        let stale = Duration::from_secs(1);
        assert!(!s.snapshot(t0, stale).fresh);
        s.apply_scrape(
            &ScrapedMetrics {
                waiting: Some(3.0),
                running: Some(10.0),
                kv_usage: Some(0.5),
                num_gpu_blocks: Some(1000),
                lora: None,
                models: None,
            },
            t0,
        );
        s.on_pick(1600);
        s.on_pick(1600);
        let snap = s.snapshot(t0, stale);
        assert!(snap.fresh);
        assert_eq!(snap.waiting, 5.0);
        assert_eq!(snap.running, 10.0);
        assert!((snap.kv_usage.unwrap() - 0.7).abs() < 1e-9);
        assert_eq!(snap.in_flight_tokens, 3200.0);
        // The next scrape already includes those requests.
        s.apply_scrape(
            &ScrapedMetrics {
                waiting: Some(5.0),
                ..Default::default()
            },
            t0,
        );
        let snap = s.snapshot(t0, stale);
        assert_eq!(snap.waiting, 5.0);
        assert_eq!(snap.kv_usage, Some(0.5));
        s.on_finish(1600);
        s.on_finish(1600);
        s.on_finish(1600);
        assert_eq!(s.snapshot(t0, stale).in_flight_tokens, 0.0);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn stale_or_failed_scrapes_fall_back_to_gateway_counts() {
        let s = EndpointSignals::new();
        let t0 = Instant::now();
        let stale = Duration::from_millis(200);
        s.apply_scrape(
            &ScrapedMetrics {
                waiting: Some(50.0),
                kv_usage: Some(0.9),
                ..Default::default()
            },
            t0,
        );
        s.on_pick(10);
        let late = s.snapshot(t0 + Duration::from_secs(1), stale);
        assert!(!late.fresh);
        assert_eq!((late.waiting, late.kv_usage), (1.0, None));
        assert!(s.snapshot(t0, stale).fresh);
        s.mark_failed();
        assert!(!s.snapshot(t0, stale).fresh);
        let lora = LoraState {
            running: vec!["a".into()],
            waiting: vec![],
            max_lora: 2,
        };
        s.apply_scrape(
            &ScrapedMetrics {
                lora: Some(lora.clone()),
                ..Default::default()
            },
            t0,
        );
        assert!(s.snapshot(t0, stale).fresh);
        assert_eq!(**s.lora(), lora);
    }
}
