//! Where one pool's attempt outcomes go: each endpoint's failing flag (which steers retries away)
//! and passive outlier detection. Shared by the attempt loop, which hears of a response's head,
//! and the request's [`crate::finish::Finish`], which hears of a stream's end; so it is a small
//! handle of its own rather than the whole pool.

use std::sync::{Arc, Mutex};

use switchyard_balance::EndpointState;
use switchyard_health::{Outcome, OutlierDetector};

use crate::pool_control::OutlierSink;

pub struct PassiveHealth {
    /// Parallel to the pool's endpoints.
    states: Box<[Arc<EndpointState>]>,
    detector: Option<Arc<Mutex<OutlierDetector>>>,
    sink: OutlierSink,
    /// The detector judges latency (`outlier.latency`): attempts report theirs.
    latency: bool,
}

impl PassiveHealth {
    pub fn new(
        states: Box<[Arc<EndpointState>]>,
        detector: Option<Arc<Mutex<OutlierDetector>>>,
        sink: OutlierSink,
    ) -> Self {
        let latency = detector.as_ref().is_some_and(|d| {
            d.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .settings()
                .latency
                .is_some()
        });
        Self {
            states,
            detector,
            sink,
            latency,
        }
    }

    /// Whether attempts should report their latency ([`PassiveHealth::record_latency`]).
    pub fn tracks_latency(&self) -> bool {
        self.latency
    }

    /// One attempt's latency, for latency outlier detection.
    pub fn record_latency(&self, index: usize, latency: std::time::Duration) {
        let (Some(state), Some(d)) = (self.states.get(index), &self.detector) else {
            return;
        };
        let events = d
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record_latency(state.address, latency, tokio::time::Instant::now());
        for e in events {
            (self.sink)(e);
        }
    }

    /// Feed the failing flag and outlier detection with one attempt's outcome.
    pub fn record(&self, index: usize, outcome: Outcome) {
        let Some(state) = self.states.get(index) else {
            return;
        };
        if outcome != Outcome::LocalOrigin {
            state.set_failing(outcome != Outcome::Success);
        }
        if let Some(d) = &self.detector {
            let event = d
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(state.address, outcome, tokio::time::Instant::now());
            if let Some(e) = event {
                (self.sink)(e);
            }
        }
    }
}
