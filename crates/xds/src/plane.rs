//! The control plane's state: the config it serves, the capacity weights it computed, and the
//! snapshot of Envoy resources both translate to. Every ADS stream watches the snapshot and
//! sends what changed for it; a reload or a weight change that changes nothing sends nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use switchyard_config::Config;
use switchyard_telemetry::metrics::{ReloadLabels, XdsMetrics};
use tokio::sync::watch;

use crate::nodes::Nodes;
use crate::resources::Snapshot;
use crate::translate::{translate, EndpointWeights, Report};

#[derive(Debug)]
pub struct ControlPlane {
    state: Mutex<State>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    report: ArcSwap<Report>,
    pub nodes: Nodes,
    pub metrics: Arc<XdsMetrics>,
}

#[derive(Debug)]
struct State {
    config: Arc<Config>,
    weights: HashMap<String, EndpointWeights>,
}

impl ControlPlane {
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = Arc::new(XdsMetrics::new());
        let (snapshot, report) = translate(&config, &HashMap::new());
        log_untranslated(&Report::default(), &report);
        metrics.untranslated.set(report.untranslated.len() as i64);
        Arc::new(Self {
            state: Mutex::new(State {
                config: Arc::new(config),
                weights: HashMap::new(),
            }),
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            report: ArcSwap::from_pointee(report),
            nodes: Nodes::new(metrics.clone()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// Serve `config` from now on. Weights of pools that remain are kept until recomputed.
    pub fn reload(&self, config: Config) {
        let mut state = self.lock();
        let pools: BTreeSet<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        state.weights.retain(|p, _| pools.contains(p.as_str()));
        state.config = Arc::new(config);
        self.publish(&state);
        self.metrics
            .reloads
            .get_or_create(&ReloadLabels { result: "success" })
            .inc();
    }

    pub fn reload_failed(&self) {
        self.metrics
            .reloads
            .get_or_create(&ReloadLabels { result: "failure" })
            .inc();
    }

    /// New capacity weights and health for `pool`'s endpoints.
    pub fn set_weights(&self, pool: &str, weights: EndpointWeights) {
        let mut state = self.lock();
        // A task of a pool a reload just removed may report once more before it stops.
        if state.weights.get(pool) == Some(&weights)
            || !state.config.pools.iter().any(|p| p.name == pool)
        {
            return;
        }
        state.weights.insert(pool.to_string(), weights);
        self.publish(&state);
    }

    pub fn weights(&self) -> HashMap<String, EndpointWeights> {
        self.lock().weights.clone()
    }

    fn publish(&self, state: &State) {
        let (snapshot, report) = translate(&state.config, &state.weights);
        log_untranslated(&self.report.load(), &report);
        self.metrics
            .untranslated
            .set(report.untranslated.len() as i64);
        self.report.store(Arc::new(report));
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    pub fn report(&self) -> Arc<Report> {
        self.report.load_full()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }
}

/// Each untranslated field is logged once: at the load that first leaves it out.
fn log_untranslated(before: &Report, now: &Report) {
    for u in &now.untranslated {
        if !before.untranslated.contains(u) {
            tracing::warn!(field = %u.field, reason = %u.reason, "not translated for Envoy");
        }
    }
}
