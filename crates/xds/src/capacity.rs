//! Capacity-aware endpoint weights for `inference` and `weighted_least_utilization` pools: the
//! control plane scrapes each endpoint's model-server metrics with the gateway's own scraper
//! (`switchyard_inference::scrape`), probes them with the gateway's health checks
//! (`switchyard_health`), and every `xds.weights_interval` turns the loads into weights
//! ([`crate::weights`]) and the probe verdicts into `UNHEALTHY`; the plane pushes EDS only when
//! either changed.
//!
//! `weighted_least_utilization` pools balance on ORCA reports riding on responses, which the
//! control plane never sees; it scrapes their endpoints' vLLM metrics instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_balance::EndpointState;
use switchyard_config::{Balancer, Pool};
use switchyard_health::{ActiveCheck, HealthChecker};
use switchyard_inference::scrape::{spawn_scraper, MetricNames, ScrapeEvent};
use switchyard_inference::EndpointSignals;
use tokio::task::JoinHandle;

use crate::plane::ControlPlane;
use crate::translate::{EndpointHealth, EndpointWeights};
use crate::weights::Weights;

/// Weights are recomputed this often unless `xds.weights_interval` says otherwise.
pub const DEFAULT_WEIGHTS_INTERVAL: Duration = Duration::from_secs(1);

/// The running weight tasks, one per watched pool. A reload keeps the task (and so the smoothed
/// loads, the weights and the health verdicts) of a pool whose settings did not change.
#[derive(Debug)]
pub struct Capacity {
    plane: Arc<ControlPlane>,
    tasks: Mutex<HashMap<String, Watched>>,
}

#[derive(Debug)]
struct Watched {
    pool: Pool,
    interval: Duration,
    task: JoinHandle<()>,
}

impl Capacity {
    /// Start watching the plane's pools. Must be called inside a tokio runtime.
    pub fn start(plane: Arc<ControlPlane>) -> Capacity {
        let c = Capacity {
            plane,
            tasks: Mutex::new(HashMap::new()),
        };
        c.reload();
        c
    }

    /// Watch the pools of the plane's current config (after a reload).
    pub fn reload(&self) {
        let config = self.plane.config();
        let interval = config
            .xds
            .as_ref()
            .map_or(DEFAULT_WEIGHTS_INTERVAL, |x| x.weights_interval);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut old = std::mem::take(&mut *tasks);
        for pool in &config.pools {
            let Some(scrape) = scrape_settings(&pool.balancer) else {
                continue;
            };
            let kept = old
                .remove(&pool.name)
                .filter(|w| w.pool == *pool && w.interval == interval);
            let watched = kept.unwrap_or_else(|| Watched {
                pool: pool.clone(),
                interval,
                task: tokio::spawn(watch_pool(
                    self.plane.clone(),
                    pool.clone(),
                    scrape,
                    interval,
                )),
            });
            tasks.insert(pool.name.clone(), watched);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Scrape {
    names: MetricNames,
    interval: Duration,
    stale_after: Duration,
}

fn scrape_settings(b: &Balancer) -> Option<Scrape> {
    match b {
        Balancer::Inference {
            metrics,
            scrape_interval,
            stale_after,
            ..
        } => Some(Scrape {
            names: MetricNames::preset(metrics).unwrap_or_else(MetricNames::vllm),
            interval: *scrape_interval,
            stale_after: *stale_after,
        }),
        Balancer::WeightedLeastUtilization { .. } => Some(Scrape {
            names: MetricNames::vllm(),
            interval: Duration::from_millis(100),
            stale_after: Duration::from_secs(2),
        }),
        _ => None,
    }
}

async fn watch_pool(plane: Arc<ControlPlane>, pool: Pool, scrape: Scrape, interval: Duration) {
    let addresses: Vec<SocketAddr> = pool.endpoints.iter().map(|e| e.address).collect();
    let signals: Vec<(SocketAddr, Arc<EndpointSignals>)> = addresses
        .iter()
        .map(|a| (*a, Arc::new(EndpointSignals::new())))
        .collect();
    let name = pool.name.clone();
    let _scraper = spawn_scraper(
        signals.clone(),
        scrape.names,
        (scrape.interval, scrape.interval * 2),
        scrape.stale_after,
        Arc::new(move |e| {
            if let ScrapeEvent::Failed {
                endpoint,
                error,
                first: true,
            } = e
            {
                tracing::warn!(pool = %name, %endpoint, cause = %error, "scrape failed; the endpoint keeps its weight");
            }
        }),
    );
    let states: Vec<Arc<EndpointState>> = addresses
        .iter()
        .map(|a| Arc::new(EndpointState::new(*a)))
        .collect();
    let _health = HealthChecker::new(
        pool.health.as_ref().map(ActiveCheck::from),
        states.clone(),
        Arc::new(|_| {}),
    );
    let mut weights = Weights::new(addresses.len());
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let loads: Vec<Option<f64>> = signals
            .iter()
            .map(|(_, s)| {
                let snap = s.snapshot(now, scrape.stale_after);
                snap.fresh.then_some(snap.waiting + snap.running)
            })
            .collect();
        let current = weights.update(&loads);
        let out: EndpointWeights = addresses
            .iter()
            .zip(current)
            .zip(&states)
            .map(|((a, w), s)| {
                (
                    *a,
                    EndpointHealth {
                        weight: *w,
                        healthy: s.is_healthy(),
                    },
                )
            })
            .collect();
        plane.set_weights(&pool.name, out);
    }
}
