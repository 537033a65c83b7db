//! How an upstream exchange fails, in the terms the request path acts on: who is to blame
//! (the upstream, a local limit, or the client's own body), which gateway error it becomes, and
//! what outlier detection hears.

use std::io;

use switchyard_health::Outcome;
use switchyard_resilience::Overflow;

use crate::body::BoxError;

/// Why an exchange failed, in the terms the request path needs.
#[derive(Debug)]
pub enum SendError {
    Connect(io::Error),
    ConnectTimeout,
    /// A reused connection turned out closed before the upstream saw the request, which is
    /// still whole to send again.
    NotSent,
    /// The connection failed mid-exchange.
    Io(io::Error),
    /// The client's request body failed (too large, reset): the upstream is not at fault.
    Body(BoxError),
    /// A new connection would pass the pool's `max_connections` or `max_pending`.
    Overflow(Overflow),
    /// The attempt's deadline passed before the response head (an exchange given a deadline
    /// bounds itself).
    Timeout,
}

impl SendError {
    /// The underlying error, for logs and for telling a body limit from an upstream failure.
    pub fn source_error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Io(e) => Some(e),
            Self::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

/// How sending upstream failed.
#[derive(Debug)]
pub enum Failure {
    /// From our own clients: the inline HTTP/1 connection or the HTTP/2 connection.
    Inline(SendError),
    /// From the pooled client (upgrades).
    Pooled(hyper_util::client::legacy::Error),
}

impl Failure {
    /// Whether the upstream is to blame (not a local limit or the client's body).
    pub fn is_upstream(&self) -> bool {
        !matches!(
            self,
            Failure::Inline(SendError::Overflow(_) | SendError::Body(_))
        )
    }

    /// Why TLS with the upstream failed, when it did: in the handshake, or on the first read
    /// (TLS 1.3 servers refuse a client certificate only after the client's handshake is done).
    pub fn tls_cause(&self) -> Option<(crate::tls::TlsCause, String)> {
        let err: &(dyn std::error::Error + 'static) = match self {
            Failure::Inline(SendError::Connect(e) | SendError::Io(e)) => e,
            Failure::Pooled(e) => e,
            _ => return None,
        };
        crate::tls::TlsCause::find(err)
    }

    /// The gateway error type this failure stands for (for a hedge's span, which fails alone).
    pub fn kind(&self) -> &'static str {
        if self.tls_cause().is_some() {
            return "upstream_tls_error";
        }
        match self {
            Failure::Inline(SendError::Connect(_) | SendError::ConnectTimeout) => {
                "upstream_connect_failure"
            }
            Failure::Inline(SendError::Overflow(_)) => "overflow",
            Failure::Inline(SendError::Timeout) => "timeout",
            Failure::Pooled(e) if e.is_connect() => "upstream_connect_failure",
            _ => "upstream_reset",
        }
    }

    /// The outcome for outlier detection: a gateway error, and a decisive one when the
    /// connection was refused (nothing listens there).
    pub fn outcome(&self) -> Outcome {
        let refused = match self {
            Failure::Inline(SendError::Connect(e)) => {
                e.kind() == std::io::ErrorKind::ConnectionRefused
            }
            Failure::Pooled(e) if e.is_connect() => {
                let mut source = std::error::Error::source(e);
                let mut refused = false;
                while let Some(err) = source {
                    if let Some(io) = err.downcast_ref::<std::io::Error>() {
                        refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                    }
                    source = err.source();
                }
                refused
            }
            _ => false,
        };
        if refused {
            Outcome::ConnectRefused
        } else {
            Outcome::GatewayError
        }
    }
}
