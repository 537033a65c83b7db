//! The request path: listeners ([`listener`], [`h1_server`], [`h2_server`]), one config generation
//! ([`gateway`]: routes, [`pool`]s), the per-request stages ([`pipeline`]), the upstream
//! transports behind one seam ([`upstream`]), bodies that stream with limits and timeouts
//! ([`body`]), the bookkeeping after the last byte ([`finish`]), and the running server with
//! reload and drain ([`server`]).

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admission;
pub mod body;
pub mod capacity;
pub mod connection_idle;
mod deadline;
pub mod error;
pub mod filters;
pub mod finish;
pub mod framing_guard;
pub mod gateway;
pub mod grpc;
pub mod h1_codec;
pub mod h1_server;
pub mod h2_server;
pub mod h3;
pub mod headers;
pub mod l4;
pub mod listener;
pub mod mirror;
pub mod models;
pub mod observe;
pub mod passive_health;
pub mod pipeline;
pub mod pool;
pub mod pool_control;
pub mod predictor;
pub mod rate_limit;
pub mod read_buf;
pub mod rewind;
pub mod rollout;
pub mod route_entry;
pub mod route_match;
pub mod route_metrics;
pub mod server;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use gateway::{Gateway, GatewayHandle};
pub use server::Server;
