//! Endpoint health for Switchyard: which endpoints of a pool a picker may use, and how much.
//!
//! Four mechanisms, each following Envoy's design (its "Health checking", "Outlier detection",
//! "Panic threshold" and "Slow start mode" docs), each in its own module:
//!
//! - [`active`]: probe tasks (HTTP, gRPC health, TCP) that flip [`EndpointState::set_healthy`].
//! - [`outlier`]: passive detection from real traffic; ejects endpoints for a growing time.
//! - [`panic`]: when too few endpoints are available, use them all rather than overload a few.
//! - [`slow_start`]: ramp the weight of new and returning endpoints.
//!
//! Active and passive checks are complementary, not alternatives: probes find endpoints that
//! are down while idle; traffic finds endpoints that are up but answering wrongly. The pick path
//! combines them with [`is_available`] and then [`PanicMode::select`].
//!
//! This crate keeps its own per-address state (the checker's counters, the detector's
//! ejections) rather than adding fields to `EndpointState`; the only shared write is
//! `set_healthy`, so the pick path reads one atomic and one `ArcSwap` snapshot.
//!
//! [`EndpointState::set_healthy`]: switchyard_balance::EndpointState::set_healthy

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod active;
mod from_config;
pub mod head_watch;
pub mod outlier;
pub mod panic;
pub mod probe;
pub mod slow_start;

pub use active::{ActiveCheck, EventSink, HealthChecker, HealthEvent};
pub use head_watch::spawn_head_watch;
pub use outlier::{
    spawn_ticker, EjectReason, EjectionSnapshot, FailurePercentageSettings, Outcome,
    OutlierDetector, OutlierEvent, OutlierSettings, SuccessRateSettings,
};
pub use panic::{in_panic, EligibleSet, PanicMode};
pub use probe::{Probe, ProbeFailure, ProbeTls};
pub use slow_start::{effective_weight, SlowStartSettings, Warmups};

use switchyard_balance::EndpointState;
use tokio::time::Instant;

/// Whether a picker may use `endpoint` at `now`: healthy by active checks and not ejected.
pub fn is_available(endpoint: &EndpointState, ejections: &EjectionSnapshot, now: Instant) -> bool {
    endpoint.is_healthy() && !ejections.is_ejected(endpoint.address, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn availability_combines_health_and_ejection() {
        let endpoints: Vec<_> = (1..=4)
            .map(|p| EndpointState::new(std::net::SocketAddr::from(([10, 0, 0, 1], p))))
            .collect();
        let mut detector = OutlierDetector::new(
            OutlierSettings {
                max_ejected_percent: 100,
                ..OutlierSettings::default()
            },
            endpoints.iter().map(|e| e.address),
        );
        let now = Instant::now();
        for _ in 0..3 {
            detector.record(endpoints[0].address, Outcome::GatewayError, now);
        }
        endpoints[1].set_healthy(false);
        let snapshot = detector.snapshot().load_full();
        let mode = PanicMode::new(50);
        let set = mode.select(4, |i| is_available(&endpoints[i], &snapshot, now));
        assert_eq!(set.iter().collect::<Vec<_>>(), [2, 3]);
        assert!(!set.panic);
        endpoints[2].set_healthy(false);
        let set = mode.select(4, |i| is_available(&endpoints[i], &snapshot, now));
        assert!(set.panic, "one of four available is below 50%");
        assert_eq!(set.count(), 4);
    }
}
