//! Passive outlier detection, after Envoy's (see "Outlier detection" in Envoy's architecture
//! overview): the proxy reports the outcome of every attempt, and endpoints whose real traffic
//! fails are ejected for a while.
//!
//! Why passive as well as active checks: a probe asks "are you up?", traffic asks "do you
//! answer correctly under load?". An inference server with a wedged GPU still answers
//! `/health`; its 5xx and timeouts on real requests say otherwise, and they say it within a few
//! requests instead of a few probe intervals.
//!
//! Four detectors, as in Envoy: consecutive 5xx, consecutive gateway errors (502/503/504,
//! connect failure, reset, timeout), success rate (statistical, relative to the pool) and
//! failure percentage (absolute). A fifth, consecutive refused connections (default: one),
//! takes the view Linkerd's balancer takes of an endpoint it cannot connect to: a refused
//! connection means nothing listens on the port, so the server is down, and every request sent
//! there until two more pile up only buys a retry. (A full accept queue drops the SYN rather
//! than refusing it, so overload does not look like this.) Ejection time is `base_ejection × times ejected` capped by
//! `max_ejection`, so a flapping endpoint stays out longer each time; the multiplier decays by
//! one for every interval the endpoint stays in. `max_ejected_percent` bounds the share ejected at
//! once, so a pool-wide failure (a bad deploy) never ejects everything; one endpoint may always
//! be ejected.
//!
//! The detector is pure logic: time is passed in, so tests run under `tokio::time::pause()`.
//! The pick path reads an [`EjectionSnapshot`] through an `ArcSwap`, never the detector's lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Outlier detection settings for one pool. A consecutive threshold of `0` turns it off.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_refused: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
    pub interval: Duration,
    pub success_rate: Option<SuccessRateSettings>,
    pub failure_percentage: Option<FailurePercentageSettings>,
    pub latency: Option<LatencySettings>,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 3,
            consecutive_refused: 1,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 10,
            interval: Duration::from_secs(10),
            success_rate: None,
            failure_percentage: None,
            latency: None,
        }
    }
}

/// Envoy's success-rate detector settings (`stdev_factor` is in thousandths).
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRateSettings {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: u32,
}

impl Default for SuccessRateSettings {
    fn default() -> Self {
        Self {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1900,
        }
    }
}

/// Envoy's failure-percentage detector settings (`threshold` in percent).
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePercentageSettings {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

impl Default for FailurePercentageSettings {
    fn default() -> Self {
        Self {
            threshold: 85,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

/// The outcome of one attempt against an endpoint, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any response below 500.
    Success,
    /// A 5xx response other than 502/503/504.
    Http5xx,
    /// 502/503/504, or no response at all: connect failure, reset, timeout.
    GatewayError,
    /// The connection was refused: a gateway error that also says nothing listens there.
    ConnectRefused,
    /// The attempt ended for a reason that says nothing about the endpoint (the client went
    /// away, a local limit): ignored.
    LocalOrigin,
}

impl Outcome {
    /// Classify a response status.
    pub fn from_status(status: u16) -> Self {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::Http5xx,
            _ => Outcome::Success,
        }
    }
}

/// Which detector ejected an endpoint; `as_str` is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveRefused,
    SuccessRate,
    FailurePercentage,
    Latency,
}

impl EjectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            EjectReason::ConsecutiveRefused => "connect_refused",
            EjectReason::SuccessRate => "success_rate",
            EjectReason::FailurePercentage => "failure_percentage",
            EjectReason::Latency => "latency",
        }
    }
}

/// A change the proxy should count (`outlier_ejections_total{reason}`) and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutlierEvent {
    Ejected {
        address: SocketAddr,
        reason: EjectReason,
        duration: Duration,
    },
    Returned {
        address: SocketAddr,
    },
}

/// The ejected endpoints and until when; cheap to read on every pick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EjectionSnapshot {
    ejected: Vec<(SocketAddr, Instant)>,
}

impl EjectionSnapshot {
    /// Whether `addr` is ejected at `now`. Ejections are few, so this is a short linear scan.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.ejected
            .iter()
            .any(|&(a, until)| a == addr && now < until)
    }

    /// Endpoints ejected at `now`.
    pub fn count(&self, now: Instant) -> usize {
        self.ejected
            .iter()
            .filter(|&&(_, until)| now < until)
            .count()
    }
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_refused: u32,
    /// Times ejected, minus decay: the ejection time multiplier.
    multiplier: u32,
    ejected_until: Option<Instant>,
    returned_at: Option<Instant>,
    successes: u64,
    failures: u64,
    /// Latency intervals in a row this endpoint was judged slow.
    slow_intervals: u32,
}

impl Host {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// Outlier detection for one pool. Wrap it in a `Mutex`: `record` after every attempt, `tick`
/// every `settings.interval`; read [`OutlierDetector::snapshot`] on the pick path.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    hosts: HashMap<SocketAddr, Host>,
    snapshot: Arc<ArcSwap<EjectionSnapshot>>,
    /// Returns found between ticks (see [`OutlierDetector::take_returned`]).
    returned: Vec<OutlierEvent>,
}

impl OutlierDetector {
    pub fn new(settings: OutlierSettings, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut detector = Self {
            settings,
            hosts: HashMap::new(),
            snapshot: Arc::default(),
            returned: Vec::new(),
        };
        detector.update(None, endpoints);
        detector
    }

    /// Apply a reload: endpoints that remain keep their counters and ejections.
    pub fn update(
        &mut self,
        settings: Option<OutlierSettings>,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) {
        if let Some(settings) = settings {
            self.settings = settings;
        }
        let mut old = std::mem::take(&mut self.hosts);
        self.hosts = endpoints
            .into_iter()
            .map(|a| (a, old.remove(&a).unwrap_or_default()))
            .collect();
        self.publish();
    }

    pub fn settings(&self) -> &OutlierSettings {
        &self.settings
    }

    /// Whether attempt outcomes feed a detector ([`OutlierDetector::record`] does anything);
    /// a latency-only detector needs none, so the request path can skip its lock.
    pub fn counts_outcomes(&self) -> bool {
        let s = &self.settings;
        s.consecutive_5xx > 0
            || s.consecutive_gateway_errors > 0
            || s.consecutive_refused > 0
            || s.success_rate.is_some()
            || s.failure_percentage.is_some()
    }

    /// A handle the pick path loads (`handle.load().is_ejected(addr, now)`); it stays current.
    pub fn snapshot(&self) -> Arc<ArcSwap<EjectionSnapshot>> {
        self.snapshot.clone()
    }

    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.hosts.get(&addr).is_some_and(|h| h.is_ejected(now))
    }

    /// Count one attempt's outcome; returns the ejection it caused, if any.
    pub fn record(
        &mut self,
        addr: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<OutlierEvent> {
        let s = &self.settings;
        let host = self.hosts.get_mut(&addr)?;
        match outcome {
            Outcome::LocalOrigin => return None,
            Outcome::Success => {
                host.successes += 1;
                host.consecutive_5xx = 0;
                host.consecutive_gateway = 0;
                host.consecutive_refused = 0;
                return None;
            }
            Outcome::Http5xx => {
                host.failures += 1;
                host.consecutive_5xx += 1;
                host.consecutive_gateway = 0;
                host.consecutive_refused = 0;
            }
            Outcome::GatewayError => {
                host.failures += 1;
                host.consecutive_5xx += 1;
                host.consecutive_gateway += 1;
                host.consecutive_refused = 0;
            }
            Outcome::ConnectRefused => {
                host.failures += 1;
                host.consecutive_5xx += 1;
                host.consecutive_gateway += 1;
                host.consecutive_refused += 1;
            }
        }
        if host.is_ejected(now) {
            return None;
        }
        let reason =
            if s.consecutive_refused > 0 && host.consecutive_refused >= s.consecutive_refused {
                EjectReason::ConsecutiveRefused
            } else if s.consecutive_gateway_errors > 0
                && host.consecutive_gateway >= s.consecutive_gateway_errors
            {
                EjectReason::ConsecutiveGatewayErrors
            } else if s.consecutive_5xx > 0 && host.consecutive_5xx >= s.consecutive_5xx {
                EjectReason::Consecutive5xx
            } else {
                return None;
            };
        let event = self.try_eject(addr, reason, now);
        self.publish();
        event
    }

    /// Run the interval work at `now`: return endpoints whose ejection ended, decay
    /// multipliers, run the success-rate and failure-percentage detectors over the interval's
    /// counts, and start a new interval.
    pub fn tick(&mut self, now: Instant) -> Vec<OutlierEvent> {
        let interval = self.settings.interval;
        self.expire(now);
        let mut events = self.take_returned();
        for host in self.hosts.values_mut() {
            if !host.is_ejected(now)
                && host
                    .returned_at
                    .is_some_and(|t| now.duration_since(t) >= interval)
            {
                host.multiplier = host.multiplier.saturating_sub(1);
            }
        }
        let mut candidates = Vec::new();
        if let Some(sr) = self.settings.success_rate.clone() {
            candidates.extend(self.success_rate_outliers(&sr, now));
        }
        if let Some(fp) = self.settings.failure_percentage.clone() {
            candidates.extend(self.failure_percentage_outliers(&fp, now));
        }
        for (address, reason) in candidates {
            if !self.is_ejected(address, now) {
                events.extend(self.try_eject(address, reason, now));
            }
        }
        for host in self.hosts.values_mut() {
            host.successes = 0;
            host.failures = 0;
        }
        self.publish();
        events
    }

    /// (address, success rate in percent) of non-ejected endpoints with at least `volume`
    /// requests this interval.
    fn rates(&self, volume: u32, now: Instant) -> Vec<(SocketAddr, f64)> {
        let mut rates: Vec<_> = self
            .hosts
            .iter()
            .filter(|(_, h)| !h.is_ejected(now) && h.successes + h.failures >= u64::from(volume))
            .map(|(&a, h)| {
                (
                    a,
                    100.0 * h.successes as f64 / (h.successes + h.failures) as f64,
                )
            })
            .collect();
        // Worst first, so the ejection cap keeps out the worst ones.
        rates.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        rates
    }

    /// Envoy's rule: eject below `mean − stdev × stdev_factor / 1000` (population stdev).
    fn success_rate_outliers(
        &self,
        sr: &SuccessRateSettings,
        now: Instant,
    ) -> Vec<(SocketAddr, EjectReason)> {
        let rates = self.rates(sr.request_volume, now);
        if rates.is_empty() || rates.len() < sr.minimum_hosts as usize {
            return Vec::new();
        }
        let n = rates.len() as f64;
        let mean = rates.iter().map(|r| r.1).sum::<f64>() / n;
        let variance = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean - variance.sqrt() * f64::from(sr.stdev_factor) / 1000.0;
        rates
            .into_iter()
            .filter(|&(_, rate)| rate < threshold)
            .map(|(a, _)| (a, EjectReason::SuccessRate))
            .collect()
    }

    fn failure_percentage_outliers(
        &self,
        fp: &FailurePercentageSettings,
        now: Instant,
    ) -> Vec<(SocketAddr, EjectReason)> {
        let rates = self.rates(fp.request_volume, now);
        if rates.is_empty() || rates.len() < fp.minimum_hosts as usize {
            return Vec::new();
        }
        rates
            .into_iter()
            .filter(|&(_, rate)| 100.0 - rate >= f64::from(fp.threshold))
            .map(|(a, _)| (a, EjectReason::FailurePercentage))
            .collect()
    }

    /// Return every endpoint whose ejection has ended by `now`. Ticks do it, and so does every
    /// ejection before it counts the ejected against the cap: otherwise an endpoint the cap
    /// counts as back would still be flagged out until the next tick, and a burst of
    /// ejections in between could flag out more than `max_ejected_percent` (measured: all
    /// eight of a pool for half a second, with a 50% cap).
    fn expire(&mut self, now: Instant) {
        for (&address, host) in &mut self.hosts {
            if let Some(until) = host.ejected_until.filter(|&u| now >= u) {
                host.ejected_until = None;
                host.returned_at = Some(until);
                self.returned.push(OutlierEvent::Returned { address });
            }
        }
    }

    /// Returns found since the last call (by ejections between ticks): hand them to the same
    /// sink as the ejections, so the endpoints' flags come back at once.
    pub fn take_returned(&mut self) -> Vec<OutlierEvent> {
        std::mem::take(&mut self.returned)
    }

    /// Eject `addr` unless the cap forbids it; the caller publishes and takes the returns.
    fn try_eject(
        &mut self,
        addr: SocketAddr,
        reason: EjectReason,
        now: Instant,
    ) -> Option<OutlierEvent> {
        self.expire(now);
        let total = self.hosts.len() as u64;
        let ejected = self.hosts.values().filter(|h| h.is_ejected(now)).count() as u64;
        let cap = u64::from(self.settings.max_ejected_percent);
        if ejected > 0 && (ejected + 1) * 100 > cap * total {
            tracing::debug!(%addr, reason = reason.as_str(), "ejection skipped: max_ejected_percent");
            return None;
        }
        let s = &self.settings;
        let host = self.hosts.get_mut(&addr)?;
        host.multiplier = host.multiplier.saturating_add(1);
        let duration = s
            .base_ejection
            .saturating_mul(host.multiplier)
            .min(s.max_ejection.max(s.base_ejection));
        host.ejected_until = Some(now + duration);
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        host.consecutive_refused = 0;
        tracing::info!(%addr, reason = reason.as_str(), ?duration, "endpoint ejected");
        Some(OutlierEvent::Ejected {
            address: addr,
            reason,
            duration,
        })
    }

    fn publish(&self) {
        let mut ejected: Vec<_> = self
            .hosts
            .iter()
            .filter_map(|(&a, h)| h.ejected_until.map(|until| (a, until)))
            .collect();
        ejected.sort();
        if self.snapshot.load().ejected != ejected {
            self.snapshot.store(Arc::new(EjectionSnapshot { ejected }));
        }
    }
}

/// Call [`OutlierDetector::tick`] every `settings().interval` (re-read each time, so reloads
/// apply) and hand each event to `on_event`. The task ends when the detector is dropped.
pub fn spawn_ticker(
    detector: &Arc<Mutex<OutlierDetector>>,
    on_event: impl Fn(OutlierEvent) + Send + 'static,
) -> JoinHandle<()> {
    let detector: Weak<Mutex<OutlierDetector>> = Arc::downgrade(detector);
    tokio::spawn(async move {
        loop {
            let interval = match detector.upgrade() {
                Some(d) => {
                    d.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .settings
                        .interval
                }
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(d) = detector.upgrade() else { return };
            let events = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tick(Instant::now());
            drop(d);
            events.into_iter().for_each(&on_event);
        }
    })
}

#[path = "outlier_latency.rs"]
mod latency;
pub use latency::LatencySettings;

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
