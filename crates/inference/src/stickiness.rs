//! Cost-based prefix stickiness: after the weighted sum has chosen, keep the request on the
//! replica holding most of its prefix unless moving it pays.
//!
//! The weighted sum of [`crate::scorer`] trades a prefix share against load terms at fixed
//! rates, so a conversation leaves the replica holding its history as soon as that replica's
//! queue or KV terms are a little worse than another's. Each such move prefills the history
//! again elsewhere and evicts someone else's blocks there; on a fleet at its limit the extra
//! prefill lengthens the queues, which causes more moves, and the fleet can settle where few
//! prefixes are found at all (docs/benchmarks.md, issue 18: the hit rate falling from ~75% to
//! ~30% in some runs at 100% load). smg and sglang-router's `cache_aware` policy never showed
//! that collapse: they leave a prefix's holder only past an absolute load imbalance.
//!
//! This keeps both ideas, in the gateway's terms:
//!
//! * **Guard** (smg's): the holder keeps the request until its queue is
//!   [`PrefixStickiness::min_imbalance`] waiting requests over the least-loaded candidate's.
//!   Below that, queue differences are the noise of Poisson arrivals and scrape timing. Or
//!   until its KV usage is [`PrefixStickiness::min_kv_imbalance`] over the least-used one's:
//!   on the simulated fleets the cache, not the queue, is what runs out first, and a holder
//!   kept with a full cache evicts other conversations' blocks or preempts (without this half
//!   of the guard, stickiness measured worse than none on both fleets).
//! * **Cost**: past the guard, the request moves only if the queueing it avoids outweighs the
//!   prefill it adds. With a warm latency predictor that is its TTFT prediction at each place
//!   (the prefix share is one of its features); otherwise the waiting requests it skips, each
//!   worth [`PrefixStickiness::queue_tokens`] prefill tokens, against the extra uncached prompt
//!   tokens at the destination.
//!
//! A saturated holder is never kept (the saturation filter's promise holds), and a request whose
//! prefix no candidate holds is left to the score alone. Off by default: measured against the
//! weighted sum alone (docs/benchmarks.md, "Cost-based prefix stickiness"), it did not lower
//! TTFT p99 on either fleet.

pub use switchyard_config::PrefixStickiness;

/// What stickiness needs to know of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub endpoint: usize,
    /// Share (0..1) of the request's prompt cached there as far as the picker knows (a real
    /// hit).
    pub hit_share: f64,
    /// Requests waiting there (scraped plus picked since).
    pub waiting: f64,
    /// Tokens the request would cost there: expected output plus uncached prompt tokens.
    pub new_tokens: f64,
    /// KV-cache usage there (0..1), when known.
    pub kv_usage: Option<f64>,
    /// Over a saturation threshold.
    pub saturated: bool,
    /// Predicted TTFT there (ms), when a warm predictor gave one.
    pub predicted_ttft_ms: Option<f64>,
}

/// Stickiness overrode the score: the request stays on `kept` rather than going to `over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub kept: usize,
    pub over: usize,
}

/// Hit shares closer than this are the same holding.
const SAME_SHARE: f64 = 1e-9;

/// The holder among `candidates` (endpoint indexes, their scores in `totals`): the one with
/// the largest real hit share, the better score among equal shares; `None` when nobody holds
/// any of the prefix.
pub fn holder(
    candidates: &[usize],
    totals: &[f64],
    hit_share: impl Fn(usize) -> f64,
) -> Option<usize> {
    let mut best: Option<(usize, f64, f64)> = None;
    for (&i, &t) in candidates.iter().zip(totals) {
        let s = hit_share(i);
        let better =
            best.is_none_or(|(_, bs, bt)| s > bs + SAME_SHARE || (s >= bs - SAME_SHARE && t > bt));
        if s > 0.0 && better {
            best = Some((i, s, t));
        }
    }
    best.map(|(i, _, _)| i)
}

/// The stickiness step of a pick: when `chosen` (the score's pick among `candidates`) is not
/// the prefix's holder and [`keep`] says stay, `chosen` becomes the holder. `place(i)` describes
/// candidate `i`; `least` is the least (waiting count, KV usage) among the candidates.
pub fn apply(
    cfg: &PrefixStickiness,
    candidates: &[usize],
    totals: &[f64],
    least: (f64, f64),
    chosen: &mut usize,
    place: impl Fn(usize) -> Place,
) -> Option<Kept> {
    if !cfg.enabled {
        return None;
    }
    let h = holder(candidates, totals, |i| place(i).hit_share)?;
    if h == *chosen || !keep(cfg, &place(h), &place(*chosen), least) {
        return None;
    }
    let over = std::mem::replace(chosen, h);
    Some(Kept { kept: h, over })
}

/// Whether the request should stay on `holder` rather than go to `chosen`, the score's pick;
/// `least` is the least (waiting count, KV usage) among the candidates.
pub fn keep(cfg: &PrefixStickiness, holder: &Place, chosen: &Place, least: (f64, f64)) -> bool {
    let (min_waiting, min_kv) = least;
    let kv_over = holder
        .kv_usage
        .is_some_and(|kv| kv - min_kv >= cfg.min_kv_imbalance);
    if !cfg.enabled
        || holder.endpoint == chosen.endpoint
        || holder.saturated
        || kv_over
        || holder.hit_share <= chosen.hit_share + SAME_SHARE
    {
        return false;
    }
    if holder.waiting - min_waiting < cfg.min_imbalance {
        return true;
    }
    if let (Some(h), Some(c)) = (holder.predicted_ttft_ms, chosen.predicted_ttft_ms) {
        return h <= c;
    }
    let queue_saved = (holder.waiting - chosen.waiting) * cfg.queue_tokens;
    let prefill_added = chosen.new_tokens - holder.new_tokens;
    queue_saved <= prefill_added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> PrefixStickiness {
        PrefixStickiness {
            enabled: true,
            ..PrefixStickiness::default()
        }
    }

    /// A 2,000-token conversation: all of it cached on the holder, its 1,536-token system
    /// prompt on the other.
    fn pair(holder_waiting: f64, other_waiting: f64) -> (Place, Place) {
        let h = Place {
            endpoint: 0,
            hit_share: 1.0,
            waiting: holder_waiting,
            new_tokens: 64.0,
            kv_usage: Some(0.6),
            saturated: false,
            predicted_ttft_ms: None,
        };
        let c = Place {
            endpoint: 1,
            hit_share: 0.77,
            waiting: other_waiting,
            new_tokens: 64.0 + 464.0,
            kv_usage: Some(0.5),
            ..h
        };
        (h, c)
    }

    #[test]
    fn keeps_a_prefix_on_a_mildly_busier_holder() {
        let (h, c) = pair(3.0, 0.0);
        assert!(keep(&on(), &h, &c, (0.0, 0.5)));
        // Past the guard the cost decides: one request's queue is worth more than 464 tokens.
        let (h, c) = pair(5.0, 4.0);
        assert!(!keep(&on(), &h, &c, (1.0, 0.5)));
        // but not when the destination would prefill the whole prompt.
        let c = Place {
            new_tokens: 2064.0,
            hit_share: 0.0,
            ..c
        };
        assert!(keep(&on(), &h, &c, (1.0, 0.5)));
    }

    #[test]
    fn moves_it_when_the_holder_is_much_busier() {
        let (h, c) = pair(12.0, 1.0);
        assert!(!keep(&on(), &h, &c, (1.0, 0.5)));
    }

    #[test]
    fn a_holder_much_fuller_in_kv_is_not_kept() {
        let (h, c) = pair(1.0, 0.0);
        let full = Place {
            kv_usage: Some(0.85),
            ..h
        };
        assert!(!keep(&on(), &full, &c, (0.0, 0.5)));
        assert!(keep(&on(), &h, &c, (0.0, 0.5)));
    }

    #[test]
    fn a_saturated_holder_is_never_kept() {
        let (h, c) = pair(1.0, 0.0);
        let h = Place {
            saturated: true,
            ..h
        };
        assert!(!keep(&on(), &h, &c, (0.0, 0.5)));
    }

    #[test]
    fn off_or_without_a_holding_it_leaves_the_score_alone() {
        let (h, c) = pair(1.0, 0.0);
        assert!(!keep(&PrefixStickiness::default(), &h, &c, (0.0, 0.5)));
        let h = Place {
            hit_share: c.hit_share,
            ..h
        };
        assert!(!keep(&on(), &h, &c, (0.0, 0.5)));
        assert_eq!(holder(&[2, 0, 1], &[0.1, 0.2, 0.3], |_| 0.0), None);
        assert_eq!(holder(&[], &[], |_| 1.0), None);
    }

    #[test]
    fn the_holder_is_the_largest_share_the_better_score_among_equals() {
        let share = |i: usize| [0.5, 0.9, 0.9, 0.0][i];
        assert_eq!(holder(&[0, 1, 2, 3], &[0.9, 0.5, 0.6, 1.0], share), Some(2));
        assert_eq!(holder(&[0, 1, 2, 3], &[0.9, 0.7, 0.6, 1.0], share), Some(1));
    }

    #[test]
    fn apply_overrides_the_score_only_to_keep() {
        let (h, c) = pair(2.0, 0.0);
        let place = |i: usize| if i == 0 { h } else { c };
        let mut chosen = 1;
        let kept = apply(&on(), &[0, 1], &[0.6, 0.7], (0.0, 0.5), &mut chosen, place);
        assert_eq!(kept, Some(Kept { kept: 0, over: 1 }));
        assert_eq!(chosen, 0);
        let mut chosen = 1;
        let off = PrefixStickiness::default();
        assert_eq!(
            apply(&off, &[0, 1], &[0.6, 0.7], (0.0, 0.5), &mut chosen, place),
            None
        );
        assert_eq!(chosen, 1);
        // No prefix information: nothing to keep.
        let bare = |i: usize| Place {
            hit_share: 0.0,
            ..place(i)
        };
        assert_eq!(
            apply(&on(), &[0, 1], &[0.6, 0.7], (0.0, 0.5), &mut chosen, bare),
            None
        );
        assert_eq!(chosen, 1);
    }

    #[test]
    fn a_warm_predictor_decides_past_the_guard() {
        let (h, c) = pair(9.0, 0.0);
        let with = |h_ms, c_ms| {
            let h = Place {
                predicted_ttft_ms: Some(h_ms),
                ..h
            };
            let c = Place {
                predicted_ttft_ms: Some(c_ms),
                ..c
            };
            keep(&on(), &h, &c, (0.0, 0.5))
        };
        assert!(with(120.0, 150.0));
        assert!(!with(400.0, 150.0));
    }
}
