//! The request path: listeners ([`listener`]), one config generation ([`gateway`]), the
//! per-request flow ([`service`]), bodies that stream with limits and timeouts ([`body`]), and the
//! running server with reload and drain ([`server`]).

pub mod admission;
mod attempt;
pub mod body;
mod deadline;
pub mod error;
pub mod framing_guard;
pub mod gateway;
pub mod grpc;
pub mod h1_codec;
pub mod h1_server;
pub mod headers;
pub mod listener;
pub mod models;
pub mod pool_control;
pub mod record;
mod request_model;
pub mod route_entry;
pub mod route_match;
pub mod server;
pub mod service;
pub mod tls;
pub mod trace;
pub mod upstream_h1;
pub mod upstream_h2;

pub use gateway::{Gateway, GatewayHandle};
pub use server::Server;
