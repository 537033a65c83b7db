//! What the control plane knows of each Envoy node (its `node.id`): open streams, the version
//! it last ACKed per type, and its NACKs with Envoy's own error detail. An operator reads it at
//! `GET /xds/nodes`, and the NACKs also at `GET /xds/report`.
//!
//! Memory is bounded per node (a NACK's detail is cut at [`MAX_DETAIL`] bytes, only the last is
//! kept) and in nodes: a node that has gone is forgotten first when [`MAX_NODES`] are known.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use switchyard_telemetry::metrics::{NodeLabels, NodeTypeLabels, NodeVersionLabels, XdsMetrics};

use crate::resources::Kind;

/// Nodes remembered; past it, disconnected nodes are forgotten to make room.
pub const MAX_NODES: usize = 10_000;
/// Bytes of a NACK's error detail kept (Envoy's messages name the resource and field).
pub const MAX_DETAIL: usize = 2048;
/// Bytes of a node id kept; a longer one is cut.
pub const MAX_NODE_ID: usize = 256;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nack {
    pub r#type: &'static str,
    /// The version the node rejected.
    pub version: String,
    /// Envoy's error detail, as sent.
    pub detail: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NodeStatus {
    /// Open ADS streams.
    pub streams: u32,
    /// `sotw` or `delta`, of the latest stream.
    pub api: &'static str,
    /// The last version ACKed per type (`cds`, `eds`, `lds`, `rds`).
    pub acked: BTreeMap<&'static str, String>,
    pub nacks: u64,
    pub last_nack: Option<Nack>,
}

#[derive(Debug)]
pub struct Nodes {
    inner: Mutex<BTreeMap<String, NodeStatus>>,
    metrics: Arc<XdsMetrics>,
}

/// A node id from a request, bounded and never empty.
pub fn node_id(id: Option<&str>) -> String {
    let id = id.filter(|s| !s.is_empty()).unwrap_or("unknown");
    let mut end = id.len().min(MAX_NODE_ID);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_string()
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Nodes {
    pub fn new(metrics: Arc<XdsMetrics>) -> Self {
        Self {
            inner: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, NodeStatus>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn connect(&self, node: &str, api: &'static str) {
        self.with(|nodes| {
            if !nodes.contains_key(node) && nodes.len() >= MAX_NODES {
                let gone = nodes
                    .iter()
                    .find(|(_, s)| s.streams == 0)
                    .map(|(k, _)| k.clone());
                if let Some(gone) = gone {
                    nodes.remove(&gone);
                    self.forget_metrics(&gone);
                }
            }
            let status = nodes.entry(node.to_string()).or_default();
            status.streams += 1;
            status.api = api;
        });
        self.metrics
            .connected
            .get_or_create(&NodeLabels { node: node.into() })
            .inc();
    }

    pub fn disconnect(&self, node: &str) {
        self.with(|nodes| {
            if let Some(s) = nodes.get_mut(node) {
                s.streams = s.streams.saturating_sub(1);
            }
        });
        self.metrics
            .connected
            .get_or_create(&NodeLabels { node: node.into() })
            .dec();
    }

    fn forget_metrics(&self, node: &str) {
        self.metrics
            .connected
            .remove(&NodeLabels { node: node.into() });
    }

    pub fn pushed(&self, node: &str, kind: Kind) {
        self.metrics.pushes.get_or_create(&labels(node, kind)).inc();
    }

    pub fn ack(&self, node: &str, kind: Kind, version: &str, latency: Duration) {
        let old = self.with(|nodes| {
            nodes
                .get_mut(node)
                .and_then(|s| s.acked.insert(kind.label(), version.to_string()))
        });
        if old.as_deref() != Some(version) {
            if let Some(old) = old {
                self.metrics.acked_version.remove(&NodeVersionLabels {
                    node: node.into(),
                    r#type: kind.label(),
                    version: old,
                });
            }
            self.metrics
                .acked_version
                .get_or_create(&NodeVersionLabels {
                    node: node.into(),
                    r#type: kind.label(),
                    version: version.into(),
                })
                .set(1);
        }
        self.metrics
            .push_latency
            .get_or_create(&labels(node, kind))
            .observe(latency.as_secs_f64());
    }

    pub fn nack(&self, node: &str, kind: Kind, version: &str, detail: &str, latency: Duration) {
        let detail = cut(detail, MAX_DETAIL);
        tracing::warn!(node, r#type = kind.label(), version, detail = %detail, "envoy rejected a push (NACK); it keeps its last accepted version");
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.with(|nodes| {
            if let Some(s) = nodes.get_mut(node) {
                s.nacks += 1;
                s.last_nack = Some(Nack {
                    r#type: kind.label(),
                    version: version.to_string(),
                    detail,
                    at_unix_ms,
                });
            }
        });
        self.metrics.nacks.get_or_create(&labels(node, kind)).inc();
        self.metrics
            .push_latency
            .get_or_create(&labels(node, kind))
            .observe(latency.as_secs_f64());
    }

    pub fn view(&self) -> BTreeMap<String, NodeStatus> {
        self.with(|nodes| nodes.clone())
    }
}

fn labels(node: &str, kind: Kind) -> NodeTypeLabels {
    NodeTypeLabels {
        node: node.into(),
        r#type: kind.label(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_bounded_and_never_empty() {
        assert_eq!(node_id(None), "unknown");
        assert_eq!(node_id(Some("")), "unknown");
        assert_eq!(node_id(Some(&"é".repeat(200))).len(), MAX_NODE_ID);
    }

    #[test]
    fn a_full_registry_forgets_a_node_that_has_gone() {
        let nodes = Nodes::new(Arc::new(XdsMetrics::new()));
        for i in 0..MAX_NODES {
            nodes.connect(&format!("n{i}"), "sotw");
        }
        nodes.disconnect("n7");
        nodes.connect("new", "delta");
        let view = nodes.view();
        assert_eq!(view.len(), MAX_NODES);
        assert!(!view.contains_key("n7"));
        assert_eq!(view["new"].api, "delta");
    }

    #[test]
    fn a_nack_keeps_the_last_acked_version_and_a_bounded_detail() {
        let nodes = Nodes::new(Arc::new(XdsMetrics::new()));
        nodes.connect("a", "sotw");
        nodes.ack("a", Kind::Cluster, "v1", Duration::from_millis(3));
        nodes.nack(
            "a",
            Kind::Cluster,
            "v2",
            &"x".repeat(10_000),
            Duration::ZERO,
        );
        let a = &nodes.view()["a"];
        assert_eq!(a.acked["cds"], "v1");
        assert_eq!(a.nacks, 1);
        let nack = a.last_nack.as_ref().unwrap();
        assert_eq!(
            (nack.version.as_str(), nack.detail.len()),
            ("v2", MAX_DETAIL)
        );
    }
}
