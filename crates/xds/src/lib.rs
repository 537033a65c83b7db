//! `switchyard xds`: Switchyard's control plane speaking Envoy's aggregated discovery service
//! (ADS), so that one Switchyard config drives Envoy data planes as well as Switchyard's own.
//!
//! The config is translated to Envoy's listeners, routes, clusters and endpoints
//! ([`translate`]), names one to one, into a [`resources::Snapshot`] the [`plane::ControlPlane`]
//! holds; every connected Envoy gets what changed for it over its own stream, state of the world
//! ([`sotw`]) or incremental ([`delta`]), on one port ([`server`]). For `inference` pools the
//! control plane also scrapes the endpoints and pushes capacity weights ([`capacity`]), which
//! Envoy's weighted least-request then follows with no per-request hop; Envoy sees only its own
//! in-flight requests, the control plane sees every replica's queue.

pub mod admin;
pub mod capacity;
pub mod delta;
pub mod nodes;
pub mod plane;
pub mod resources;
pub mod server;
pub mod sotw;
pub mod translate;
pub mod weights;

pub use plane::ControlPlane;
