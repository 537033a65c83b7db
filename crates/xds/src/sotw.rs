//! One state-of-the-world ADS stream (`api_type: GRPC`).
//!
//! Per type, at most one response is unacknowledged at a time: the next goes out when Envoy
//! has ACKed or NACKed the last (its request carries that response's nonce), so a burst of
//! reloads becomes one push per type with the latest state, never a queue. A request with an
//! older nonce is stale and ignored, as the protocol says. Listeners and clusters are sent
//! whole in every response (Envoy removes what a response leaves out); routes and endpoints
//! only when they changed or were newly asked for. A NACKed version is not sent again: the node
//! keeps its last accepted one, and the next config change is pushed as usual.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::nodes::node_id;
use crate::plane::ControlPlane;
use crate::resources::{Kind, Snapshot};

#[derive(Debug, Default)]
struct Watch {
    requested: bool,
    responded: bool,
    /// Listeners and clusters: every resource (Envoy asks with no names or `*`).
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version in the last response that carried it.
    sent: HashMap<String, String>,
    last_nonce: Option<String>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    version: String,
    at: Instant,
}

struct Stream {
    plane: Arc<ControlPlane>,
    node: Option<String>,
    watches: [Watch; 4],
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

pub async fn run(
    plane: Arc<ControlPlane>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut snapshots = plane.subscribe();
    let mut s = Stream {
        plane,
        node: None,
        watches: Default::default(),
        nonce: 0,
        tx,
    };
    loop {
        tokio::select! {
            request = requests.message() => {
                let Ok(Some(request)) = request else { break };
                let snapshot = snapshots.borrow_and_update().clone();
                if !s.on_request(request, &snapshot).await {
                    break;
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let mut open = true;
                for kind in Kind::ALL {
                    open &= s.push(kind, &snapshot).await;
                }
                if !open {
                    break;
                }
            }
        }
    }
    if let Some(node) = &s.node {
        s.plane.nodes.disconnect(node);
    }
}

impl Stream {
    /// `false` once the response stream is closed.
    async fn on_request(&mut self, r: DiscoveryRequest, snapshot: &Snapshot) -> bool {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let n = node_id(r.node.as_ref().map(|n| n.id.as_str()));
                self.plane.nodes.connect(&n, "sotw");
                self.node = Some(n.clone());
                n
            }
        };
        let Some(kind) = Kind::from_type_url(&r.type_url) else {
            tracing::debug!(node, type_url = %r.type_url, "request for a type this control plane does not serve");
            return true;
        };
        let w = &mut self.watches[kind.index()];
        if !r.response_nonce.is_empty() && w.last_nonce.as_deref() != Some(&r.response_nonce) {
            return true;
        }
        if !r.response_nonce.is_empty() {
            if let Some(p) = w.pending.take() {
                let latency = p.at.elapsed();
                match &r.error_detail {
                    Some(e) => self
                        .plane
                        .nodes
                        .nack(&node, kind, &p.version, &e.message, latency),
                    None => self.plane.nodes.ack(&node, kind, &p.version, latency),
                }
            }
        }
        w.requested = true;
        let names: BTreeSet<String> = r.resource_names.into_iter().collect();
        if kind.is_wildcard() {
            w.wildcard = names.is_empty() || names.contains("*");
        }
        if names != w.names {
            // Newly asked-for resources go out even if an earlier response carried them.
            w.sent
                .retain(|n, _| names.contains(n) || kind.is_wildcard());
            for n in names.difference(&w.names) {
                w.sent.remove(n);
            }
            w.names = names;
        }
        let mut open = self.push(kind, snapshot).await;
        if let Some(next) = kind.completed_by() {
            open &= self.push(next, snapshot).await;
        }
        open
    }

    /// Send `kind`'s changes, if Envoy asked for the type and has answered the last push.
    async fn push(&mut self, kind: Kind, snapshot: &Snapshot) -> bool {
        let w = &mut self.watches[kind.index()];
        if !w.requested || w.pending.is_some() {
            return true;
        }
        let all = snapshot.resources(kind);
        let wanted: Vec<_> = if w.wildcard {
            all.values().collect()
        } else {
            w.names.iter().filter_map(|n| all.get(n)).collect()
        };
        let changed: Vec<&str> = wanted
            .iter()
            .filter(|r| w.sent.get(&r.name) != Some(&r.version))
            .map(|r| r.name.as_str())
            .collect();
        let resources = if kind.is_wildcard() {
            let removed = w.sent.keys().any(|n| !all.contains_key(n));
            if w.responded && changed.is_empty() && !removed {
                return true;
            }
            w.sent.clear();
            wanted
        } else {
            if changed.is_empty() {
                return true;
            }
            wanted
                .into_iter()
                .filter(|r| w.sent.get(&r.name) != Some(&r.version))
                .collect()
        };
        let changed: Vec<String> = changed.into_iter().map(str::to_string).collect();
        for r in &resources {
            w.sent.insert(r.name.clone(), r.version.clone());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = snapshot.version(kind).to_string();
        w.responded = true;
        w.last_nonce = Some(nonce.clone());
        w.pending = Some(Pending {
            version: version.clone(),
            at: Instant::now(),
        });
        if let Some(next) = kind.completed_by() {
            let dependent = &mut self.watches[next.index()];
            for name in &changed {
                dependent.sent.remove(name);
            }
        }
        let response = DiscoveryResponse {
            version_info: version,
            resources: resources.iter().map(|r| r.body.clone()).collect(),
            type_url: kind.type_url().to_string(),
            nonce,
            ..Default::default()
        };
        if let Some(node) = &self.node {
            self.plane.nodes.pushed(node, kind);
        }
        self.tx.send(Ok(response)).await.is_ok()
    }
}
