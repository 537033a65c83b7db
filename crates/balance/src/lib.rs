//! Endpoint sets and pickers. A picker is a small policy behind [`Picker`]; adding one is one new
//! file here plus one row in the config's registry (`switchyard_config::Balancer::KINDS`), then
//! the arm in [`build`] the compiler asks for (ARCHITECTURE.md, "Where to add things").
//!
//! The proxy calls [`Picker::pick_with`] per request (with the request's [`hash_key`] when the
//! balancer's `key` setting asks for one), then [`EndpointState::begin`]; after the response it
//! feeds back [`EndpointState::record_latency`] and, when the response carries an
//! `endpoint-load-metrics` header, [`EndpointState::record_load_report`] with [`parse_orca`].

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod endpoint;
pub mod hash;
pub mod head_latency;
mod latency;
pub mod least_request;
pub mod locality;
pub mod maglev;
pub mod orca;
pub mod peak_ewma;
pub mod picker;
pub mod random;
mod reported_load;
pub mod ring_hash;
pub mod round_robin;
mod select;
mod stride;
pub mod weighted_least_utilization;
pub mod weighted_round_robin;

use std::sync::Arc;

pub use endpoint::{Endpoint, EndpointState, InFlight, StateRegistry};
pub use hash::{hash_key, hash_source_ip};
pub use orca::{parse_orca, LoadReport, OrcaError};
pub use picker::{PickContext, Picker};

use switchyard_config::Balancer;

/// The picker a pool's `balancer:` setting asks for.
pub fn build(spec: &Balancer) -> Arc<dyn Picker> {
    match spec {
        Balancer::RoundRobin => Arc::new(round_robin::RoundRobin::default()),
        Balancer::Random => Arc::new(random::Random),
        Balancer::WeightedRoundRobin => {
            Arc::new(weighted_round_robin::WeightedRoundRobin::default())
        }
        Balancer::LeastRequest { choices } => Arc::new(least_request::LeastRequest::new(*choices)),
        Balancer::PeakEwma { decay, default_rtt } => {
            Arc::new(peak_ewma::PeakEwma::new(*decay, *default_rtt))
        }
        Balancer::RingHash {
            min_ring_size,
            load_factor,
            ..
        } => Arc::new(ring_hash::RingHash::new(*min_ring_size, *load_factor)),
        Balancer::Maglev {
            table_size,
            load_factor,
            ..
        } => Arc::new(maglev::Maglev::new(*table_size, *load_factor)),
        Balancer::WeightedLeastUtilization {
            blackout,
            expiration,
            error_penalty,
        } => Arc::new(weighted_least_utilization::WeightedLeastUtilization::new(
            *blackout,
            *expiration,
            *error_penalty,
        )),
        // The proxy scores `inference` pools with request context (crates/inference); this
        // picker serves the attempts that have none (retries, hedges).
        Balancer::Inference { .. } => Arc::new(least_request::LeastRequest::new(2)),
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

    /// Healthy endpoints with the given weights.
    pub fn weighted(weights: &[u32]) -> Vec<Endpoint> {
        let mut eps = endpoints(&vec![true; weights.len()]);
        for (e, &w) in eps.iter_mut().zip(weights) {
            e.weight = w;
        }
        eps
    }

    /// Fraction of `picks` that went to each of `n` endpoints.
    pub fn shares(picks: &[usize], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &p in picks {
            counts[p] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / picks.len().max(1) as f64)
            .collect()
    }

    /// 10,000 well-spread request keys.
    pub fn test_keys() -> Vec<u64> {
        (0..10_000u64).map(|k| hash_key(&k.to_le_bytes())).collect()
    }

    /// Fraction of keys whose owner (compared by address) differs between two endpoint sets.
    pub fn moved_fraction(
        before: &[Endpoint],
        owners_before: &[usize],
        after: &[Endpoint],
        owners_after: &[usize],
    ) -> f64 {
        let moved = owners_before
            .iter()
            .zip(owners_after)
            .filter(|(&a, &b)| before[a].address() != after[b].address())
            .count();
        moved as f64 / owners_before.len() as f64
    }

    #[test]
    fn concurrent_picks_stay_on_available_endpoints() {
        let eps = Arc::new(endpoints(&[true, false, true, true, false, true]));
        for kind in kinds() {
            let spec: Balancer = switchyard_config::yaml::from_str(kind).unwrap();
            let picker = build(&spec);
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let (eps, picker) = (&eps, &picker);
                    s.spawn(move || {
                        for k in 0..2000u64 {
                            let ctx = PickContext::with_hash_key(hash_key(
                                &(t * 7 + k % 5).to_le_bytes(),
                            ));
                            let i = picker.pick_with(eps, &ctx).unwrap();
                            assert!(eps[i].is_available(), "{kind} picked {i}");
                            let _guard = eps[i].state.begin();
                        }
                    });
                }
            });
            assert!(eps.iter().all(|e| e.state.in_flight() == 0));
        }
    }

    /// Every kind in the config's registry whose picker lives here (`inference` is scored in
    /// crates/inference and falls back to `least_request` here).
    fn kinds() -> impl Iterator<Item = &'static str> {
        Balancer::kinds().filter(|k| *k != "inference")
    }

    #[test]
    fn build_covers_every_kind() {
        let eps = endpoints(&[true, false, true]);
        for kind in kinds() {
            let spec: Balancer = switchyard_config::yaml::from_str(kind).unwrap();
            let p = build(&spec);
            assert_eq!(p.name(), kind);
            let ctx = PickContext::with_hash_key(hash_key(b"k"));
            assert!(matches!(p.pick_with(&eps, &ctx), Some(0 | 2)));
            assert!(p.pick(&endpoints(&[false, false])).is_none());
        }
    }
}
