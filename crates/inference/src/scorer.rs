//! Scorers: each rates one aspect of one endpoint for one request, in 0..1, higher is better.
//!
//! This is the llm-d scheduler's design (itself grown from the Gateway API Inference Extension's
//! EPP filters): several small scorers, each blind to the others, combined by a weighted sum, so
//! that a deployment tunes behaviour by weights rather than by code. Scores are normalised
//! across the candidate endpoints where the raw quantity has no natural scale (queue length,
//! tokens in flight, latency) and absolute where it has one (KV usage, matched-prefix fraction).
//! The min–max normalisation has a floor on its spread, so that 0 versus 1 waiting request is
//! not treated like 0 versus 100: without it a tiny difference would override prefix affinity.

use std::time::Duration;

use crate::signals::{EndpointSignals, SignalSnapshot};

/// Everything scorers may read about one pick. Slices are indexed by endpoint position.
#[derive(Debug)]
pub struct ScoreContext<'a> {
    pub snapshots: &'a [SignalSnapshot],
    /// Share (0..1) of the request's leading prefix blocks each endpoint holds: known from its
    /// KV events where those are fresh ([`crate::kv_index`]), else as guessed by
    /// [`crate::prefix_index`].
    pub prefix_share: &'a [f64],
    /// The LoRA adapter the request needs, if any.
    pub adapter: Option<&'a str>,
    /// Per-endpoint signals (LoRA state); shorter than the pool when some have none.
    pub signals: &'a [std::sync::Arc<EndpointSignals>],
    /// Tokens this request would add to each endpoint's work: its expected output plus the
    /// prompt tokens not cached there (empty: none counted).
    pub new_tokens: &'a [f64],
    /// Peak-EWMA latency per endpoint, when known.
    pub latency: &'a [Option<Duration>],
    /// Min and max over the candidates of waiting requests, in-flight tokens and latency (s).
    pub waiting_range: (f64, f64),
    pub tokens_range: (f64, f64),
    pub latency_range: (f64, f64),
}

/// Rates one endpoint for the request in `cx`.
pub trait Scorer: Send + Sync {
    /// Short name for debug output and config (`queue`, `kv_cache`, ...).
    fn name(&self) -> &'static str;
    /// A score in 0..1, higher is better.
    fn score(&self, cx: &ScoreContext<'_>, endpoint: usize) -> f64;
}

/// `1 - (x - min) / max(max - min, floor)`: 1 for the best candidate, falling linearly.
fn lower_is_better(x: f64, (min, max): (f64, f64), floor: f64) -> f64 {
    let spread = (max - min).max(floor);
    if spread <= 0.0 {
        return 1.0;
    }
    (1.0 - (x - min) / spread).clamp(0.0, 1.0)
}

/// Fewer waiting requests is better (scraped queue plus picks since the scrape).
#[derive(Debug, Clone)]
pub struct QueueScorer {
    /// Spread floor in requests.
    pub floor: f64,
}

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        "queue"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        lower_is_better(cx.snapshots[e].waiting, cx.waiting_range, self.floor)
    }
}

/// Lower KV-cache usage is better; a replica near full will queue or preempt. Unknown is 0.5.
#[derive(Debug, Clone)]
pub struct KvCacheScorer;

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        "kv_cache"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        cx.snapshots[e].kv_usage.map_or(0.5, |kv| 1.0 - kv)
    }
}

/// Less work in flight from this gateway, this request's included, is better: it sees a burst
/// before any scrape does, and weighs a 4k-token prompt above a 40-token one. Work is tokens to
/// compute: a prompt's tokens cached where it is sent cost next to nothing there, so they are
/// not counted, neither for the requests in flight nor for this one ([`ScoreContext::new_tokens`]).
/// Counted whole, a replica serving a hot prefix looked busiest exactly because it holds it, and
/// the load terms moved conversations off it, to be prefilled again elsewhere.
#[derive(Debug, Clone)]
pub struct InFlightTokensScorer {
    /// Spread floor in tokens.
    pub floor: f64,
}

/// Endpoint `e`'s work in flight with the request placed there.
pub fn work_after(cx: &ScoreContext<'_>, e: usize) -> f64 {
    cx.snapshots[e].in_flight_tokens + cx.new_tokens.get(e).copied().unwrap_or(0.0)
}

impl Scorer for InFlightTokensScorer {
    fn name(&self) -> &'static str {
        "in_flight"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        lower_is_better(work_after(cx, e), cx.tokens_range, self.floor)
    }
}

/// Fraction of the request's prefix blocks the endpoint probably has cached (vLLM automatic
/// prefix caching; llm-d's prefix-cache scorer; SGLang's cache-aware routing).
#[derive(Debug, Clone)]
pub struct PrefixScorer;

impl Scorer for PrefixScorer {
    fn name(&self) -> &'static str {
        "prefix"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        cx.prefix_share
            .get(e)
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 1.0)
    }
}

/// LoRA affinity, as the EPP's LoRA filter: 1 when the adapter is already running there, 0.5
/// when it can be loaded (a free adapter slot, or unknown), 0 when it would have to wait for a
/// slot. Slots count every adapter running or waiting there (a waiting one is about to take a
/// slot). Requests for a base model score 1 everywhere.
#[derive(Debug, Clone)]
pub struct LoraScorer;

impl Scorer for LoraScorer {
    fn name(&self) -> &'static str {
        "lora"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        let Some(adapter) = cx.adapter else {
            return 1.0;
        };
        let Some(signals) = cx.signals.get(e) else {
            return 0.5;
        };
        let lora = signals.lora();
        if lora.running.iter().any(|a| a == adapter) {
            return 1.0;
        }
        let waiting_new = lora
            .waiting
            .iter()
            .enumerate()
            .filter(|(i, a)| !lora.running.contains(a) && !lora.waiting[..*i].contains(a))
            .count();
        let active = lora.running.len() + waiting_new;
        if lora.max_lora == 0 || active < lora.max_lora as usize {
            0.5
        } else {
            0.0
        }
    }
}

/// Lower peak-EWMA latency is better (from `balance::EndpointState`); unknown is 0.5. Off in
/// the default profile: for LLM traffic latency mostly reflects output length, not the server.
#[derive(Debug, Clone)]
pub struct LatencyScorer;

impl Scorer for LatencyScorer {
    fn name(&self) -> &'static str {
        "latency"
    }
    fn score(&self, cx: &ScoreContext<'_>, e: usize) -> f64 {
        match cx.latency.get(e).copied().flatten() {
            Some(l) => lower_is_better(l.as_secs_f64(), cx.latency_range, 0.0),
            None => 0.5,
        }
    }
}

/// Scorer weights: the config's `weights:` of the `inference` balancer, the one definition
/// (defaults included) of which scorers count and how much.
pub use switchyard_config::InferenceWeights as Weights;

/// The scorers with a positive weight, paired with it.
pub fn scorers(weights: &Weights) -> Vec<(Box<dyn Scorer>, f64)> {
    let all: [(Box<dyn Scorer>, f64); 6] = [
        (Box::new(QueueScorer { floor: 4.0 }), weights.queue),
        (Box::new(KvCacheScorer), weights.kv_cache),
        (Box::new(PrefixScorer), weights.prefix),
        (Box::new(LoraScorer), weights.lora),
        (
            Box::new(InFlightTokensScorer { floor: 4096.0 }),
            weights.in_flight,
        ),
        (Box::new(LatencyScorer), weights.latency),
    ];
    all.into_iter()
        .filter(|(_, w)| w.is_finite() && *w > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{LoraState, ScrapedMetrics};
    use std::sync::Arc;
    use std::time::Instant;

    fn snap(waiting: f64, kv: Option<f64>, tokens: f64) -> SignalSnapshot {
        SignalSnapshot {
            waiting,
            running: 0.0,
            kv_usage: kv,
            in_flight_tokens: tokens,
            num_gpu_blocks: 0,
            fresh: true,
        }
    }

    #[test]
    fn each_scorer_orders_endpoints_sensibly() {
        let snaps = [
            snap(0.0, Some(0.2), 0.0),
            snap(20.0, Some(0.9), 8192.0),
            snap(1.0, None, 100.0),
        ];
        let sig: Vec<Arc<EndpointSignals>> =
            (0..3).map(|_| Arc::new(EndpointSignals::new())).collect();
        let lora = |running: &[&str], max| ScrapedMetrics {
            lora: Some(LoraState {
                running: running.iter().map(|s| s.to_string()).collect(),
                waiting: vec![],
                max_lora: max,
            }),
            ..Default::default()
        };
        sig[0].apply_scrape(&lora(&["a"], 2), Instant::now());
        sig[1].apply_scrape(&lora(&["b", "c"], 2), Instant::now());
        sig[2].apply_scrape(&lora(&["b"], 2), Instant::now());
        let latency = [
            Some(Duration::from_millis(10)),
            Some(Duration::from_millis(30)),
            None,
        ];
        let cx = ScoreContext {
            snapshots: &snaps,
            prefix_share: &[0.5, 0.0, 1.0],
            adapter: Some("a"),
            signals: &sig,
            new_tokens: &[],
            latency: &latency,
            waiting_range: (0.0, 20.0),
            tokens_range: (0.0, 8192.0),
            latency_range: (0.01, 0.03),
        };
        let s = |sc: &dyn Scorer| [0, 1, 2].map(|e| sc.score(&cx, e));
        assert_eq!(s(&QueueScorer { floor: 4.0 }), [1.0, 0.0, 0.95]);
        assert_eq!(s(&KvCacheScorer), [0.8, 1.0 - 0.9, 0.5]);
        assert_eq!(s(&PrefixScorer), [0.5, 0.0, 1.0]);
        assert_eq!(s(&LoraScorer), [1.0, 0.0, 0.5]);
        // Adapters waiting there take slots too: `b` runs, `c` waits (twice), no slot for `a`.
        sig[2].apply_scrape(
            &ScrapedMetrics {
                lora: Some(LoraState {
                    running: vec!["b".into()],
                    waiting: vec!["c".into(), "c".into(), "b".into()],
                    max_lora: 3,
                }),
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(LoraScorer.score(&cx, 2), 0.5);
        sig[2].apply_scrape(
            &ScrapedMetrics {
                lora: Some(LoraState {
                    running: vec!["b".into()],
                    waiting: vec!["c".into(), "c".into(), "b".into()],
                    max_lora: 2,
                }),
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(LoraScorer.score(&cx, 2), 0.0);
        assert_eq!(s(&LatencyScorer), [1.0, 0.0, 0.5]);
        let t = s(&InFlightTokensScorer { floor: 4096.0 });
        assert_eq!(t[0], 1.0);
        assert_eq!(t[1], 0.0);
        // The floor keeps small differences small.
        let q = lower_is_better(1.0, (0.0, 1.0), 4.0);
        assert_eq!(q, 0.75);
        assert_eq!(lower_is_better(3.0, (3.0, 3.0), 0.0), 1.0);
    }

    #[test]
    fn default_profile() {
        let names: Vec<_> = scorers(&Weights::default())
            .iter()
            .map(|(s, w)| (s.name(), *w))
            .collect();
        assert_eq!(
            names,
            [
                ("queue", 2.0),
                ("kv_cache", 2.0),
                ("prefix", 3.0),
                ("lora", 1.0),
                ("in_flight", 1.0)
            ]
        );
    }
}
