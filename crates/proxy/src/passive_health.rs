//! Where one pool's attempt outcomes go: each endpoint's failing flag (which steers retries away)
//! and passive outlier detection. Shared by the attempt loop, which hears of a response's head,
//! and the request's [`crate::finish::Finish`], which hears of a stream's end; so it is a small
//! handle of its own rather than the whole pool.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use switchyard_balance::head_latency::LatencyHistogram;
use switchyard_balance::EndpointState;
use switchyard_health::{Outcome, OutlierDetector};

use crate::pool_control::OutlierSink;

pub struct PassiveHealth {
    /// Parallel to the pool's endpoints.
    states: Box<[Arc<EndpointState>]>,
    detector: Option<Arc<Mutex<OutlierDetector>>>,
    sink: OutlierSink,
    /// The detector hears attempt outcomes (a latency-only one does not: its lock is skipped).
    counts_outcomes: bool,
    /// The pool's recent response-head latencies, for adaptive per-try timeouts.
    head_latency: Arc<ArcSwap<LatencyHistogram>>,
}

impl PassiveHealth {
    pub fn new(
        states: Box<[Arc<EndpointState>]>,
        detector: Option<Arc<Mutex<OutlierDetector>>>,
        sink: OutlierSink,
        head_latency: Arc<ArcSwap<LatencyHistogram>>,
    ) -> Self {
        let counts_outcomes = detector.as_ref().is_some_and(|d| {
            d.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .counts_outcomes()
        });
        Self {
            states,
            detector,
            sink,
            counts_outcomes,
            head_latency,
        }
    }

    /// The pool's recent response-head latencies.
    pub fn head_latency(&self) -> arc_swap::Guard<Arc<LatencyHistogram>> {
        self.head_latency.load()
    }

    /// Feed the failing flag and outlier detection with one attempt's outcome.
    pub fn record(&self, index: usize, outcome: Outcome) {
        let Some(state) = self.states.get(index) else {
            return;
        };
        if outcome != Outcome::LocalOrigin {
            state.set_failing(outcome != Outcome::Success);
        }
        if let Some(d) = self.detector.as_ref().filter(|_| self.counts_outcomes) {
            let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let event = d.record(state.address, outcome, tokio::time::Instant::now());
            // Endpoints returned by that ejection's cap check (rare: only when one was due).
            let returned = d.take_returned();
            drop(d);
            returned
                .into_iter()
                .chain(event)
                .for_each(|e| (self.sink)(e));
        }
    }
}
