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
    // Envoy wants priority levels numbered from 0 without gaps; the config's only order them.
    let mut levels: Vec<u32> = p.endpoints.iter().map(|e| e.priority).collect();
    levels.sort_unstable();
    levels.dedup();
    let level = |priority: u32| levels.iter().position(|l| *l == priority).unwrap_or(0) as u32;
    let mut localities: BTreeMap<(u32, String, String), Vec<LbEndpoint>> = BTreeMap::new();
    for e in &p.endpoints {
        let known = weights.and_then(|w| w.get(&e.address));
        let (weight, healthy) = known.map_or((e.weight, true), |h| (h.weight, h.healthy));
        localities
            .entry((
                level(e.priority),
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
            .map(
                |((priority, region, zone), lb_endpoints)| LocalityLbEndpoints {
                    locality: Some(Locality {
                        region,
                        zone,
                        ..Default::default()
                    }),
                    lb_endpoints,
                    priority,
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_become_dense_levels_grouped_with_their_locality() {
        let yaml = "pools:\n  - name: p\n    endpoints:\n      - {address: 127.0.0.1:1, zone: a, priority: 5}\n      - {address: 127.0.0.1:2, zone: a}\n      - {address: 127.0.0.1:3, zone: b, priority: 5}\n";
        let config = switchyard_config::parse(yaml, std::path::Path::new("c.yaml")).unwrap();
        let cla = load_assignment(&config.pools[0], None);
        let groups: Vec<(u32, &str, usize)> = cla
            .endpoints
            .iter()
            .map(|g| {
                let zone = g.locality.as_ref().map_or("", |l| l.zone.as_str());
                (g.priority, zone, g.lb_endpoints.len())
            })
            .collect();
        assert_eq!(groups, [(0, "a", 1), (1, "a", 1), (1, "b", 1)]);
    }
}
