//! When an endpoint's full batch frees a slot: a feature of the latency model.
//!
//! At full load an engine's batch (`max_num_seqs`) is the bottleneck: a request that finds it
//! full waits until running requests end, and that wait, not prefill, is most of its TTFT. Which
//! endpoint frees a slot first depends on how much each running request has left, which no
//! count of queue or running requests shows. The gateway knows it: it sent those requests, knows
//! when, and knows what each asked for (`max_tokens`, or a default). So each endpoint keeps the
//! predicted end of every request the gateway has in flight there (sent + TTFT + output × TPOT,
//! from the model at send time), and a new request's wait for a slot is the end of the
//! `(in flight − batch limit)`-th earliest of them, or none while the batch has room. Whether the
//! batch is full, and its size, come from the last scrape ([`crate::EndpointSignals::full_batch`]:
//! requests waiting, and how many run); with no queue there the wait is 0.
//!
//! Requests the engine stops early (an end-of-sequence before `max_tokens`) end before their
//! predicted end and are dropped from the list then, so an estimate never outlives its request.
//! Bounded: at most [`MAX_TRACKED`] per endpoint; beyond that, requests go untracked.

use std::sync::Mutex;
use std::time::Instant;

use crate::predictor::{Features, LatencyPredictor};

/// Requests tracked per endpoint at most.
pub const MAX_TRACKED: usize = 4096;

/// Predicted ends of the requests in flight, per endpoint (nanoseconds on the predictor's clock).
#[derive(Debug)]
pub struct BatchSlots {
    ends: Vec<Mutex<Vec<u64>>>,
}

impl BatchSlots {
    pub fn new(endpoints: usize) -> Self {
        Self {
            ends: (0..endpoints).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// A request predicted to end at `end` (> 0) went to `endpoint`. `false` when it could not
    /// be tracked (unknown endpoint, or the endpoint's list is full).
    pub fn add(&self, endpoint: usize, end: u64) -> bool {
        let Some(Ok(mut ends)) = self.ends.get(endpoint).map(Mutex::lock) else {
            return false;
        };
        if end == 0 || ends.len() >= MAX_TRACKED {
            return false;
        }
        ends.push(end);
        true
    }

    /// The request added with `end` ended.
    pub fn remove(&self, endpoint: usize, end: u64) {
        if end == 0 {
            return;
        }
        if let Some(Ok(mut ends)) = self.ends.get(endpoint).map(Mutex::lock) {
            if let Some(at) = ends.iter().position(|&e| e == end) {
                ends.swap_remove(at);
            }
        }
    }

    /// Nanoseconds from `now` until `endpoint`, with a batch of `limit` requests, has a slot
    /// for one more: 0 while fewer than `limit` are in flight.
    pub fn wait_ns(&self, endpoint: usize, limit: u64, now: u64) -> u64 {
        let Some(Ok(mut ends)) = self.ends.get(endpoint).map(Mutex::lock) else {
            return 0;
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 || ends.len() < limit {
            return 0;
        }
        // The batch is full: the k-th earliest end frees the slot, k = in flight − limit.
        // Selected in place: the list's order means nothing, and no pick allocates.
        let k = ends.len() - limit;
        let (_, kth, _) = ends.select_nth_unstable(k);
        kth.saturating_sub(now)
    }
}

impl LatencyPredictor {
    /// How long from `now` until `endpoint`'s batch of `limit` (unknown: `None`) has a slot
    /// for one more request, in ms ([`crate::batch_slots`]).
    pub fn slot_wait_ms(&self, endpoint: usize, limit: Option<u64>, now: Instant) -> f64 {
        let Some(limit) = limit else { return 0.0 };
        self.slots.wait_ns(endpoint, limit, self.nanos(now)) as f64 / 1e6
    }

    /// A request with features `x` and `output_tokens` to generate was sent to `endpoint` at
    /// `now`: track its predicted end until [`LatencyPredictor::on_ended`]. Returns the value
    /// to hand back then (0: not tracked, as while the model is cold).
    ///
    /// The end is the slot wait `x` was made with, then the request's TTFT were the endpoint
    /// idle, then its output at the TPOT predicted as if the batch had room: none of it comes
    /// from the model's weight on the slot wait itself. (Were it so, a weight above one would
    /// push each end further than the last, each wait longer than the last, and predictions
    /// would run away: a first version did, and shedding then refused almost everything.)
    pub fn track_end(
        &self,
        endpoint: usize,
        x: &Features,
        output_tokens: u32,
        now: Instant,
    ) -> u64 {
        let own = x.without_slot_wait();
        let Some(ms) = self.with_model(|m| {
            let m = m?;
            let tpot = m.predict(endpoint, &own).tpot_ms;
            Some(
                x.slot_wait_ms() + m.idle_ttft_ms(endpoint, &own) + f64::from(output_tokens) * tpot,
            )
        }) else {
            return 0;
        };
        if !(ms.is_finite() && ms >= 0.0) {
            return 0;
        }
        let end = self
            .nanos(now)
            .saturating_add((ms.min(3.6e6) * 1e6) as u64)
            .max(1);
        if self.slots.add(endpoint, end) {
            end
        } else {
            0
        }
    }

    /// The request whose [`LatencyPredictor::track_end`] gave `ends_at` ended (or failed).
    pub fn on_ended(&self, endpoint: usize, ends_at: u64) {
        self.slots.remove(endpoint, ends_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wait_while_the_batch_has_room() {
        let s = BatchSlots::new(1);
        for end in [100, 200, 300] {
            assert!(s.add(0, end));
        }
        assert_eq!(s.wait_ns(0, 4, 0), 0);
        // No limit known: no wait either.
        assert_eq!(s.wait_ns(0, 0, 0), 0);
    }

    #[test]
    fn a_full_batch_waits_for_the_earliest_ends() {
        let s = BatchSlots::new(2);
        for end in [500, 100, 300] {
            s.add(0, end);
        }
        // Batch of 3, 3 in flight: the first to end (100) frees the slot.
        assert_eq!(s.wait_ns(0, 3, 40), 60);
        // Batch of 2, 3 in flight (one queued): the second to end.
        assert_eq!(s.wait_ns(0, 2, 40), 260);
        // An end already past is no wait, and the other endpoint is empty.
        assert_eq!(s.wait_ns(0, 3, 150), 0);
        assert_eq!(s.wait_ns(1, 1, 0), 0);
        s.remove(0, 100);
        assert_eq!(s.wait_ns(0, 2, 40), 260);
        s.remove(0, 999);
        s.remove(0, 0);
        assert_eq!(s.wait_ns(0, 2, 0), 300);
    }

    #[test]
    fn bounded_and_out_of_range_endpoints_are_ignored() {
        let s = BatchSlots::new(1);
        assert!(!s.add(5, 1));
        assert!(!s.add(0, 0));
        for n in 1..=MAX_TRACKED as u64 {
            assert!(s.add(0, n));
        }
        assert!(!s.add(0, u64::MAX));
        assert_eq!(s.wait_ns(5, 1, 0), 0);
        s.remove(5, 1);
    }
}
