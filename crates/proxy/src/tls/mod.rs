//! TLS on both sides of the gateway, with rustls and its `ring` provider (or `aws-lc-rs`, see
//! [`provider`]): terminating clients'
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

use std::sync::{Arc, OnceLock};

/// The rustls crypto provider of every TLS config the gateway builds (listeners, upstream
/// clients, HTTP/3).
///
/// `ring` unless built with the `aws-lc-rs` feature (the `switchyard` binary's default), which
/// makes AWS-LC the provider: its RSA signatures are faster than ring's, a full handshake with
/// an RSA-2048 certificate ~20% cheaper, ECDSA P-256 level (docs/benchmarks.md, "TLS handshakes
/// and HTTP/2 CPU"). In such a build `SWITCHYARD_TLS_PROVIDER=ring` still picks ring, so both
/// can be measured with one binary.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc-rs")]
            if std::env::var("SWITCHYARD_TLS_PROVIDER").as_deref() != Ok("ring") {
                return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            }
            Arc::new(rustls::crypto::ring::default_provider())
        })
        .clone()
}

/// The name of [`provider`]'s choice, for the startup log.
pub fn provider_name() -> &'static str {
    #[cfg(feature = "aws-lc-rs")]
    if std::env::var("SWITCHYARD_TLS_PROVIDER").as_deref() != Ok("ring") {
        return "aws-lc-rs";
    }
    "ring"
}

/// A session-ticket encrypter for TLS 1.3 (and 1.2) stateless resumption: AES-256-GCM under a
/// key that rotates every 6 hours, the previous key still accepted.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    if provider_name() == "aws-lc-rs" {
        return rustls::crypto::aws_lc_rs::Ticketer::new();
    }
    rustls::crypto::ring::Ticketer::new()
}

/// No session tickets: resumption from the config's stateful session cache only. rustls
/// accepts 0-RTT early data only that way (a cached session is taken once, a ticket could be
/// replayed), so an HTTP/3 listener with `allow_0rtt` uses it instead of [`ticketer`].
pub fn no_tickets() -> Arc<dyn rustls::server::ProducesTickets> {
    #[derive(Debug)]
    struct Stateful;
    impl rustls::server::ProducesTickets for Stateful {
        fn enabled(&self) -> bool {
            false
        }
        fn lifetime(&self) -> u32 {
            0
        }
        fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
            None
        }
        fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
            None
        }
    }
    Arc::new(Stateful)
}
