//! Predicted latency: an online model per pool of each endpoint's time to first token (TTFT)
//! and time per output token (TPOT), from what the picker knows at pick time, trained on what
//! the gateway itself measures when the response ends.
//!
//! llm-d's predicted-latency scorer retrains XGBoost models in a sidecar; it assumes identical
//! pods, streaming requests and a p90 target. This one is smaller and in process, and covers
//! what that one cannot:
//!
//! * **The model** is linear in a handful of features ([`Features`]: uncached and cached prompt
//!   tokens, queue, running, KV use, in-flight tokens, the prefill backlog ahead (below), and
//!   the requests and prompt tokens the gateway sent that await their first byte), fitted by
//!   weighted ridge regression with weights 1/y², which minimises *relative* error (what MAPE
//!   measures) rather than letting the slowest requests dominate. Each load bucket (below) gets
//!   weights of its own, shrunk toward the pool-wide fit, so the model is piecewise linear in
//!   load: a queue behind a full batch does not cost what a queue behind a half-empty one does. A 20×20 solve over at most a
//!   thousand samples takes well under a millisecond; it runs every `refit_every` samples on the
//!   path that reports them (amortised, never on the pick), and picks read the result through
//!   an `ArcSwap` without locking.
//! * **Queueing**: a request's TTFT is mostly the prefill work ahead of it on the engine plus
//!   its own, and how much of the work ahead is left depends on *when* it was sent: a prompt
//!   sent 30 ms ago is mostly done, one sent 1 ms ago is all ahead (at steady load on simulated
//!   fleets this was the largest error: 20–30% on requests that found another prefilling, 6–8%
//!   on those that did not). So each endpoint keeps a fluid queue of the prefill work the
//!   gateway sent it, in milliseconds of that endpoint's own fitted speed: a send adds the
//!   request's predicted TTFT on an idle endpoint after the current backlog drains
//!   (`drain_at = max(drain_at, now) + work`), time drains it, and an endpoint with nothing
//!   left awaiting its first byte is drained. The backlog at pick time (`drain_at − now`) is a
//!   feature. One atomic per endpoint; nothing here is simulator-specific: it is what the
//!   gateway sent and when, and the first bytes it saw.
//! * **Full batches**: at full load a request waits for a batch slot more than for prefill. The
//!   wait until the endpoint's batch frees one, from the predicted ends of what the gateway has
//!   in flight there ([`crate::batch_slots`]), is a feature too.
//! * **Mixed hardware**: a multiplicative scale per endpoint (TTFT and TPOT both ≈ `s_e × w·x`),
//!   refitted by alternating least squares after each fit and normalised to a geometric mean of
//!   one. A replica at half speed gets `s_e ≈ 2` instead of biasing one global fit for every pod.
//! * **Non-streaming requests** show no first token: only their total latency and output tokens
//!   are known. Since `total = TTFT + n × TPOT = a·x + n (b·x)` is linear in the joint
//!   parameters `(a, b)` over the features `(x, n·x)`, such a sample is one more row of the same
//!   regression; a stream gives a TTFT row and a TPOT row. Both kinds train one model.
//! * **Rare load levels** are not forgotten: samples live in buckets keyed by the endpoint's load
//!   (queue + running, in powers of two), each a bounded ring, so an hour at low load does not
//!   flush what the model saw in the last burst.
//! * **Tail targets**: at each fit, the configured quantile (`quantile: 0.9` by default; 0.99
//!   for a p99 SLO) of measured over predicted latency, over the window's samples as the *new*
//!   model predicts them, is the margin an SLO decision multiplies predictions by
//!   ([`Model::margined`]). Ratios recorded against the predictions made at pick time would
//!   keep a stale model's errors: the first fits, from a few dozen warm-up samples, predicted
//!   near zero for loads they had not seen, their ratios ran to the thousands, and with
//!   sheddable traffic the margin they set refused nearly every request, so few new ratios
//!   came to replace them (2,152 of 2,515 shed on a simulated fleet).
//!
//! Prediction error is measured online, on the prediction made at pick time: the absolute
//! percentage error of each TTFT (and of each total latency) goes to the pool's metrics, and
//! [`LatencyPredictor::ttft_mape`] is the mean over the last 256 streamed responses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::predictor_fit::{fit_buckets, fit_scales, margins, Thetas};
use crate::signals::SignalSnapshot;

/// Number of features per candidate (the first is the constant 1).
pub const FEATURES: usize = 11;
/// Index of the batch-slot wait in [`Features`].
const SLOT_WAIT: usize = 10;
pub(crate) const PARAMS: usize = 2 * FEATURES;
/// Load buckets: queue + running of 0, 1, 2–3, 4–7, ..., 64 and more.
pub(crate) const BUCKETS: usize = 8;
/// Errors kept for the rolling MAPE.
const ERRORS: usize = 256;
/// Samples an endpoint needs in the window before its own scale is fitted.
pub(crate) const MIN_SCALE_SAMPLES: usize = 8;
/// Floor of any target, in ms: keeps 1/y² weights finite.
pub(crate) const MIN_TARGET_MS: f64 = 0.1;

/// Settings of one pool's predictor (`balancer: {kind: inference, predictor: {...}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct PredictorConfig {
    /// Samples kept per load bucket (8 buckets).
    pub bucket_samples: usize,
    /// Refit after this many new samples.
    pub refit_every: usize,
    /// Samples needed before predictions are used at all.
    pub min_samples: usize,
    /// Quantile of measured/predicted ratios used as the SLO margin (0.5–0.999).
    pub quantile: f64,
    /// Share of SLO picks sent to a random feasible endpoint, so the model keeps learning about
    /// endpoints it would not choose.
    pub explore: f64,
    /// SLOs for requests that carry none.
    pub default_slo: Slo,
    /// Which feasible endpoint an SLO pick takes.
    pub selection: Selection,
    /// Hold requests no endpoint is predicted to serve in time ([`crate::slo_queue`]).
    pub queue: Option<crate::slo_queue::QueueConfig>,
    /// Engine priority for requests predicted late everywhere ([`crate::SloOutcome::Late`]).
    pub late_priority: Option<i64>,
}

/// How a feasible candidate is chosen ([`crate::slo_pick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// The feasible candidate furthest from the SLO (spread; the default).
    #[default]
    LowestLatency,
    /// The feasible candidate closest to it (pack, as llm-d).
    LeastHeadroom,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        Self {
            bucket_samples: 128,
            refit_every: 16,
            min_samples: 64,
            quantile: 0.9,
            explore: 0.02,
            default_slo: Slo::default(),
            selection: Selection::LowestLatency,
            queue: None,
            late_priority: None,
        }
    }
}

/// A request's latency objectives, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

impl Slo {
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some()
    }

    /// This SLO, with `defaults` for the objectives it does not set.
    pub fn or(self, defaults: Slo) -> Slo {
        Slo {
            ttft_ms: self.ttft_ms.or(defaults.ttft_ms),
            tpot_ms: self.tpot_ms.or(defaults.tpot_ms),
        }
    }
}

/// Longest SLO a header may ask for (10 minutes).
pub const MAX_SLO_MS: u32 = 600_000;

/// An `x-slo-ttft-ms` / `x-slo-tpot-ms` value: a whole number of milliseconds, 1 to
/// [`MAX_SLO_MS`], nothing else (no sign, unit, spaces or fraction). Anything else is `None`,
/// and the gateway ignores the header.
pub fn parse_slo_ms(value: &[u8]) -> Option<f64> {
    if value.is_empty() || value.len() > 6 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    (1..=MAX_SLO_MS).contains(&n).then_some(f64::from(n))
}

/// One candidate's features at pick time, scaled to similar magnitudes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Features(pub [f64; FEATURES]);

impl Features {
    /// Features of a request with `prompt_tokens`, of which `prefix_share` (0..1) is expected
    /// in the endpoint's cache, on an endpoint whose signals are `s`, where `prefilling`
    /// (requests, their prompt tokens) await their first byte
    /// ([`crate::EndpointSignals::prefilling`]), `backlog_ms` of prefill work is predicted
    /// ahead ([`LatencyPredictor::backlog_ms`]) and a batch slot is predicted free in
    /// `slot_wait_ms` ([`LatencyPredictor::slot_wait_ms`]).
    pub fn new(
        prompt_tokens: f64,
        prefix_share: f64,
        s: &SignalSnapshot,
        prefilling: (f64, f64),
        (backlog_ms, slot_wait_ms): (f64, f64),
    ) -> Self {
        let share = prefix_share.clamp(0.0, 1.0);
        Features([
            1.0,
            prompt_tokens * (1.0 - share) / 1000.0,
            prompt_tokens * share / 1000.0,
            s.waiting / 8.0,
            s.running / 32.0,
            s.kv_usage.unwrap_or(0.0),
            s.in_flight_tokens / 10_000.0,
            backlog_ms / 100.0,
            prefilling.1 / 1000.0,
            prefilling.0 / 8.0,
            slot_wait_ms / 100.0,
        ])
    }

    /// The `slot_wait_ms` these features were made with.
    pub fn slot_wait_ms(&self) -> f64 {
        self.0[SLOT_WAIT] * 100.0
    }

    /// Whether the endpoint had requests waiting at its last scrape, or a full batch by the
    /// predicted ends of what is in flight there.
    pub fn queueing(&self) -> bool {
        self.0[3] > 0.0 || self.0[SLOT_WAIT] > 0.0
    }

    /// These features as if the endpoint's batch had room.
    pub fn without_slot_wait(mut self) -> Self {
        self.0[SLOT_WAIT] = 0.0;
        self
    }

    /// The load bucket: queue + running in powers of two.
    pub(crate) fn bucket(&self) -> usize {
        let load = (self.0[3] * 8.0 + self.0[4] * 32.0).max(0.0) as u64;
        (u64::BITS - load.leading_zeros()).min(BUCKETS as u32 - 1) as usize
    }
}

/// Predicted latencies of one candidate, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prediction {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

/// What the gateway measured of one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measured {
    /// A stream: time to its first chunk, and per output token after it when known.
    Stream { ttft_ms: f64, tpot_ms: Option<f64> },
    /// A non-streamed response: its whole latency and output tokens.
    Total { latency_ms: f64, output_tokens: u32 },
}

/// What a pick remembers for training: the chosen endpoint, its features then, and what was
/// predicted for it (when the model was warm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticket {
    pub endpoint: usize,
    pub features: Features,
    pub predicted: Option<Prediction>,
    /// Its predicted end as tracked for the endpoint's batch ([`LatencyPredictor::track_end`];
    /// 0: not tracked).
    pub ends_at: u64,
}

/// A fitted model: shared weights, per-endpoint scales and the SLO margins.
#[derive(Debug, Clone)]
pub struct Model {
    /// Weights per load bucket ([`Features::bucket`]).
    theta: Thetas,
    /// The idle bucket's TTFT weights of the constant, uncached and cached tokens (at scale 1):
    /// what a request adds to its endpoint's backlog. (Not the tokens' weight alone: with
    /// prompts of one length that is not separable from the constant.)
    idle: [f64; 3],
    scale: Vec<f64>,
    margin_ttft: f64,
    margin_tpot: f64,
}

impl Model {
    /// The mean prediction for `endpoint` with features `x`.
    #[inline]
    pub fn predict(&self, endpoint: usize, x: &Features) -> Prediction {
        let s = self.scale.get(endpoint).copied().unwrap_or(1.0);
        let theta = &self.theta[x.bucket()];
        let (mut a, mut b) = (0.0, 0.0);
        for k in 0..FEATURES {
            a += theta[k] * x.0[k];
            b += theta[FEATURES + k] * x.0[k];
        }
        Prediction {
            ttft_ms: (s * a).max(MIN_TARGET_MS),
            tpot_ms: (s * b).max(MIN_TARGET_MS),
        }
    }

    /// A prediction raised by the margins: what an SLO is checked against.
    #[inline]
    pub fn margined(&self, p: Prediction) -> Prediction {
        Prediction {
            ttft_ms: p.ttft_ms * self.margin_ttft,
            tpot_ms: p.tpot_ms * self.margin_tpot,
        }
    }

    /// The endpoint's fitted speed scale (1 = the pool's typical endpoint; 2 = twice as slow).
    pub fn scale(&self, endpoint: usize) -> f64 {
        self.scale.get(endpoint).copied().unwrap_or(1.0)
    }

    pub fn margins(&self) -> (f64, f64) {
        (self.margin_ttft, self.margin_tpot)
    }

    /// Predicted TTFT of a request with features `x` on `endpoint` were it idle, in ms.
    #[inline]
    pub fn idle_ttft_ms(&self, endpoint: usize, x: &Features) -> f64 {
        let t = self.idle[0] + self.idle[1] * x.0[1] + self.idle[2] * x.0[2];
        self.scale(endpoint) * t.max(0.0)
    }
}

/// Metric handles a predictor reports to (the pool's).
#[derive(Debug, Clone, Default)]
pub struct PredictorMetrics {
    /// Absolute percentage error (0.1 = 10%) of each streamed response's TTFT prediction.
    pub ttft_error: Option<prometheus_client::metrics::histogram::Histogram>,
    /// The same for each response's total latency (streamed or not).
    pub latency_error: Option<prometheus_client::metrics::histogram::Histogram>,
    /// SLO picks by outcome: met, explored, infeasible (sent anyway), shed, late (sent anyway).
    pub slo_picks: Option<[prometheus_client::metrics::counter::Counter; 5]>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) x: Features,
    pub(crate) endpoint: u16,
    pub(crate) measured: Measured,
}

/// A bounded ring.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    pub(crate) items: Vec<T>,
    next: usize,
    cap: usize,
}

impl<T> Ring<T> {
    fn new(cap: usize) -> Self {
        Self {
            items: Vec::new(),
            next: 0,
            cap: cap.max(1),
        }
    }

    fn push(&mut self, t: T) {
        if self.items.len() < self.cap {
            self.items.push(t);
        } else {
            self.items[self.next] = t;
        }
        self.next = (self.next + 1) % self.cap;
    }
}

#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) buckets: Vec<Ring<Sample>>,
    since_fit: usize,
    ttft_error: Ring<f64>,
    pub(crate) scale: Vec<f64>,
}

/// One pool's latency predictor.
#[derive(Debug)]
pub struct LatencyPredictor {
    config: PredictorConfig,
    endpoints: usize,
    model: ArcSwapOption<Model>,
    window: Mutex<Window>,
    metrics: PredictorMetrics,
    /// Per endpoint: when the prefill work the gateway sent it is predicted to drain, in
    /// nanoseconds since `epoch` (0: drained).
    drain_at: Vec<AtomicU64>,
    /// Per endpoint: the predicted ends of the requests in flight there.
    pub(crate) slots: crate::batch_slots::BatchSlots,
    epoch: Instant,
    queue: Option<crate::slo_queue::SloQueue>,
}

impl LatencyPredictor {
    /// A cold predictor for a pool of `endpoints`.
    pub fn new(config: PredictorConfig, endpoints: usize, metrics: PredictorMetrics) -> Self {
        let window = Window {
            buckets: (0..BUCKETS)
                .map(|_| Ring::new(config.bucket_samples))
                .collect(),
            since_fit: 0,
            ttft_error: Ring::new(ERRORS),
            scale: vec![1.0; endpoints],
        };
        Self {
            endpoints,
            model: ArcSwapOption::empty(),
            window: Mutex::new(window),
            metrics,
            drain_at: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            slots: crate::batch_slots::BatchSlots::new(endpoints),
            epoch: Instant::now(),
            queue: config.queue.map(crate::slo_queue::SloQueue::new),
            config,
        }
    }

    /// The pool's SLO queue, when configured.
    pub fn queue(&self) -> Option<&crate::slo_queue::SloQueue> {
        self.queue.as_ref()
    }

    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Prefill work predicted ahead of a request sent to `endpoint` at `now`, in ms.
    pub fn backlog_ms(&self, endpoint: usize, now: Instant) -> f64 {
        let Some(d) = self.drain_at.get(endpoint) else {
            return 0.0;
        };
        d.load(Ordering::Relaxed).saturating_sub(self.nanos(now)) as f64 / 1e6
    }

    /// A request with features `x` was sent to `endpoint` at `now`: its predicted TTFT on an
    /// idle endpoint joins the endpoint's backlog (nothing until the model is warm).
    pub fn on_sent(&self, endpoint: usize, x: &Features, now: Instant) {
        let (Some(d), Some(work)) = (
            self.drain_at.get(endpoint),
            self.with_model(|m| m.map(|m| m.idle_ttft_ms(endpoint, x))),
        ) else {
            return;
        };
        if !(work.is_finite() && work > 0.0) {
            return;
        }
        let now = self.nanos(now);
        let add = (work.min(3.6e6) * 1e6) as u64;
        let _ = d.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.max(now).saturating_add(add))
        });
    }

    /// Nothing the gateway sent `endpoint` awaits its first byte any more: its backlog is gone,
    /// whatever was predicted.
    pub fn on_drained(&self, endpoint: usize) {
        if let Some(d) = self.drain_at.get(endpoint) {
            d.store(0, Ordering::Relaxed);
        }
    }

    pub fn config(&self) -> &PredictorConfig {
        &self.config
    }

    /// The current model; `None` until `min_samples` have been seen.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.load_full()
    }

    /// Read the model for one pick (a lock-free load, no reference count change).
    pub fn with_model<R>(&self, f: impl FnOnce(Option<&Model>) -> R) -> R {
        let guard = self.model.load();
        f(guard.as_deref())
    }

    /// Mean absolute percentage error of the last 256 streamed TTFT predictions, once there
    /// are 16 of them.
    pub fn ttft_mape(&self) -> Option<f64> {
        let w = self.window.lock().ok()?;
        let e = &w.ttft_error.items;
        (e.len() >= 16).then(|| e.iter().sum::<f64>() / e.len() as f64)
    }

    /// Count one SLO pick: its outcome, and whether it was shed.
    pub fn count_slo(&self, outcome: crate::slo_pick::SloOutcome, shed: bool) {
        use crate::slo_pick::SloOutcome;
        if let Some(c) = &self.metrics.slo_picks {
            let k = match (outcome, shed) {
                (_, true) => 3,
                (SloOutcome::Met, _) => 0,
                (SloOutcome::Explored, _) => 1,
                (SloOutcome::Infeasible, _) => 2,
                (SloOutcome::Late, _) => 4,
            };
            c[k].inc();
        }
    }

    /// Samples now in the window.
    pub fn samples(&self) -> usize {
        self.window
            .lock()
            .map_or(0, |w| w.buckets.iter().map(|b| b.items.len()).sum())
    }

    /// A response picked with `ticket` ended with `measured`: learn from it, record the error
    /// of the prediction made at pick time, and refit when due.
    pub fn observe(&self, ticket: &Ticket, measured: Measured) {
        let Ok(endpoint) = u16::try_from(ticket.endpoint) else {
            return;
        };
        if ticket.endpoint >= self.endpoints || !measured_is_sane(&measured) {
            return;
        }
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        if let Some(p) = ticket.predicted {
            self.record_error(&mut w, p, measured);
        }
        w.buckets[ticket.features.bucket()].push(Sample {
            x: ticket.features,
            endpoint,
            measured,
        });
        w.since_fit += 1;
        let total: usize = w.buckets.iter().map(|b| b.items.len()).sum();
        if total >= self.config.min_samples && w.since_fit >= self.config.refit_every {
            w.since_fit = 0;
            if let Some(model) = self.refit(&mut w) {
                self.model.store(Some(Arc::new(model)));
            }
        }
    }

    fn record_error(&self, w: &mut Window, p: Prediction, measured: Measured) {
        match measured {
            Measured::Stream { ttft_ms, .. } => {
                let ape = (p.ttft_ms - ttft_ms).abs() / ttft_ms;
                w.ttft_error.push(ape);
                if let Some(h) = &self.metrics.ttft_error {
                    h.observe(ape);
                }
            }
            Measured::Total {
                latency_ms,
                output_tokens,
            } => {
                let predicted = p.ttft_ms + f64::from(output_tokens) * p.tpot_ms;
                if let Some(h) = &self.metrics.latency_error {
                    h.observe((predicted - latency_ms).abs() / latency_ms);
                }
            }
        }
        if let (
            Measured::Stream {
                ttft_ms,
                tpot_ms: Some(t),
            },
            Some(h),
        ) = (measured, &self.metrics.latency_error)
        {
            // A stream's whole latency is known too; 20 tokens stand in for its length.
            let n = 20.0;
            let (pred, real) = (p.ttft_ms + n * p.tpot_ms, ttft_ms + n * t);
            h.observe((pred - real).abs() / real);
        }
    }

    /// Fit the weights and the per-endpoint scales (two alternations), and the margins.
    fn refit(&self, w: &mut Window) -> Option<Model> {
        let mut theta = None;
        for _ in 0..2 {
            let t = fit_buckets(w)?;
            fit_scales(w, &t);
            theta = Some(t);
        }
        let theta: Thetas = theta?;
        let mut model = Model {
            idle: [theta[0][0], theta[0][1], theta[0][2]],
            theta,
            scale: w.scale.clone(),
            margin_ttft: 1.0,
            margin_tpot: 1.0,
        };
        let (ttft, tpot) = margins(w, |e, x| model.predict(e, x), self.config.quantile);
        (model.margin_ttft, model.margin_tpot) = (ttft, tpot);
        Some(model)
    }
}

fn measured_is_sane(m: &Measured) -> bool {
    let ok = |v: f64| v.is_finite() && (MIN_TARGET_MS..3.6e6).contains(&v);
    match *m {
        Measured::Stream { ttft_ms, tpot_ms } => ok(ttft_ms) && tpot_ms.is_none_or(ok),
        Measured::Total {
            latency_ms,
            output_tokens,
        } => ok(latency_ms) && output_tokens > 0,
    }
}

#[cfg(test)]
#[path = "predictor_tests.rs"]
mod tests;
