//! TLS on both sides of the gateway, with rustls and its `ring` provider: terminating clients'
//! connections on listeners, client certificates included ([`server`]), and connecting to a
//! pool's endpoints ([`client`]: the rustls client config every upstream transport shares,
//! HTTP/3's among them, and what a failed handshake means). [`identity`] reads a verified
//! client certificate's subject and names once per connection.

pub mod client;
pub mod identity;
pub mod server;

pub use client::{client_config, pool_connectors, TlsCause, TlsErrorLog, UpstreamConnector};
pub use identity::ClientIdentity;
pub use server::{acceptor, ReloadableTls};
