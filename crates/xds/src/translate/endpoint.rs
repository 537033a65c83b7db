//! A pool's endpoints as a `ClusterLoadAssignment`, grouped by locality, each with the weight
//! and health the control plane knows: the configured weight, or the capacity weight and the
//! health-check verdict of [`crate::capacity`] for pools it watches.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use serde::Serialize;
use switchyard_config::Pool;

use super::{socket_address, u32_value};

/// What the control plane pushes for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    /// Envoy's `load_balancing_weight` (at least 1).
    pub weight: u32,
    pub healthy: bool,
}

/// Per endpoint of one pool.
pub type EndpointWeights = HashMap<SocketAddr, EndpointHealth>;

pub fn load_assignment(p: &Pool, weights: Option<&EndpointWeights>) -> ClusterLoadAssignment {
    let mut localities: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    for e in &p.endpoints {
        let known = weights.and_then(|w| w.get(&e.address));
        let (weight, healthy) = known.map_or((e.weight, true), |h| (h.weight, h.healthy));
        localities
            .entry((
                e.region.clone().unwrap_or_default(),
                e.zone.clone().unwrap_or_default(),
            ))
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(e.address)),
                    ..Default::default()
                })),
                health_status: if healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                } as i32,
                load_balancing_weight: Some(u32_value(weight.max(1))),
                ..Default::default()
            });
    }
    ClusterLoadAssignment {
        cluster_name: p.name.clone(),
        endpoints: localities
            .into_iter()
            .map(|((region, zone), lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality {
                    region,
                    zone,
                    ..Default::default()
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
