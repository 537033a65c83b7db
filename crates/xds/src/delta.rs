//! One incremental ADS stream (`api_type: DELTA_GRPC`), on the same port as state of the world.
//!
//! Each response carries only resources whose version differs from what the client has, and
//! names of ones that are gone. A client resuming after a control-plane restart says what it has
//! (`initial_resource_versions`); versions are content hashes, so what did not change is not
//! sent again. As in [`crate::sotw`], one response per type is unacknowledged at a time, and a
//! NACKed resource is not resent until it changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::nodes::node_id;
use crate::plane::ControlPlane;
use crate::resources::{Kind, Snapshot};

#[derive(Debug, Default)]
struct Watch {
    started: bool,
    responded: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → the version the client has (as it told us, or as we sent it).
    known: HashMap<String, String>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    nonce: String,
    version: String,
    at: Instant,
}

struct Stream {
    plane: Arc<ControlPlane>,
    node: Option<String>,
    watches: [Watch; 4],
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

pub async fn run(
    plane: Arc<ControlPlane>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
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
    async fn on_request(&mut self, r: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let n = node_id(r.node.as_ref().map(|n| n.id.as_str()));
                self.plane.nodes.connect(&n, "delta");
                self.node = Some(n.clone());
                n
            }
        };
        let Some(kind) = Kind::from_type_url(&r.type_url) else {
            tracing::debug!(node, type_url = %r.type_url, "request for a type this control plane does not serve");
            return true;
        };
        let w = &mut self.watches[kind.index()];
        if !r.response_nonce.is_empty()
            && w.pending
                .as_ref()
                .is_some_and(|p| p.nonce == r.response_nonce)
        {
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
        let first = !w.started;
        if first {
            w.started = true;
            w.known = r.initial_resource_versions;
            w.wildcard = kind.is_wildcard() && r.resource_names_subscribe.is_empty();
        }
        for n in r.resource_names_subscribe {
            if n == "*" {
                w.wildcard = true;
                continue;
            }
            // The protocol asks for every newly subscribed resource to be sent, even one the
            // client had: it may have dropped it meanwhile.
            if !first {
                w.known.remove(&n);
            }
            w.names.insert(n);
        }
        for n in r.resource_names_unsubscribe {
            if n == "*" {
                w.wildcard = false;
                continue;
            }
            w.names.remove(&n);
            w.known.remove(&n);
        }
        let mut open = self.push(kind, snapshot).await;
        if let Some(next) = kind.completed_by() {
            open &= self.push(next, snapshot).await;
        }
        open
    }

    async fn push(&mut self, kind: Kind, snapshot: &Snapshot) -> bool {
        let w = &mut self.watches[kind.index()];
        if !w.started || w.pending.is_some() {
            return true;
        }
        let all = snapshot.resources(kind);
        let wanted: Vec<_> = if w.wildcard {
            all.values().collect()
        } else {
            w.names.iter().filter_map(|n| all.get(n)).collect()
        };
        let changed: Vec<_> = wanted
            .into_iter()
            .filter(|r| w.known.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = w
            .known
            .keys()
            .filter(|n| !all.contains_key(*n))
            .cloned()
            .collect();
        // Envoy finishes initialising only once listeners and clusters have been answered, even
        // with nothing.
        let must_answer = kind.is_wildcard() && !w.responded;
        if changed.is_empty() && removed.is_empty() && !must_answer {
            return true;
        }
        for r in &changed {
            w.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            w.known.remove(n);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = snapshot.version(kind).to_string();
        w.responded = true;
        w.pending = Some(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            at: Instant::now(),
        });
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources: changed
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: kind.type_url().to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        if let Some(next) = kind.completed_by() {
            let dependent = &mut self.watches[next.index()];
            for r in &changed {
                dependent.known.remove(&r.name);
            }
        }
        if let Some(node) = &self.node {
            self.plane.nodes.pushed(node, kind);
        }
        self.tx.send(Ok(response)).await.is_ok()
    }
}
