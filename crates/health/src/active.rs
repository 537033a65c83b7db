//! Active health checking: one tokio task per endpoint probes it on a jittered timer and flips
//! its health after `unhealthy` consecutive failures or `healthy` consecutive passes.
//!
//! Thresholds rather than single probes, as in Envoy's health checking: one lost SYN or one slow
//! GC pause should not drain an endpoint, and one lucky probe should not return a broken one.
//! Jitter spreads the probes of many gateways so a fleet of them never probes in lockstep.
//!
//! New endpoints start healthy, with or without a check configured. Envoy instead holds them
//! back until the first probe passes; we choose to send traffic at once, because a gateway that
//! restarts or reloads would otherwise refuse every request for one probe interval. A broken new
//! endpoint is caught by the first `unhealthy` probes, and by passive outlier detection sooner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_balance::EndpointState;
use tokio::task::JoinHandle;

use crate::probe::{Probe, ProbeFailure};

/// How to probe a pool's endpoints and when to change their health.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Each wait is `interval ± jitter`; `None` means 10% of `interval`.
    pub jitter: Option<Duration>,
    /// Consecutive passes that turn an unhealthy endpoint healthy.
    pub healthy: u32,
    /// Consecutive failures that turn a healthy endpoint unhealthy.
    pub unhealthy: u32,
    /// Probe over TLS (pools with `tls`).
    pub tls: Option<crate::probe::ProbeTls>,
}

impl ActiveCheck {
    /// A check with the defaults: every 5s, 1s timeout, thresholds of 2.
    pub fn new(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            jitter: None,
            healthy: 2,
            unhealthy: 2,
            tls: None,
        }
    }

    /// The wait before the next probe: `interval ± jitter`, uniformly.
    pub fn next_wait(&self) -> Duration {
        let jitter = self.jitter.unwrap_or(self.interval / 10).min(self.interval);
        let spread = u64::try_from(jitter.as_nanos() * 2).unwrap_or(u64::MAX);
        let offset = Duration::from_nanos(fastrand::u64(0..=spread));
        (self.interval + offset).saturating_sub(jitter)
    }
}

/// An endpoint changed health. The proxy counts these (e.g. `health_transitions_total{healthy}`)
/// and logs the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub address: SocketAddr,
    pub healthy: bool,
    pub reason: String,
}

/// Receives every [`HealthEvent`]; called from the probe tasks, so it must be quick.
pub type EventSink = Arc<dyn Fn(HealthEvent) + Send + Sync>;

/// Consecutive probe results of one endpoint and the health they imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCounters {
    pub healthy: bool,
    pub successes: u32,
    pub failures: u32,
}

impl ProbeCounters {
    pub fn new(healthy: bool) -> Self {
        Self {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Count one probe result; returns `Some((healthy, reason))` when health changes.
    pub fn observe(
        &mut self,
        result: &Result<(), ProbeFailure>,
        check: &ActiveCheck,
    ) -> Option<(bool, String)> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.healthy && self.successes >= check.healthy {
                    self.healthy = true;
                    return Some((
                        true,
                        format!("{} consecutive probes passed", self.successes),
                    ));
                }
            }
            Err(failure) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.healthy && self.failures >= check.unhealthy {
                    self.healthy = false;
                    return Some((
                        false,
                        format!(
                            "{} consecutive probes failed; last: {failure}",
                            self.failures
                        ),
                    ));
                }
            }
        }
        None
    }
}

struct Tracked {
    endpoint: Arc<EndpointState>,
    counters: Arc<Mutex<ProbeCounters>>,
    task: Option<JoinHandle<()>>,
}

impl Tracked {
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Owns the probe tasks of one pool. Health is written to [`EndpointState::set_healthy`] (so
/// `is_healthy()` on the pick path reflects it) and reported to the [`EventSink`].
///
/// Must be created and updated inside a tokio runtime. Dropping it stops every task.
pub struct HealthChecker {
    check: Option<Arc<ActiveCheck>>,
    sink: EventSink,
    endpoints: HashMap<SocketAddr, Tracked>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("check", &self.check)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl HealthChecker {
    /// A checker for `endpoints`; `check: None` means no probing (every endpoint healthy).
    pub fn new(
        check: Option<ActiveCheck>,
        endpoints: impl IntoIterator<Item = Arc<EndpointState>>,
        sink: EventSink,
    ) -> Self {
        let mut checker = Self {
            check: None,
            sink,
            endpoints: HashMap::new(),
        };
        checker.update(check, endpoints);
        checker
    }

    /// Apply a reload: endpoints that remain keep their health and counters; added ones start
    /// healthy and get a task; removed ones lose theirs. A changed check restarts every task
    /// (health is kept, consecutive counts restart). Removing the check marks all healthy.
    pub fn update(
        &mut self,
        check: Option<ActiveCheck>,
        endpoints: impl IntoIterator<Item = Arc<EndpointState>>,
    ) {
        let check = check.map(Arc::new);
        let check_changed = check != self.check;
        self.check = check;
        let mut next = HashMap::new();
        for endpoint in endpoints {
            let address = endpoint.address;
            let mut tracked = match self.endpoints.remove(&address) {
                Some(mut old) if Arc::ptr_eq(&old.endpoint, &endpoint) && !check_changed => {
                    old.endpoint = endpoint;
                    old
                }
                Some(mut old) => {
                    old.stop();
                    let mut counters = old.counters.lock().unwrap_or_else(|e| e.into_inner());
                    counters.successes = 0;
                    counters.failures = 0;
                    endpoint.set_healthy(counters.healthy);
                    drop(counters);
                    Tracked {
                        endpoint,
                        counters: old.counters.clone(),
                        task: None,
                    }
                }
                None => Tracked {
                    counters: Arc::new(Mutex::new(ProbeCounters::new(endpoint.is_healthy()))),
                    endpoint,
                    task: None,
                },
            };
            match &self.check {
                Some(check) if tracked.task.is_none() => {
                    tracked.task = Some(tokio::spawn(probe_loop(
                        check.clone(),
                        tracked.endpoint.clone(),
                        tracked.counters.clone(),
                        self.sink.clone(),
                    )));
                }
                Some(_) => {}
                None => self.mark_healthy_unchecked(&tracked),
            }
            next.insert(address, tracked);
        }
        for (_, mut removed) in self.endpoints.drain() {
            removed.stop();
        }
        self.endpoints = next;
    }

    fn mark_healthy_unchecked(&self, tracked: &Tracked) {
        let mut counters = tracked.counters.lock().unwrap_or_else(|e| e.into_inner());
        let was_healthy = counters.healthy;
        *counters = ProbeCounters::new(true);
        tracked.endpoint.set_healthy(true);
        if !was_healthy {
            (self.sink)(HealthEvent {
                address: tracked.endpoint.address,
                healthy: true,
                reason: "health check removed".to_string(),
            });
        }
    }

    /// Whether active checking currently considers `addr` healthy (`true` for unknown
    /// addresses: with no information, do not hold traffic back).
    pub fn is_healthy(&self, addr: SocketAddr) -> bool {
        match self.endpoints.get(&addr) {
            Some(t) => t.counters.lock().unwrap_or_else(|e| e.into_inner()).healthy,
            None => true,
        }
    }

    /// Addresses currently checked.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints.keys().copied()
    }

    /// Stop every probe task; health stays as it was last set.
    pub fn shutdown(&mut self) {
        self.endpoints.values_mut().for_each(Tracked::stop);
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn probe_loop(
    check: Arc<ActiveCheck>,
    endpoint: Arc<EndpointState>,
    counters: Arc<Mutex<ProbeCounters>>,
    sink: EventSink,
) {
    let address = endpoint.address;
    loop {
        let result = check
            .probe
            .run_tls(address, check.timeout, check.tls.as_ref())
            .await;
        if let Err(failure) = &result {
            tracing::debug!(%address, %failure, "health probe failed");
        }
        let change = counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&result, &check);
        if let Some((healthy, reason)) = change {
            endpoint.set_healthy(healthy);
            tracing::info!(%address, healthy, %reason, "endpoint health changed");
            sink(HealthEvent {
                address,
                healthy,
                reason,
            });
        }
        tokio::time::sleep(check.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> ActiveCheck {
        ActiveCheck {
            healthy,
            unhealthy,
            ..ActiveCheck::new(Probe::Tcp)
        }
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let check = check(2, 3);
        let mut c = ProbeCounters::new(true);
        let fail = Err(ProbeFailure::Timeout);
        assert_eq!(c.observe(&fail, &check), None);
        assert_eq!(c.observe(&fail, &check), None);
        // A pass in between resets the failure streak.
        assert_eq!(c.observe(&Ok(()), &check), None);
        assert_eq!(c.observe(&fail, &check), None);
        assert_eq!(c.observe(&fail, &check), None);
        let (healthy, reason) = c.observe(&fail, &check).unwrap();
        assert!(!healthy);
        assert!(reason.contains("timed out"), "{reason}");
        assert_eq!(c.observe(&fail, &check), None, "already unhealthy");
        assert_eq!(c.observe(&Ok(()), &check), None);
        assert_eq!(c.observe(&Ok(()), &check).map(|c| c.0), Some(true));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut c = check(1, 1);
        c.interval = Duration::from_millis(1000);
        for _ in 0..1000 {
            let wait = c.next_wait();
            assert!((900..=1100).contains(&wait.as_millis()), "{wait:?}");
        }
        c.jitter = Some(Duration::ZERO);
        assert_eq!(c.next_wait(), Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn update_keeps_remaining_and_stops_removed() {
        let a = Arc::new(EndpointState::new("127.0.0.1:1".parse().unwrap()));
        let b = Arc::new(EndpointState::new("127.0.0.1:2".parse().unwrap()));
        let sink: EventSink = Arc::new(|_| {});
        let mut checker = HealthChecker::new(None, [a.clone(), b.clone()], sink);
        assert_eq!(checker.addresses().count(), 2);
        a.set_healthy(false);
        // No check configured: an update marks everything healthy again.
        checker.update(None, [a.clone()]);
        assert!(a.is_healthy());
        assert_eq!(checker.addresses().collect::<Vec<_>>(), [a.address]);
        assert!(
            checker.is_healthy(b.address),
            "unknown addresses are not held back"
        );
    }
}
