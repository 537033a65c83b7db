//! Metrics of `switchyard xds`, the control plane: a registry of its own, served on its admin
//! port. Per node (Envoy's `node.id`) and type (`cds`, `eds`, `lds`, `rds`); the node set is
//! bounded by the control plane (see `switchyard_xds::nodes`), so the label sets are too.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeTypeLabels {
    pub node: String,
    pub r#type: &'static str,
}

/// The version a node last ACKed for a type, as an info-style series (value 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeVersionLabels {
    pub node: String,
    pub r#type: &'static str,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

fn push_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 12))
}

#[derive(Debug)]
pub struct XdsMetrics {
    registry: Registry,
    /// Open ADS streams per node.
    pub connected: Family<NodeLabels, Gauge>,
    pub acked_version: Family<NodeVersionLabels, Gauge>,
    pub nacks: Family<NodeTypeLabels, Counter>,
    pub pushes: Family<NodeTypeLabels, Counter>,
    /// From a response sent to its ACK or NACK.
    pub push_latency: Family<NodeTypeLabels, Histogram, fn() -> Histogram>,
    pub reloads: Family<ReloadLabels, Counter>,
    /// Fields of the loaded config Envoy is not given (`GET /xds/report`).
    pub untranslated: Gauge,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl XdsMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            connected: Family::default(),
            acked_version: Family::default(),
            nacks: Family::default(),
            pushes: Family::default(),
            push_latency: Family::new_with_constructor(push_buckets),
            reloads: Family::default(),
            untranslated: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "switchyard_xds_connected_streams",
            "Open ADS streams per Envoy node",
            m.connected.clone(),
        );
        registry.register(
            "switchyard_xds_acked_version",
            "The version a node last ACKed per type (value 1)",
            m.acked_version.clone(),
        );
        registry.register(
            "switchyard_xds_nacks",
            "Responses a node rejected, per type",
            m.nacks.clone(),
        );
        registry.register(
            "switchyard_xds_pushes",
            "Responses sent to a node, per type",
            m.pushes.clone(),
        );
        registry.register(
            "switchyard_xds_push_latency_seconds",
            "Time from a response sent to the node's ACK or NACK of it",
            m.push_latency.clone(),
        );
        registry.register(
            "switchyard_xds_config_reloads",
            "Config reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "switchyard_xds_untranslated_fields",
            "Config fields Envoy is not given (GET /xds/report)",
            m.untranslated.clone(),
        );
        Self { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
