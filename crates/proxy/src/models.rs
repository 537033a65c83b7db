//! Model names as metric label values, with bounded cardinality.
//!
//! The `model` of a request is client input: labelling metrics with it as sent would let any
//! client mint series without end. So a model becomes a label value only when it is named in
//! the config (`match.model` without `*`, `rewrite.model`, `backends[].model`) or when an
//! upstream answered a request for it with a 2xx (a model some server really serves), and only
//! up to [`MAX_MODEL_LABELS`] names for the life of the process; the rest share the label
//! `other`. Names are interned to small ids so the request path indexes per-id handles
//! (resolved once per config generation, like `RouteMetrics`) instead of hashing label sets.
//!
//! Reads are lock-free (`ArcSwap`); a new name takes a mutex and copies the table, which
//! happens at most `MAX_MODEL_LABELS` times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_telemetry::metrics::ModelEndpointLabels;
use switchyard_telemetry::Metrics;

/// Distinct model label values, `other` included.
pub const MAX_MODEL_LABELS: usize = 64;

/// The label of models past the cap.
pub const OTHER_MODEL: &str = "other";

/// A model's index in [`ModelLabels`]; 0 is `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelId(pub u16);

impl ModelId {
    pub const OTHER: ModelId = ModelId(0);

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, ModelId>,
    /// Id → name; `names[0]` is `other`.
    names: Vec<Arc<str>>,
}

/// The process's model label values (shared by every config generation, so ids are stable).
pub struct ModelLabels {
    table: ArcSwap<Table>,
    write: Mutex<()>,
}

impl Default for ModelLabels {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelLabels {
    pub fn new() -> Self {
        let table = Table {
            ids: HashMap::new(),
            names: vec![Arc::from(OTHER_MODEL)],
        };
        Self {
            table: ArcSwap::from_pointee(table),
            write: Mutex::new(()),
        }
    }

    /// The id of `model` if it already has one.
    pub fn get(&self, model: &str) -> Option<ModelId> {
        self.table.load().ids.get(model).copied()
    }

    /// The id of a model named in the config, or of one an upstream served: a known name, a new
    /// one while there is room, else `other`.
    pub fn intern(&self, model: &str) -> ModelId {
        if let Some(id) = self.get(model) {
            return id;
        }
        let _guard = self.write.lock().expect("model label lock poisoned");
        let current = self.table.load_full();
        if let Some(id) = current.ids.get(model) {
            return *id;
        }
        if current.names.len() >= MAX_MODEL_LABELS {
            return ModelId::OTHER;
        }
        let id = ModelId(current.names.len() as u16);
        let name: Arc<str> = Arc::from(model);
        let mut ids = current.ids.clone();
        ids.insert(name.clone(), id);
        let mut names = current.names.clone();
        names.push(name);
        self.table.store(Arc::new(Table { ids, names }));
        id
    }

    /// The label value of `id`.
    pub fn name(&self, id: ModelId) -> Arc<str> {
        let table = self.table.load();
        table
            .names
            .get(id.index())
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER_MODEL))
    }
}

/// Histograms of streamed responses for one (model, pool, endpoint).
#[derive(Clone)]
pub struct ModelStreamMetrics {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub output_tokens: Histogram,
    pub tokens_per_second: Histogram,
}

type HistogramFamily = Family<ModelEndpointLabels, Histogram, fn() -> Histogram>;

/// A pool's per-endpoint, per-model stream histograms, each resolved on first use in a
/// generation.
pub struct PoolModelMetrics {
    pool: String,
    endpoints: Vec<String>,
    families: [HistogramFamily; 4],
    /// `endpoint * MAX_MODEL_LABELS + model`.
    cells: Box<[OnceLock<Box<ModelStreamMetrics>>]>,
}

impl PoolModelMetrics {
    pub fn new(metrics: &Metrics, pool: &str, endpoints: Vec<String>) -> Self {
        let cells = (0..endpoints.len() * MAX_MODEL_LABELS)
            .map(|_| OnceLock::new())
            .collect();
        Self {
            pool: pool.to_string(),
            endpoints,
            families: [
                metrics.inference_ttft.clone(),
                metrics.inference_itl.clone(),
                metrics.inference_output_tokens.clone(),
                metrics.inference_tokens_per_second.clone(),
            ],
            cells,
        }
    }

    /// The histograms for endpoint `index` and `model`.
    pub fn get(&self, index: usize, model: ModelId, labels: &ModelLabels) -> &ModelStreamMetrics {
        self.cells[index * MAX_MODEL_LABELS + model.index()].get_or_init(|| {
            let labels = ModelEndpointLabels {
                model: labels.name(model).to_string(),
                pool: self.pool.clone(),
                endpoint: self.endpoints[index].clone(),
            };
            let [ttft, itl, output_tokens, tokens_per_second] = self
                .families
                .each_ref()
                .map(|f| f.get_or_create(&labels).clone());
            Box::new(ModelStreamMetrics {
                ttft,
                itl,
                output_tokens,
                tokens_per_second,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_capped() {
        let m = ModelLabels::new();
        let a = m.intern("llama");
        assert_eq!(a, ModelId(1));
        assert_eq!(m.intern("llama"), a);
        assert_eq!(m.get("llama"), Some(a));
        assert_eq!(&*m.name(a), "llama");
        for i in 0..2 * MAX_MODEL_LABELS {
            let id = m.intern(&format!("junk-{i}"));
            assert!(id.index() < MAX_MODEL_LABELS);
        }
        assert_eq!(m.intern("late"), ModelId::OTHER);
        assert_eq!(&*m.name(ModelId::OTHER), OTHER_MODEL);
        assert_eq!(m.intern("llama"), a);
    }
}

/// The model a request names, as the upstream sees it and as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel {
    /// Sent upstream (after any rewrite); the `model` metric label and access log field.
    pub model: Arc<str>,
    /// What the client asked for, when a rewrite changed it.
    pub original: Option<String>,
}
