//! What the picker learns after it picked: the request went out (prefix index, in-flight
//! work), a load report came back, the first byte arrived, the response ended. Kept apart from
//! [`crate::picker`]'s pick, which reads this state and never changes it.

use std::time::Instant;

use super::{InferencePicker, RequestContext};
use crate::predictor::Ticket;

impl InferencePicker {
    /// The request in `req` was sent to `endpoint`: remember its prefix blocks there and count
    /// its tokens as in flight until [`InferencePicker::finish`].
    pub fn record(&self, endpoint: usize, req: &RequestContext<'_>) {
        let signals = self.signals.get(endpoint);
        if let Some(s) = signals {
            s.on_pick(req.est_tokens);
            if self.predictor.is_some() {
                s.on_prefill(req.prompt_tokens);
            }
            let blocks = s.num_gpu_blocks();
            if blocks > 0 && self.prefix.capacity(endpoint) != blocks as usize {
                self.prefix.set_capacity(endpoint, blocks as usize);
            }
        }
        self.prefix.record(endpoint, req.block_hashes);
        if let Some(kv) = &self.kv {
            kv.record_pending(endpoint, req.token_blocks, Instant::now());
        }
    }

    /// A response from `endpoint` carried an ORCA load report: its queue and KV figures become
    /// the endpoint's signals until a newer scrape or report (see [`crate::signals`]). Ignored
    /// when [`PickerConfig::orca`] is off or the report has no such figures.
    pub fn apply_load_report(&self, endpoint: usize, report: &switchyard_balance::LoadReport) {
        self.apply_load_report_at(endpoint, report, Instant::now());
    }

    /// [`InferencePicker::apply_load_report`] from a raw `endpoint-load-metrics` header value
    /// (for callers that have not parsed it, like the EPP); a malformed value is ignored.
    pub fn apply_load_report_header(&self, endpoint: usize, value: &[u8]) {
        if self.config.orca {
            if let Ok(r) = switchyard_balance::parse_orca(value) {
                self.apply_load_report(endpoint, &r);
            }
        }
    }

    /// [`InferencePicker::apply_load_report`] with an explicit clock.
    pub fn apply_load_report_at(
        &self,
        endpoint: usize,
        report: &switchyard_balance::LoadReport,
        now: Instant,
    ) {
        if !self.config.orca {
            return;
        }
        if let (Some(s), Some(r)) = (
            self.signals.get(endpoint),
            crate::signals::OrcaSignals::from_orca(report),
        ) {
            s.apply_orca(&r, now);
        }
    }

    /// The request recorded on `endpoint` with `prompt_tokens` got its first byte, or ended
    /// without one (pools with a predictor count prefills; see [`InferencePicker::record`]).
    pub fn prefilled(&self, endpoint: usize, prompt_tokens: u32) {
        if let (Some(s), Some(p)) = (self.signals.get(endpoint), &self.predictor) {
            s.on_prefilled(prompt_tokens);
            if s.prefilling().0 == 0.0 {
                p.on_drained(endpoint);
            }
            if let Some(q) = p.queue() {
                q.kick();
            }
        }
    }

    /// Whether some endpoint has no prefill work from the gateway ahead: nothing it was sent
    /// awaits a first byte, and no predicted backlog (pools with a predictor; else false).
    pub fn prefill_idle(&self, now: Instant) -> bool {
        let Some(p) = &self.predictor else {
            return false;
        };
        self.signals
            .iter()
            .enumerate()
            .any(|(i, s)| s.prefilling().0 == 0.0 && p.backlog_ms(i, now) == 0.0)
    }

    /// The request recorded on `endpoint` with `est_tokens` finished (or failed).
    /// `ticket` is the pick's, when the pool has a predictor.
    pub fn finish(&self, endpoint: usize, est_tokens: u32, ticket: Option<&Ticket>) {
        if let Some(s) = self.signals.get(endpoint) {
            s.on_finish(est_tokens);
        }
        if let (Some(p), Some(t)) = (&self.predictor, ticket) {
            p.on_ended(endpoint, t.ends_at);
        }
        if let Some(q) = self.predictor.as_ref().and_then(|p| p.queue()) {
            q.kick();
        }
    }
}
