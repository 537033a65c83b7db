//! Telemetry: metric names and registry ([`metrics`]), process logging ([`logging`]), and the
//! per-request JSON access log ([`access_log`]).

pub mod access_log;
pub mod logging;
pub mod metrics;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::Metrics;
