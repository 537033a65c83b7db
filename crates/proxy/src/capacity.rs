//! What this gateway can still take, for a parent one level up (gateways in front of
//! gateways, one per cluster or region).
//!
//! A parent balancing over gateways needs their aggregate spare capacity, which no single
//! backend's report gives. Each pool sums it: the in-flight requests of its available endpoints
//! against their declared `capacity` (or, where none is declared, the mean ORCA utilization the
//! endpoints themselves report). An unavailable endpoint's capacity does not count, so a
//! cluster losing replicas looks fuller, as it is. The parent gets it two ways: an ORCA report
//! (`endpoint-load-metrics: TEXT application_utilization=…, rps_fractional=…`) on every
//! response to a request that asks for one (`endpoint-load-metrics-format`, which Switchyard's
//! own `weighted_least_utilization` pools send), and `GET /capacity` on the admin API for a
//! parent that polls.

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::pool::PoolEntry;

pub static ENDPOINT_LOAD_METRICS: HeaderName = HeaderName::from_static("endpoint-load-metrics");
pub static ENDPOINT_LOAD_METRICS_FORMAT: HeaderName =
    HeaderName::from_static("endpoint-load-metrics-format");

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolCapacity {
    pub pool: String,
    pub endpoints: usize,
    pub available: usize,
    pub in_flight: u64,
    /// Concurrent requests the available endpoints declare; `None` when none declares one.
    pub capacity: Option<u64>,
    /// In flight over capacity on the endpoints that declare one (or the endpoints' own ORCA
    /// utilization), 1 when nothing is available; `None` when neither is known.
    pub utilization: Option<f64>,
    /// Attempts per second sent to the pool, over the last measured window.
    pub rps: f64,
}

/// Attempts sent to the pool so far.
pub(crate) fn attempts(pool: &PoolEntry) -> u64 {
    pool.picks.iter().map(|c| c.get()).sum()
}

/// What the available endpoints hold and can take, without the pool's name or rate.
struct Measure {
    available: usize,
    in_flight: u64,
    capacity: Option<u64>,
    utilization: Option<f64>,
}

fn measure(pool: &PoolEntry) -> Measure {
    let mut available = 0;
    let mut in_flight = 0;
    // In flight on the endpoints that declare a capacity, measured against it.
    let mut in_flight_declared = 0;
    let mut capacity: Option<u64> = None;
    let mut reported = (0.0, 0usize);
    for (e, spec) in pool.endpoints.iter().zip(&pool.spec.endpoints) {
        if !e.is_available() {
            continue;
        }
        let here = e.state.in_flight();
        available += 1;
        in_flight += here;
        if let Some(c) = spec.capacity {
            *capacity.get_or_insert(0) += u64::from(c);
            in_flight_declared += here;
        }
        if let Some((u, _, _)) = e.state.last_load_report() {
            reported = (reported.0 + u, reported.1 + 1);
        }
    }
    let utilization = if available == 0 {
        Some(1.0)
    } else if let Some(c) = capacity.filter(|c| *c > 0) {
        Some(in_flight_declared as f64 / c as f64)
    } else if reported.1 > 0 {
        Some(reported.0 / reported.1 as f64)
    } else {
        None
    };
    Measure {
        available,
        in_flight,
        capacity,
        utilization,
    }
}

pub fn of(pool: &PoolEntry) -> PoolCapacity {
    let m = measure(pool);
    PoolCapacity {
        pool: pool.spec.name.clone(),
        endpoints: pool.endpoints.len(),
        available: m.available,
        in_flight: m.in_flight,
        capacity: m.capacity,
        utilization: m.utilization,
        rps: pool.rate.rate(attempts(pool)),
    }
}

/// The ORCA report for a response from `pool`: its utilization (1 when unknown and nothing is
/// available; otherwise omitted, and the parent balances on in-flight counts) and request rate.
pub fn load_report(pool: &PoolEntry) -> Option<HeaderValue> {
    let utilization = measure(pool).utilization?;
    let rps = pool.rate.rate(attempts(pool));
    // A58 ignores a report without a rate or a utilization, so an idle gateway would get the
    // mean weight instead of the most: report at least 1% and one request per second.
    let text = format!(
        "TEXT application_utilization={:.4}, rps_fractional={:.3}",
        utilization.max(0.01),
        rps.max(1.0)
    );
    HeaderValue::from_str(&text).ok()
}
