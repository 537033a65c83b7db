//! A pool's latency predictor built from its `predictor:` settings, reporting to the pool's
//! metrics (`switchyard_predictor_*`, `switchyard_slo_picks_total`). The model itself lives in
//! `switchyard_inference::predictor`; this only wires it.

use std::sync::Arc;

use switchyard_config::predictor::Selection as ConfigSelection;
use switchyard_inference::{LatencyPredictor, PredictorConfig, PredictorMetrics, Selection, Slo};
use switchyard_telemetry::metrics::{
    PoolLabels, PoolObjectiveLabels, PoolOutcomeLabels, SLO_OUTCOMES,
};
use switchyard_telemetry::Metrics;

/// The predictor of pool `pool` with `endpoints` endpoints.
pub fn build(
    spec: &switchyard_config::Predictor,
    endpoints: usize,
    metrics: &Metrics,
    pool: &str,
) -> Arc<LatencyPredictor> {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let config = PredictorConfig {
        bucket_samples: spec.bucket_samples as usize,
        refit_every: spec.refit_every as usize,
        min_samples: spec.min_samples as usize,
        quantile: spec.quantile,
        explore: spec.explore,
        default_slo: Slo {
            ttft_ms: ms(spec.slo.ttft),
            tpot_ms: ms(spec.slo.tpot),
        },
        selection: match spec.selection {
            ConfigSelection::LeastHeadroom => Selection::LeastHeadroom,
            ConfigSelection::LowestLatency => Selection::LowestLatency,
        },
        queue: spec
            .queue
            .map(|q| switchyard_inference::slo_queue::QueueConfig {
                max_wait: q.max_wait,
                max_queued: q.max_queued as usize,
            }),
        late_priority: spec.late_priority,
    };
    let m = &metrics.predictor;
    let labels = PoolLabels {
        pool: pool.to_string(),
    };
    let outcome = |outcome| {
        m.slo_picks
            .get_or_create(&PoolOutcomeLabels {
                pool: pool.to_string(),
                outcome,
            })
            .clone()
    };
    let handles = PredictorMetrics {
        ttft_error: Some(m.ttft_error.get_or_create(&labels).clone()),
        latency_error: Some(m.latency_error.get_or_create(&labels).clone()),
        slo_picks: Some(SLO_OUTCOMES.map(outcome)),
    };
    Arc::new(LatencyPredictor::new(config, endpoints, handles))
}

/// Gauges read rather than counted: the rolling TTFT MAPE, the SLO margins, the window's size
/// and the requests held in the SLO queue.
pub fn refresh_gauges(p: &LatencyPredictor, metrics: &Metrics, labels: &PoolLabels) {
    let m = &metrics.predictor;
    if let Some(mape) = p.ttft_mape() {
        m.ttft_mape.get_or_create(labels).set(mape);
    }
    if let Some(model) = p.model() {
        let (ttft, tpot) = model.margins();
        for (objective, v) in [("ttft", ttft), ("tpot", tpot)] {
            let labels = PoolObjectiveLabels {
                pool: labels.pool.clone(),
                objective,
            };
            m.margin.get_or_create(&labels).set(v);
        }
    }
    m.samples
        .get_or_create(labels)
        .set(i64::try_from(p.samples()).unwrap_or(i64::MAX));
    if let Some(q) = p.queue() {
        m.slo_queued
            .get_or_create(labels)
            .set(i64::try_from(q.held()).unwrap_or(i64::MAX));
    }
}
