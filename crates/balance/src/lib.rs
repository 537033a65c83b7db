//! Endpoint sets and pickers. A picker is a small policy behind [`Picker`]; adding one is one new
//! file plus one line in [`build`].

pub mod endpoint;
pub mod picker;
pub mod random;
pub mod round_robin;

use std::sync::Arc;

pub use endpoint::{Endpoint, EndpointState, InFlight, StateRegistry};
pub use picker::Picker;

use switchyard_config::Balancer;

/// The picker a pool's `balancer:` setting asks for.
pub fn build(spec: &Balancer) -> Arc<dyn Picker> {
    match spec {
        Balancer::RoundRobin => Arc::new(round_robin::RoundRobin::default()),
        Balancer::Random => Arc::new(random::Random),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Endpoints on 127.0.0.1:1.. with the given health.
    pub fn endpoints(health: &[bool]) -> Vec<Endpoint> {
        health
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let state = Arc::new(EndpointState::new(([127, 0, 0, 1], 1 + i as u16).into()));
                state.set_healthy(h);
                Endpoint {
                    state,
                    weight: 1,
                    zone: None,
                    region: None,
                }
            })
            .collect()
    }
}
