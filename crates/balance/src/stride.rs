//! gRPC's static stride scheduler (from gRFC A58's weighted round robin): weighted round robin
//! with one shared atomic counter and no per-endpoint mutable state, so concurrent picks never
//! take a lock. Weights are scaled so the largest is [`MAX_WEIGHT`]; in each pass over the
//! endpoints ("generation"), endpoint `i` is taken in a fraction `w_i / MAX_WEIGHT` of passes,
//! spread out by a per-endpoint offset. Over time each endpoint's share is exactly its weight's.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::endpoint::Endpoint;

/// Scaled weight of the heaviest endpoint; it is taken in every generation.
pub(crate) const MAX_WEIGHT: u64 = 0xFFFF;
const OFFSET: u64 = MAX_WEIGHT / 2;

/// Scale `w` against the heaviest weight `max` into `1..=MAX_WEIGHT`.
#[inline]
pub(crate) fn scale(w: f64, max: f64) -> u64 {
    ((w / max * MAX_WEIGHT as f64).round() as u64).clamp(1, MAX_WEIGHT)
}

/// Advance the schedule until it lands on an available endpoint whose turn it is. `weight(i)`
/// is endpoint `i`'s scaled weight. Gives up (returns `None`) after a few passes, which only
/// happens when every heavy endpoint is unavailable; callers then fall back.
pub(crate) fn pick(
    seq: &AtomicU64,
    endpoints: &[Endpoint],
    weight: impl Fn(usize) -> u64,
) -> Option<usize> {
    let n = endpoints.len() as u64;
    if n == 0 {
        return None;
    }
    for _ in 0..4 * n + 8 {
        let s = seq.fetch_add(1, Ordering::Relaxed);
        let i = (s % n) as usize;
        if !endpoints[i].is_available() {
            continue;
        }
        let generation = (s / n) % MAX_WEIGHT;
        let w = weight(i);
        let turn = (w * generation + (i as u64 % MAX_WEIGHT) * OFFSET) % MAX_WEIGHT;
        if turn >= MAX_WEIGHT - w {
            return Some(i);
        }
    }
    None
}
