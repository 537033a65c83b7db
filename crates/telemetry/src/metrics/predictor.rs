//! Metrics of the `inference` balancer's latency predictor (`predictor:`): how wrong its
//! predictions are, measured online against each response, and what its SLO picks decided.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::labels::PoolLabels;

/// `outcome`: `met`, `explored`, `infeasible` (sent where the violation is predicted
/// smallest), `late` (infeasible even by the model's typical case, sent the same way) or `shed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabels {
    pub pool: String,
    pub outcome: &'static str,
}

/// `objective`: `ttft` or `tpot`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolObjectiveLabels {
    pub pool: String,
    pub objective: &'static str,
}

/// The outcomes of [`PredictorMetrics::slo_picks`], in the order the predictor counts them.
pub const SLO_OUTCOMES: [&str; 5] = ["met", "explored", "infeasible", "shed", "late"];

fn error_histogram() -> Histogram {
    // 0.5% .. ~260%, as a ratio (0.1 = 10%).
    Histogram::new(exponential_buckets(0.005, 2.0, 10))
}

#[derive(Debug, Clone)]
pub struct PredictorMetrics {
    pub ttft_error: Family<PoolLabels, Histogram, fn() -> Histogram>,
    pub latency_error: Family<PoolLabels, Histogram, fn() -> Histogram>,
    pub ttft_mape: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pub samples: Family<PoolLabels, Gauge>,
    pub margin: Family<PoolObjectiveLabels, Gauge<f64, AtomicU64>>,
    pub slo_queued: Family<PoolLabels, Gauge>,
    pub slo_picks: Family<PoolOutcomeLabels, Counter>,
}

impl PredictorMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            ttft_error: Family::new_with_constructor(error_histogram),
            latency_error: Family::new_with_constructor(error_histogram),
            ttft_mape: Family::default(),
            samples: Family::default(),
            margin: Family::default(),
            slo_queued: Family::default(),
            slo_picks: Family::default(),
        };
        registry.register(
            "switchyard_predictor_ttft_error_ratio",
            "Absolute percentage error (as a ratio) of each streamed response's TTFT as \
             predicted at pick time",
            m.ttft_error.clone(),
        );
        registry.register(
            "switchyard_predictor_latency_error_ratio",
            "Absolute percentage error (as a ratio) of each response's total latency as \
             predicted at pick time (streamed and not)",
            m.latency_error.clone(),
        );
        registry.register(
            "switchyard_predictor_ttft_mape",
            "Mean absolute percentage error (as a ratio) of the last 256 TTFT predictions",
            m.ttft_mape.clone(),
        );
        registry.register(
            "switchyard_predictor_samples",
            "Training samples in the predictor's window",
            m.samples.clone(),
        );
        registry.register(
            "switchyard_predictor_margin",
            "What SLO decisions multiply predictions by: the configured quantile of measured \
             over predicted latency (1 = predictions are taken as they are)",
            m.margin.clone(),
        );
        registry.register(
            "switchyard_slo_queued",
            "Requests held at the gateway for an endpoint predicted to meet their SLO \
             (predictor.queue)",
            m.slo_queued.clone(),
        );
        registry.register(
            "switchyard_slo_picks",
            "Picks of requests with a latency SLO, by outcome (met, explored, infeasible, shed)",
            m.slo_picks.clone(),
        );
        m
    }
}
