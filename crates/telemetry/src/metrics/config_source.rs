//! Metrics of where the config comes from when it is not a local file: the etcd revision this
//! replica applied (compare it across a fleet to find a replica stuck on stale config) and what
//! went wrong reading it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `reason`: `invalid` (a revision refused by validation), `unreachable` (etcd could not be
/// read), `compacted` (the watch fell behind etcd's compaction and the state was read afresh).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct ConfigSourceMetrics {
    /// The etcd revision of the config this replica serves; 0 for a local file.
    pub revision: Gauge,
    pub errors: Family<SourceReasonLabels, Counter>,
}

impl ConfigSourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "switchyard_config_revision",
            "etcd revision of the config this gateway applied (0 when the config is a local file)",
            m.revision.clone(),
        );
        registry.register(
            "switchyard_config_source_errors",
            "Problems reading the config source, by reason (invalid, unreachable, compacted)",
            m.errors.clone(),
        );
        for reason in ["invalid", "unreachable", "compacted"] {
            drop(m.errors.get_or_create(&SourceReasonLabels { reason }));
        }
        m
    }
}
