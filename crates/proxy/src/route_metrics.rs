//! Per-route metric handles, resolved once per generation so the request path never hashes
//! label sets.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_telemetry::metrics::{RequestLabels, RouteLabels, TokenLabels};
use switchyard_telemetry::Metrics;

use crate::models::{ModelCells, ModelId, ModelLabels, SeriesRemover};

/// The metric handles of one route target (route × pool).
pub struct RouteMetrics {
    route: String,
    pool: String,
    family: prometheus_client::metrics::family::Family<RequestLabels, Counter>,
    by_status: Box<[OnceLock<Counter>]>,
    pub duration: Histogram,
    /// Streamed responses: time to the first chunk, and between chunks.
    pub stream_first_chunk: Histogram,
    pub stream_chunk_gap: Histogram,
    /// Usage tokens of responses whose model the gateway did not read: (prompt, completion).
    pub tokens: (Counter, Counter),
    tokens_family: prometheus_client::metrics::family::Family<TokenLabels, Counter>,
    /// Usage tokens per model label, resolved on first use.
    tokens_by_model: ModelCells<(Counter, Counter)>,
    /// The rollout arm this target is, if its route has a rollout: it sees every finished
    /// request and streamed first chunk of the target.
    pub arm: Option<Arc<crate::rollout::judge::ArmWindow>>,
    /// What `/stats` and the dashboard read: kept across reloads by (route, pool).
    pub live: Arc<crate::observe::LiveRoute>,
}

impl RouteMetrics {
    pub fn new(
        metrics: &Metrics,
        live: &crate::observe::LiveRegistry,
        route: &str,
        pool: &str,
    ) -> Self {
        let labels = RouteLabels {
            route: route.to_string(),
            pool: pool.to_string(),
        };
        let duration = metrics.request_duration.get_or_create(&labels).clone();
        let stream_first_chunk = metrics.stream_ttft.get_or_create(&labels).clone();
        let stream_chunk_gap = metrics.stream_gap.get_or_create(&labels).clone();
        let tokens = token_counters(&metrics.tokens, route, pool, "");
        Self {
            route: route.to_string(),
            pool: pool.to_string(),
            family: metrics.requests.clone(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            duration,
            stream_first_chunk,
            stream_chunk_gap,
            tokens,
            tokens_family: metrics.tokens.clone(),
            tokens_by_model: ModelCells::new(),
            arm: None,
            live: live.route(route, pool),
        }
    }

    /// Feed a rollout arm too.
    pub fn with_arm(mut self, arm: Option<Arc<crate::rollout::judge::ArmWindow>>) -> Self {
        self.arm = arm;
        self
    }

    /// Usage token counters (prompt, completion) for `model`.
    pub fn model_tokens(&self, model: ModelId, labels: &ModelLabels) -> (Counter, Counter) {
        self.tokens_by_model.get(model, labels, |name| {
            let counters = token_counters(&self.tokens_family, &self.route, &self.pool, name);
            let (family, route, pool, model) = (
                self.tokens_family.clone(),
                self.route.clone(),
                self.pool.clone(),
                name.to_string(),
            );
            let remove: SeriesRemover = Box::new(move || {
                for kind in ["prompt", "completion"] {
                    family.remove(&TokenLabels {
                        route: route.clone(),
                        pool: pool.clone(),
                        model: model.clone(),
                        kind,
                    });
                }
            });
            (counters, remove)
        })
    }

    /// Count one finished request with its status.
    pub fn count(&self, status: u16) {
        let idx = usize::from(status.clamp(100, 599) - 100);
        self.by_status[idx]
            .get_or_init(|| {
                self.family
                    .get_or_create(&RequestLabels {
                        route: self.route.clone(),
                        pool: self.pool.clone(),
                        code: status,
                    })
                    .clone()
            })
            .inc();
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }
}

fn token_counters(
    family: &prometheus_client::metrics::family::Family<TokenLabels, Counter>,
    route: &str,
    pool: &str,
    model: &str,
) -> (Counter, Counter) {
    let counter = |kind| {
        family
            .get_or_create(&TokenLabels {
                route: route.to_string(),
                pool: pool.to_string(),
                model: model.to_string(),
                kind,
            })
            .clone()
    };
    (counter("prompt"), counter("completion"))
}
