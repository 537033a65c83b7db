//! The `inference` picker: filter, score, pick, in the shape of the Gateway API Inference
//! Extension's endpoint picker and the llm-d scheduler.
//!
//! 1. **Filter**: only available endpoints (`Endpoint::is_available`), minus saturated ones
//!    (waiting or KV usage over a threshold). If every available endpoint is saturated the pick
//!    still happens among all of them and the decision says `saturated`, so the caller can shed
//!    low-priority traffic instead (the EPP's "sheddable" behaviour).
//! 2. **Score**: the weighted scorers of [`crate::scorer`]; the total is normalised to 0..1.
//! 3. **Pick**: the best score, with a uniformly random choice among those within `tie_epsilon`
//!    of it, so that a burst arriving between two scrapes spreads over equally good replicas
//!    rather than herding onto the first.
//!
//! "Sticky until saturated": the prefix scorer keeps a prefix on its holder while the load
//! scorers allow, the saturation filter cuts it off; with [`crate::stickiness`] on, a cost
//! comparison after the score keeps it there longer.
//!
//! The picker does not change state while picking. After sending a request, the proxy calls
//! [`InferencePicker::record`] (prefix index + gateway-side load) and, when the response ends,
//! [`InferencePicker::finish`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_balance::Endpoint;

use crate::kv_index::KvIndex;
use crate::predictor::{Features, LatencyPredictor, Measured, Slo, Ticket};
use crate::prefix_index::PrefixIndex;
use crate::scorer::{scorers, ScoreContext, Scorer, Weights};
use crate::signals::{EndpointSignals, SignalSnapshot};

/// `record`, `finish` and the other calls that feed the picker after its pick.
#[path = "picker_feedback.rs"]
mod feedback;

/// What the two prefix indexes say of a request's prefix, and where a new one goes.
#[path = "picker_prefix.rs"]
mod prefix;
use prefix::PrefixKnown;

/// Picker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PickerConfig {
    pub weights: Weights,
    /// An endpoint with more waiting requests than this is saturated.
    pub max_waiting: f64,
    /// An endpoint with more KV-cache usage than this (0..1) is saturated; 1 (the default)
    /// leaves KV usage to the `kv_cache` scorer (see `switchyard_config::Saturation`).
    pub max_kv_usage: f64,
    /// Signals older than this are treated as unknown.
    pub stale_after: Duration,
    /// Scores within this of the best (on the 0..1 total) are ties, broken at random.
    pub tie_epsilon: f64,
    /// Tokens per prefix block (vLLM's block size, 16 by default).
    pub block_tokens: usize,
    /// Ask upstreams for ORCA load reports (`endpoint-load-metrics-format`) and fold those
    /// that carry queue or KV figures into the signals ([`InferencePicker::apply_load_report`]).
    pub orca: bool,
    /// Keep a request on its prefix's holder unless moving it pays ([`crate::stickiness`]).
    pub stickiness: crate::stickiness::PrefixStickiness,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            max_waiting: 128.0,
            max_kv_usage: 1.0,
            stale_after: Duration::from_millis(500),
            tie_epsilon: 0.01,
            block_tokens: 16,
            orca: true,
            stickiness: Default::default(),
        }
    }
}

/// What the picker needs to know about one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    /// [`crate::prompt_block_hashes_seeded`] of the prompt, with `block_tokens` per block.
    pub block_hashes: &'a [u64],
    /// [`crate::kv_index::token_block_keys`] of the prompt's tokens, when the picker has a
    /// [`KvIndex`] and the prompt could be tokenized as the engines do; empty otherwise.
    pub token_blocks: &'a [u64],
    /// Per endpoint, an oracle's count of the prompt's leading blocks cached there, to score
    /// in place of the KV-event index's stored blocks ([`crate::prefix_truth`], benchmarks
    /// only); empty otherwise.
    pub cached_truth: &'a [Option<usize>],
    /// The LoRA adapter the request needs ([`crate::InferenceRequest::adapter`]).
    pub adapter: Option<&'a str>,
    /// Estimated tokens: prompt plus expected output.
    pub est_tokens: u32,
    /// Estimated prompt tokens (a feature of the latency predictor).
    pub prompt_tokens: u32,
    /// The request's latency objectives (`x-slo-ttft-ms`, `x-slo-tpot-ms`); the predictor's
    /// default SLO fills what is unset.
    pub slo: Slo,
    /// Fill [`Decision::top`] (for `x-switchyard-debug: 1`).
    pub debug: bool,
}

/// Where a pick went relative to the request's prefix *holder*: the available endpoint with
/// the largest share of the prompt's blocks cached, as far as the picker knows. Counted per
/// pool, it shows what load balancing and the saturation filter cost in prefix-cache hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefixOutcome {
    /// No available endpoint is known to hold any of the prefix.
    #[default]
    Unheld = 0,
    /// To a holder.
    Holder,
    /// Away from a holder that was a candidate: its load, or the SLO, outweighed the hit.
    Moved,
    /// Away from holders that were all left out as saturated.
    HolderSaturated,
}

impl PrefixOutcome {
    /// Every outcome, each at the index of its discriminant.
    pub const ALL: [Self; 4] = [
        Self::Unheld,
        Self::Holder,
        Self::Moved,
        Self::HolderSaturated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unheld => "unheld",
            Self::Holder => "holder",
            Self::Moved => "moved",
            Self::HolderSaturated => "holder_saturated",
        }
    }

    /// `share` per endpoint (the hit share only) over the `available` ones of `0..n`, `chosen`
    /// the pick among `candidates`.
    fn of(
        share: impl Fn(usize) -> f64,
        n: usize,
        available: impl Fn(usize) -> bool,
        candidates: &[usize],
        chosen: usize,
    ) -> Self {
        let best = (0..n)
            .filter(|&i| available(i))
            .map(&share)
            .fold(0.0, f64::max);
        if best <= 0.0 {
            Self::Unheld
        } else if share(chosen) >= best {
            Self::Holder
        } else if candidates.iter().any(|&i| share(i) >= best) {
            Self::Moved
        } else {
            Self::HolderSaturated
        }
    }
}

/// One scored endpoint, for debug output.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub index: usize,
    pub score: f64,
    /// Per-scorer scores, by scorer name.
    pub parts: Vec<(&'static str, f64)>,
}

/// The outcome of one pick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// The chosen endpoint; `None` when none is available.
    pub index: Option<usize>,
    /// Every available endpoint was over a saturation threshold.
    pub saturated: bool,
    /// The best candidates, best first (at most 5; only when `debug` was asked).
    pub top: Vec<Scored>,
    /// How the SLO decision went, when the request had an SLO and the predictor was warm.
    pub slo: Option<crate::slo_pick::SloOutcome>,
    /// What the predictor learns from when the response ends ([`InferencePicker::observe`]).
    pub ticket: Option<Ticket>,
    /// The request's work on the chosen endpoint, in tokens: `est_tokens` less the prompt
    /// tokens cached there, as far as the picker knows. [`InferencePicker::record`] counts it
    /// as in flight.
    pub work_tokens: u32,
    /// Stickiness kept the request on its prefix's holder over the score's pick.
    pub sticky: Option<crate::stickiness::Kept>,
    /// Where the request went relative to the endpoint holding most of its prefix.
    pub prefix: PrefixOutcome,
}

/// Number of candidates reported in [`Decision::top`].
pub const DEBUG_TOP: usize = 5;

/// One endpoint as the picker sees it (see [`InferencePicker::endpoint_view`]).
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub signals: SignalSnapshot,
    /// Since the last successful scrape; `None` before the first.
    pub last_scrape_age: Option<Duration>,
    /// Whether the last scrape succeeded and is within `stale_after` (ORCA reports aside).
    pub scrape_fresh: bool,
    /// The last failed scrape's error and its age (also after a clean scrape since).
    pub last_scrape_error: Option<(crate::scrape::ScrapeError, Duration)>,
    pub lora_running: Vec<String>,
    pub lora_waiting: Vec<String>,
    /// Prefix-cache counters (queries, hits) as last scraped, cumulative.
    pub prefix_cache: Option<(f64, f64)>,
}

/// The `inference` picker for one pool. `signals[i]` and the prefix index's endpoint `i` belong
/// to `endpoints[i]` of every pick; endpoints beyond `signals` are scored as unknown.
pub struct InferencePicker {
    config: PickerConfig,
    scorers: Vec<(Box<dyn Scorer>, f64)>,
    weight_sum: f64,
    signals: Vec<Arc<EndpointSignals>>,
    prefix: Arc<PrefixIndex>,
    kv: Option<Arc<KvIndex>>,
    predictor: Option<Arc<LatencyPredictor>>,
}

impl std::fmt::Debug for InferencePicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePicker")
            .field("config", &self.config)
            .field("endpoints", &self.signals.len())
            .finish()
    }
}

const UNKNOWN: SignalSnapshot = SignalSnapshot {
    waiting: 0.0,
    running: 0.0,
    kv_usage: None,
    in_flight_tokens: 0.0,
    num_gpu_blocks: 0,
    fresh: false,
};

impl InferencePicker {
    /// A picker over `signals` (one per endpoint, in pool order) sharing `prefix`, which may be
    /// kept across config generations while endpoint positions stay the same.
    pub fn new(
        config: PickerConfig,
        signals: Vec<Arc<EndpointSignals>>,
        prefix: Arc<PrefixIndex>,
    ) -> Self {
        let scorers = scorers(&config.weights);
        let weight_sum = scorers
            .iter()
            .map(|(_, w)| w)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        Self {
            config,
            scorers,
            weight_sum,
            signals,
            prefix,
            kv: None,
            predictor: None,
        }
    }

    /// Predict each candidate's latency with `predictor` (kept across config generations
    /// while endpoint positions stay the same), train it on every pick, and decide requests
    /// with an SLO by it ([`crate::slo_pick`]).
    pub fn with_predictor(mut self, predictor: Arc<LatencyPredictor>) -> Self {
        self.predictor = Some(predictor);
        self
    }

    pub fn predictor(&self) -> Option<&Arc<LatencyPredictor>> {
        self.predictor.as_ref()
    }

    /// The response to a pick with `ticket` ended with `measured`: train the predictor.
    pub fn observe(&self, ticket: &Ticket, measured: Measured) {
        if let Some(p) = &self.predictor {
            p.observe(ticket, measured);
        }
    }

    /// Scores prefix hits from `kv` (the engines' KV events) for endpoints whose entries are
    /// fresh there; the approximate index still serves the others and is still recorded.
    pub fn with_kv_index(mut self, kv: Arc<KvIndex>) -> Self {
        self.kv = Some(kv);
        self
    }

    pub fn kv_index(&self) -> Option<&Arc<KvIndex>> {
        self.kv.as_ref()
    }

    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    pub fn prefix_index(&self) -> &Arc<PrefixIndex> {
        &self.prefix
    }

    /// Whether every endpoint's first scrape has come back (succeeded or failed).
    pub fn scraped_once(&self) -> bool {
        self.signals.iter().all(|s| s.scraped_once())
    }

    /// How many endpoints have fresh signals (a scrape or an ORCA report within
    /// `stale_after`). With none, every endpoint reads as its in-flight count and the pick is
    /// least-request in effect (prefix affinity aside).
    pub fn fresh_endpoints(&self, now: Instant) -> usize {
        self.signals
            .iter()
            .filter(|s| s.snapshot(now, self.config.stale_after).fresh)
            .count()
    }

    /// What the picker knows of endpoint `i` now, as it would score it, and the age of its last
    /// successful scrape: for operators (`/pools`), not the pick path.
    pub fn endpoint_view(&self, i: usize, now: Instant) -> Option<EndpointView> {
        let s = self.signals.get(i)?;
        let lora = s.lora();
        Some(EndpointView {
            signals: s.snapshot(now, self.config.stale_after),
            last_scrape_age: s.last_scrape().map(|t| now.saturating_duration_since(t)),
            scrape_fresh: s.is_fresh(now, self.config.stale_after),
            last_scrape_error: s
                .last_error()
                .map(|(e, t)| (e, now.saturating_duration_since(t))),
            lora_running: lora.running.clone(),
            lora_waiting: lora.waiting.clone(),
            prefix_cache: s.prefix_cache(),
        })
    }

    /// Whether a requested `model` names a LoRA adapter rather than a base model. vLLM serves
    /// each adapter under its own model name, so a client asks for `sql-lora` exactly as it
    /// asks for the base model, with no extra field. It is an adapter when some endpoint lists
    /// it among its running or waiting adapters; otherwise when some endpoint has LoRA enabled
    /// (`max_lora` reported) and the endpoints name their base models (the `model_name`
    /// label) and it is none of them. Without that data it is taken as a base model, which
    /// scores the same everywhere.
    pub fn is_adapter(&self, model: &str) -> bool {
        if self.config.weights.lora <= 0.0 {
            return false;
        }
        let mut lora_enabled = false;
        for s in &self.signals {
            let lora = s.lora();
            if lora.running.iter().chain(&lora.waiting).any(|a| a == model) {
                return true;
            }
            lora_enabled |= lora.max_lora > 0;
        }
        if !lora_enabled {
            return false;
        }
        let mut bases_known = false;
        for s in &self.signals {
            let models = s.models();
            if models.iter().any(|m| m == model) {
                return false;
            }
            bases_known |= !models.is_empty();
        }
        bases_known
    }

    /// Choose an endpoint for the request in `req`.
    pub fn pick(&self, endpoints: &[Endpoint], req: &RequestContext<'_>) -> Decision {
        self.pick_at(endpoints, req, Instant::now())
    }

    /// [`InferencePicker::pick`] with an explicit clock.
    pub fn pick_at(
        &self,
        endpoints: &[Endpoint],
        req: &RequestContext<'_>,
        now: Instant,
    ) -> Decision {
        let n = endpoints.len();
        let cfg = &self.config;
        let snapshots: Vec<SignalSnapshot> = (0..n)
            .map(|i| match self.signals.get(i) {
                Some(s) => s.snapshot(now, cfg.stale_after),
                None => UNKNOWN,
            })
            .collect();
        let available = |i: usize| endpoints[i].is_available();
        let saturated_at = |s: &SignalSnapshot| {
            s.waiting > cfg.max_waiting || s.kv_usage.is_some_and(|kv| kv > cfg.max_kv_usage)
        };
        let mut candidates: Vec<usize> = (0..n)
            .filter(|&i| available(i) && !saturated_at(&snapshots[i]))
            .collect();
        let mut saturated = false;
        if candidates.is_empty() {
            candidates = (0..n).filter(|&i| available(i)).collect();
            saturated = !candidates.is_empty();
        }
        if candidates.is_empty() {
            return Decision::default();
        }

        let prefix = if cfg.weights.prefix > 0.0 {
            self.prefix_known(req, n, now)
        } else {
            PrefixKnown::default()
        };
        // Work per candidate: the prompt tokens cached there are not prefilled again.
        let hit_share = |i: usize| prefix.share.get(i).copied().unwrap_or(0.0);
        let est = f64::from(req.est_tokens);
        let cached_max = f64::from(req.prompt_tokens).min(est);
        let new_tokens: Vec<f64> = (0..n).map(|i| est - hit_share(i) * cached_max).collect();
        let latency: Vec<Option<Duration>> = if cfg.weights.latency > 0.0 {
            endpoints.iter().map(|e| e.state.latency_at(now)).collect()
        } else {
            Vec::new()
        };
        let range = |f: &dyn Fn(usize) -> Option<f64>| {
            candidates
                .iter()
                .filter_map(|&i| f(i))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x), hi.max(x))
                })
        };
        let cx = ScoreContext {
            snapshots: &snapshots,
            prefix_share: &prefix.share,
            adapter: req.adapter,
            signals: &self.signals,
            new_tokens: &new_tokens,
            latency: &latency,
            waiting_range: range(&|i| Some(snapshots[i].waiting)),
            tokens_range: range(&|i| Some(snapshots[i].in_flight_tokens + new_tokens[i])),
            latency_range: range(&|i| latency.get(i).copied().flatten().map(|d| d.as_secs_f64())),
        };

        let totals: Vec<f64> = candidates
            .iter()
            .map(|&i| {
                self.scorers
                    .iter()
                    .map(|(s, w)| w * s.score(&cx, i))
                    .sum::<f64>()
                    / self.weight_sum
            })
            .collect();
        let best = totals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let owner = self.new_prefix_owner(endpoints, req, &prefix, &candidates, &totals, best);
        // Else reservoir-sample one of the near-best candidates.
        let mut chosen = candidates[0];
        let mut ties = 0u32;
        for (&i, &t) in candidates.iter().zip(&totals) {
            if t >= best - cfg.tie_epsilon {
                ties += 1;
                if fastrand::u32(0..ties) == 0 {
                    chosen = i;
                }
            }
        }
        if let Some(o) = owner {
            chosen = o;
        }

        let features = |p: &LatencyPredictor, i: usize| {
            let signals = self.signals.get(i);
            let prefilling = signals.map_or((0.0, 0.0), |s| s.prefilling());
            let limit = signals.and_then(|s| s.full_batch());
            let ahead = (p.backlog_ms(i, now), p.slot_wait_ms(i, limit, now));
            let prompt = f64::from(req.prompt_tokens);
            Features::new(prompt, hit_share(i), &snapshots[i], prefilling, ahead)
        };
        let place = |i: usize| crate::stickiness::Place {
            endpoint: i,
            hit_share: hit_share(i),
            waiting: snapshots[i].waiting,
            new_tokens: new_tokens[i],
            kv_usage: snapshots[i].kv_usage,
            saturated: saturated_at(&snapshots[i]),
            predicted_ttft_ms: self
                .predictor
                .as_ref()
                .and_then(|p| p.with_model(|m| Some(m?.predict(i, &features(p, i)).ttft_ms))),
        };
        let min_kv = range(&|i| snapshots[i].kv_usage).0;
        let (least, stick) = ((cx.waiting_range.0, min_kv), &cfg.stickiness);
        let sticky =
            crate::stickiness::apply(stick, &candidates, &totals, least, &mut chosen, place);

        let (slo, ticket) = match &self.predictor {
            Some(p) => {
                let features = |i: usize| features(p, i);
                let (slo, predicted) =
                    crate::slo_pick::decide(p, req.slo, &candidates, &features, &mut chosen);
                let ticket = Ticket {
                    endpoint: chosen,
                    features: features(chosen),
                    predicted,
                    ends_at: 0,
                };
                (slo, Some(ticket))
            }
            None => (None, None),
        };

        let top = if req.debug {
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]));
            order
                .into_iter()
                .take(DEBUG_TOP)
                .map(|k| Scored {
                    index: candidates[k],
                    score: totals[k],
                    parts: self
                        .scorers
                        .iter()
                        .map(|(s, _)| (s.name(), s.score(&cx, candidates[k])))
                        .collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let prefix = PrefixOutcome::of(hit_share, n, available, &candidates, chosen);
        Decision {
            index: Some(chosen),
            saturated,
            prefix,
            top,
            slo,
            ticket,
            work_tokens: new_tokens[chosen].round().max(0.0) as u32,
            // An SLO decision may have moved the request again.
            sticky: sticky.filter(|k| k.kept == chosen),
        }
    }
}

#[cfg(test)]
#[path = "picker_tests.rs"]
mod tests;
