//! The one way an OpenAI request is scored, used by the gateway's request path and by
//! `switchyard epp` alike: its prompt's block hashes (seeded with the model and any explicit
//! adapter), its token estimate, and the adapter it needs. Two copies of this used to drift (one
//! seeded the hashes with the model only; one estimated output with a bare 256), so the same
//! request could score differently behind Envoy than through the gateway.

use std::time::Instant;

use switchyard_balance::Endpoint;

use crate::picker::{Decision, InferencePicker, RequestContext};
use crate::predictor::Slo;
use crate::request::{ApiKind, InferenceRequest};
use crate::slo_pick::SloOutcome;

/// Output tokens assumed for a request without `max_tokens`, when estimating its load.
pub const DEFAULT_EXPECTED_OUTPUT: u32 = 256;

/// One pick for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPick {
    pub decision: Decision,
    /// Tokens recorded as in flight on the chosen endpoint (its work there: prompt tokens not
    /// cached there plus expected output), to release with [`InferencePicker::finish`] when
    /// the exchange ends.
    pub est_tokens: u32,
    /// The request was sheddable and every endpoint saturated, or no endpoint is predicted to
    /// meet its SLO: nothing was recorded; refuse it.
    pub shed: bool,
}

impl RequestPick {
    /// Shed because no endpoint is predicted to meet the request's SLO.
    pub fn slo_shed(&self) -> bool {
        self.shed && self.decision.slo.is_some_and(SloOutcome::is_infeasible)
    }
}

impl InferencePicker {
    /// The engine priority `decision`'s request is to carry: the predictor's `late_priority`
    /// when no endpoint is predicted to serve it in time even in the model's typical case.
    pub fn late_priority(&self, decision: &Decision) -> Option<i64> {
        let late = decision.slo == Some(SloOutcome::Late);
        self.predictor()
            .and_then(|p| p.config().late_priority)
            .filter(|_| late)
    }
}

impl RequestPick {
    /// The chosen endpoint, unless the request is to be shed.
    pub fn index(&self) -> Option<usize> {
        self.decision.index.filter(|_| !self.shed)
    }
}

impl InferencePicker {
    /// Score `endpoints` for `req` and, unless it is shed, record the pick (its prefix blocks
    /// and in-flight tokens) on the chosen endpoint. `debug` fills [`Decision::top`].
    pub fn pick_request(
        &self,
        endpoints: &[Endpoint],
        req: &InferenceRequest,
        sheddable: bool,
        debug: bool,
    ) -> RequestPick {
        self.pick_request_slo(endpoints, req, sheddable, debug, Slo::default())
    }

    /// [`InferencePicker::pick_request`] for a request with latency objectives `slo` (the
    /// pool's default SLO fills what is unset). A sheddable request no endpoint is predicted to
    /// meet is shed; any other goes where the violation is predicted smallest.
    pub fn pick_request_slo(
        &self,
        endpoints: &[Endpoint],
        req: &InferenceRequest,
        sheddable: bool,
        debug: bool,
        slo: Slo,
    ) -> RequestPick {
        self.pick_request_given(endpoints, req, sheddable, debug, slo, &[])
    }

    /// [`InferencePicker::pick_request_slo`] scoring each endpoint's cached prefix from
    /// `cached_truth` where it names one ([`crate::prefix_truth`]: a benchmark's oracle).
    pub fn pick_request_given(
        &self,
        endpoints: &[Endpoint],
        req: &InferenceRequest,
        sheddable: bool,
        debug: bool,
        slo: Slo,
        cached_truth: &[Option<usize>],
    ) -> RequestPick {
        let keys = self.keys(req);
        let cx = self.context(req, &keys, cached_truth, slo, debug);
        let decision = self.pick(endpoints, &cx);
        self.settle(decision, &cx, sheddable)
    }

    /// [`InferencePicker::pick_request_slo`], holding a request that is not sheddable at the
    /// gateway while no endpoint is predicted to meet its SLO, when the pool's predictor has a
    /// queue ([`crate::slo_queue`]). `rank` is its priority (0 most urgent).
    pub async fn pick_request_queued(
        &self,
        endpoints: &[Endpoint],
        req: &InferenceRequest,
        (sheddable, rank): (bool, usize),
        debug: bool,
        slo: Slo,
        cached_truth: &[Option<usize>],
    ) -> RequestPick {
        let queue = self.predictor().and_then(|p| Some((p, p.queue()?)));
        let Some((predictor, queue)) = queue.filter(|_| !sheddable) else {
            return self.pick_request_given(endpoints, req, sheddable, debug, slo, cached_truth);
        };
        let slo = slo.or(predictor.config().default_slo);
        let keys = self.keys(req);
        let mut cx = self.context(req, &keys, cached_truth, slo, debug);
        let first = self.pick(endpoints, &cx);
        if !first.slo.is_some_and(SloOutcome::is_infeasible) {
            return self.settle(first, &cx, false);
        }
        let Some(place) = queue.enter(rank) else {
            return self.settle(first, &cx, false);
        };
        let start = Instant::now();
        let max_wait = queue.config().max_wait;
        loop {
            let waited = start.elapsed();
            if waited >= max_wait {
                // Held long enough: the least violating endpoint, as without a queue.
                let decision = self.pick(endpoints, &cx);
                return self.settle(decision, &cx, false);
            }
            cx.slo = Slo {
                // Never zero or less: with no budget left nothing is feasible.
                ttft_ms: slo
                    .ttft_ms
                    .map(|t| (t - waited.as_secs_f64() * 1000.0).max(1e-3)),
                tpot_ms: slo.tpot_ms,
            };
            let ask = || {
                let d = self.pick(endpoints, &cx);
                if !d.slo.is_some_and(SloOutcome::is_infeasible) {
                    return Some(d);
                }
                // A request that can no longer make its SLO (what is left of it is less than its
                // mean predicted TTFT on the least violating endpoint were it idle) is late wherever it goes: it
                // waits until some endpoint has no prefill work ahead, so that it delays no
                // request that can still be served in time.
                let doomed = match (cx.slo.ttft_ms, d.ticket, predictor.model()) {
                    (Some(left), Some(t), Some(m)) => {
                        left < m.idle_ttft_ms(t.endpoint, &t.features)
                    }
                    _ => false,
                };
                (doomed && self.prefill_idle(Instant::now())).then_some(d)
            };
            if let Some(decision) = place.ask_or_wait(max_wait - waited, ask).await {
                return self.settle(decision, &cx, false);
            }
        }
    }

    /// The request's prefix keys: the approximate index's block hashes, and its blocks as the
    /// engines key them for the KV-event index.
    fn keys(&self, req: &InferenceRequest) -> (Vec<u64>, Vec<u64>) {
        let adapter = req.adapter(|m| !self.is_adapter(m));
        (
            req.block_hashes(self.config().block_tokens),
            self.token_blocks(req, adapter.is_some()),
        )
    }

    fn context<'a>(
        &self,
        req: &'a InferenceRequest,
        (hashes, tokens): &'a (Vec<u64>, Vec<u64>),
        cached_truth: &'a [Option<usize>],
        slo: Slo,
        debug: bool,
    ) -> RequestContext<'a> {
        RequestContext {
            block_hashes: hashes,
            token_blocks: tokens,
            cached_truth,
            // An explicit `lora` field, else the model itself when the servers' metrics say it
            // is an adapter (vLLM serves adapters under their own model names).
            adapter: req.adapter(|m| !self.is_adapter(m)),
            est_tokens: req.est_tokens(DEFAULT_EXPECTED_OUTPUT),
            prompt_tokens: req.prompt_tokens,
            slo,
            debug,
        }
    }

    /// Record a decision (unless it is shed) and count its SLO outcome.
    fn settle(
        &self,
        mut decision: Decision,
        cx: &RequestContext<'_>,
        sheddable: bool,
    ) -> RequestPick {
        let infeasible = decision.slo.is_some_and(SloOutcome::is_infeasible);
        let shed = (decision.saturated || infeasible) && sheddable;
        if let (Some(p), Some(o)) = (self.predictor(), decision.slo) {
            p.count_slo(o, shed);
        }
        // In flight is the request's work where it went: its cached prompt tokens cost nothing.
        let est_tokens = decision.work_tokens;
        if let Some(i) = decision.index.filter(|_| !shed) {
            self.record(i, &RequestContext { est_tokens, ..*cx });
            let late = self.late_priority(&decision).is_some();
            if let (Some(p), Some(t)) = (self.predictor(), decision.ticket.as_mut()) {
                let now = std::time::Instant::now();
                // A late request sent with a lower engine priority is prefilled after the
                // requests still on time: it is no backlog ahead of them. It does hold a
                // batch slot once it runs.
                if !late {
                    p.on_sent(i, &t.features, now);
                }
                let output = cx.est_tokens.saturating_sub(cx.prompt_tokens);
                t.ends_at = p.track_end(i, &t.features, output, now);
            }
        }
        RequestPick {
            decision,
            est_tokens,
            shed,
        }
    }

    /// The request's blocks as the engines key them, for the KV-event index: keys computed
    /// before the pick (a model's tokenizer, off the event loop: completions, and chat through
    /// the model's chat template), else a completions prompt tokenized here with the simulator's
    /// tokenizer. Chat without a model's template and adapters' blocks (seeded by the adapter)
    /// are scored by the approximate index.
    fn token_blocks(&self, req: &InferenceRequest, adapter: bool) -> Vec<u64> {
        let Some(kv) = self.kv_index().filter(|_| !adapter) else {
            return Vec::new();
        };
        match (&req.engine_keys, req.kind) {
            (Some(keys), _) => keys.clone(),
            (None, ApiKind::Completions) if !req.prompt.is_empty() => kv.prompt_keys(&req.prompt),
            _ => Vec::new(),
        }
    }
    /// A debug header value for a decision: `idx=score(part=score,...);...`.
    pub fn debug_header(decision: &Decision) -> String {
        let mut out = String::new();
        if decision.saturated {
            out.push_str("saturated;");
        }
        if let Some(o) = decision.slo {
            out.push_str(&format!("slo={};", o.name()));
        }
        if let Some(k) = decision.sticky {
            out.push_str(&format!("sticky(kept={},over={});", k.kept, k.over));
        }
        if let Some(p) = decision.ticket.and_then(|t| t.predicted) {
            out.push_str(&format!(
                "predicted(ttft_ms={:.1},tpot_ms={:.2});",
                p.ttft_ms, p.tpot_ms
            ));
        }
        for (k, s) in decision.top.iter().enumerate() {
            if k > 0 {
                out.push(';');
            }
            out.push_str(&format!("{}={:.3}(", s.index, s.score));
            for (j, (name, v)) in s.parts.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&format!("{name}={v:.2}"));
            }
            out.push(')');
        }
        out
    }
}
