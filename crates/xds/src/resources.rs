//! The resources one config generation yields, per xDS type, each with a version that is a hash
//! of its encoded bytes.
//!
//! Content versions, not counters: a reload that leaves a cluster as it was gives it the same
//! version, so no stream sends it again, and a restarted control plane gives the same versions
//! as before, so an Envoy resuming a delta stream with `initial_resource_versions` is sent only
//! what really changed while it was away.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The four xDS types, in the order a push sends them: clusters before their endpoints,
/// listeners before their routes (Envoy warms a cluster until its endpoints arrive and a listener
/// until its routes do, so the referring type goes first and the referred one completes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The `type` label value and the key in JSON views.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    /// Listeners and clusters are subscribed to as a whole (wildcard); routes and endpoints by
    /// the names the listeners and clusters refer to.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    /// The type whose resource of the same name completes this one (a cluster's endpoints, a
    /// listener's routes): when the referring resource changes, Envoy warms a new one that waits
    /// for it, so it is sent again.
    pub fn completed_by(self) -> Option<Kind> {
        match self {
            Kind::Cluster => Some(Kind::Endpoint),
            Kind::Listener => Some(Kind::Route),
            Kind::Endpoint | Kind::Route => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One named resource, encoded once and shared by every stream that sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    pub fn new<M: Message>(kind: Kind, name: &str, message: &M) -> Resource {
        let value = message.encode_to_vec();
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        Resource {
            name: name.to_string(),
            version: format!("{:016x}", h.finish()),
            body: Any {
                type_url: kind.type_url().to_string(),
                value,
            },
        }
    }
}

/// Every resource of one generation, by type and name.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    types: [BTreeMap<String, Arc<Resource>>; 4],
    versions: [String; 4],
}

impl Snapshot {
    pub fn new(resources: impl IntoIterator<Item = (Kind, Resource)>) -> Snapshot {
        let mut s = Snapshot::default();
        for (kind, r) in resources {
            s.types[kind.index()].insert(r.name.clone(), Arc::new(r));
        }
        for kind in Kind::ALL {
            let mut h = DefaultHasher::new();
            for (name, r) in &s.types[kind.index()] {
                (name, &r.version).hash(&mut h);
            }
            s.versions[kind.index()] = format!("{:016x}", h.finish());
        }
        s
    }

    pub fn resources(&self, kind: Kind) -> &BTreeMap<String, Arc<Resource>> {
        &self.types[kind.index()]
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Resource>> {
        self.types[kind.index()].get(name)
    }

    /// The version of the type as a whole: SotW's `version_info`, delta's
    /// `system_version_info`.
    pub fn version(&self, kind: Kind) -> &str {
        &self.versions[kind.index()]
    }
}
