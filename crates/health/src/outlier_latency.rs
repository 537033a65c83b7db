//! Latency outliers: the part of [`OutlierDetector`] that judges endpoints by their time to
//! response head rather than by their errors. The windows come from
//! [`crate::head_watch`]; ejection itself (cap, backoff, return) is the detector's, shared with
//! every other reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_balance::head_latency::{HeadClass, HeadWindow};
use tokio::time::Instant;

use super::{EjectReason, OutlierDetector, OutlierEvent};

/// Latency outlier settings: see [`OutlierDetector::judge_latency`].
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySettings {
    pub factor: f64,
    pub min_requests: u32,
    pub interval: Duration,
    pub intervals: u32,
}

impl OutlierDetector {
    /// Judge one latency interval (every `latency.interval`, from each endpoint's
    /// [`HeadWindow`]): in each class, an endpoint with `min_requests` samples (attempts that
    /// finished in the interval, and those still waiting for their head) is compared with the
    /// others. Its median above `factor` × the median of those medians (over at least three
    /// endpoints, so the median means something) counts a slow interval; judged and slow in no
    /// class resets the count; `intervals` slow ones in a row eject it, under the same cap,
    /// backoff and return as any ejection. A pool that slows down as a whole moves its median
    /// with it: nobody is ejected.
    pub fn judge_latency(
        &mut self,
        windows: &[(SocketAddr, HeadWindow)],
        now: Instant,
    ) -> Vec<OutlierEvent> {
        let Some(l) = self.settings.latency.clone() else {
            return Vec::new();
        };
        // Per endpoint: slowest ratio to its class's pool median; `None` when not judged.
        let mut verdicts: HashMap<SocketAddr, f64> = HashMap::new();
        for class in HeadClass::ALL {
            let judged: Vec<(SocketAddr, f64)> = windows
                .iter()
                .filter(|(a, _)| self.hosts.get(a).is_some_and(|h| !h.is_ejected(now)))
                .filter(|(_, w)| w.class(class).samples() >= u64::from(l.min_requests))
                .filter_map(|(a, w)| Some((*a, w.class(class).median()?)))
                .collect();
            if judged.len() < 3 {
                continue;
            }
            let mut medians: Vec<f64> = judged.iter().map(|j| j.1).collect();
            medians.sort_by(f64::total_cmp);
            let pool = medians[medians.len() / 2];
            for (addr, m) in judged {
                let ratio = m / pool.max(f64::MIN_POSITIVE);
                let v = verdicts.entry(addr).or_insert(0.0);
                *v = v.max(ratio);
            }
        }
        let mut slow = Vec::new();
        for (addr, ratio) in verdicts {
            let Some(host) = self.hosts.get_mut(&addr) else {
                continue;
            };
            if ratio > l.factor {
                host.slow_intervals += 1;
                if host.slow_intervals >= l.intervals {
                    slow.push((ratio, addr));
                }
            } else {
                host.slow_intervals = 0;
            }
        }
        // Slowest first, so the ejection cap keeps out the worst ones.
        slow.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut ejected = Vec::new();
        for (_, addr) in slow {
            if let Some(e) = self.try_eject(addr, EjectReason::Latency, now) {
                if let Some(h) = self.hosts.get_mut(&addr) {
                    h.slow_intervals = 0;
                }
                ejected.push(e);
            }
        }
        self.publish();
        let mut events = self.take_returned();
        events.extend(ejected);
        events
    }
}

#[cfg(test)]
#[path = "outlier_latency_tests.rs"]
mod tests;
