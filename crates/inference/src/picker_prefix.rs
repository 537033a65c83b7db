//! What the picker knows of a request's prefix, from the KV-event index and from its own
//! record of where it sent prefixes (the approximate index), and where a prefix no candidate
//! holds goes. Kept apart from [`crate::picker`]'s filter-score-pick, which reads the shares
//! as one scorer's input and the owner as an override of its tie-break.

use std::time::Instant;

use switchyard_balance::Endpoint;

use super::{InferencePicker, RequestContext};

/// The prefix per endpoint.
#[derive(Debug, Default)]
pub(super) struct PrefixKnown {
    /// The share of the request's prefix each endpoint holds: from the KV-event index where it
    /// is fresh for that endpoint, else from the approximate index. Empty when the prefix
    /// scorer is off.
    pub(super) share: Vec<f64>,
    /// The approximate index's matched blocks per endpoint, whatever the events say: where
    /// this gateway sent the prefix.
    pub(super) recalled: Vec<usize>,
}

impl InferencePicker {
    pub(super) fn prefix_known(
        &self,
        req: &RequestContext<'_>,
        n: usize,
        now: Instant,
    ) -> PrefixKnown {
        let mut matched = vec![0usize; n];
        if !req.block_hashes.is_empty() {
            self.prefix
                .matched_blocks_all(req.block_hashes, &mut matched);
        }
        let mut precise = vec![None; n];
        if let (Some(kv), false) = (&self.kv, req.token_blocks.is_empty()) {
            kv.matched_blocks_given(req.token_blocks, now, req.cached_truth, &mut precise);
        }
        let share = |m: usize, of: usize| if of == 0 { 0.0 } else { m as f64 / of as f64 };
        let share = matched
            .iter()
            .zip(&precise)
            .map(|(&m, p)| match p {
                Some(p) => share(*p, req.token_blocks.len()),
                None => share(m, req.block_hashes.len()),
            })
            .collect();
        PrefixKnown {
            share,
            recalled: matched,
        }
    }

    /// A prefix no candidate is known to hold goes to its rendezvous owner among the
    /// candidates scoring within the owner's band of `best` (`totals` are the candidates'
    /// scores): the same on every gateway replica while they score those alike, and never far
    /// from the best. One this gateway sent it to before comes first, as far behind as its hit
    /// would have been scored (the KV events say its blocks are gone: an engine restarted or
    /// evicted them). `None` when some candidate holds it or owners are off.
    pub(super) fn new_prefix_owner(
        &self,
        endpoints: &[Endpoint],
        req: &RequestContext<'_>,
        prefix: &PrefixKnown,
        candidates: &[usize],
        totals: &[f64],
        best: f64,
    ) -> Option<usize> {
        let weights = &self.config.weights;
        // A full hit's share of the 0..1 total score.
        let hit_score = weights.prefix / self.weight_sum;
        let band = weights.owner_band(self.kv.is_some()).clamp(0.0, 1.0) * hit_score;
        let share = &prefix.share;
        if band <= 0.0 || share.is_empty() || !candidates.iter().all(|&i| share[i] == 0.0) {
            return None;
        }
        let behind = |i: usize| {
            let k = candidates.iter().position(|&c| c == i);
            k.map_or(f64::INFINITY, |k| best - totals[k])
        };
        let address = |i: usize| endpoints.get(i).map(|e| e.address());
        let blocks = req.block_hashes.len().max(1) as f64;
        let recalled = |i: usize| {
            prefix
                .recalled
                .get(i)
                .map_or(0.0, |&m| m as f64 / blocks * hit_score)
        };
        crate::prefix_owner::owner_recalling(
            req.block_hashes,
            candidates,
            address,
            behind,
            band,
            recalled,
        )
    }
}
