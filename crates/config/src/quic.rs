//! HTTP/3 over QUIC on a TLS listener (`listeners[].http3`, `listeners[].quic`).
//!
//! The defaults follow Envoy's QUIC listener: a 5-minute idle bound is the HTTP layer's job
//! (`idle_timeout`), while QUIC's own idle timeout only detects a vanished peer; flow-control
//! windows sized for a stream of tokens, not a bulk download; no 0-RTT unless asked for, since
//! early data can be replayed by anyone who captured it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// QUIC transport settings of a listener with `http3: true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quic {
    /// A connection that receives no packet for this long is gone (the peer vanished or moved
    /// beyond reach); the HTTP idle bound is the listener's `idle_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_idle_timeout: Duration,
    /// How much of one request stream's body may be in flight unacknowledged, in bytes.
    pub stream_receive_window: u32,
    /// How much of all the connection's streams' bodies may be in flight, in bytes.
    pub receive_window: u32,
    /// Accept requests in 0-RTT early data. Only idempotent methods are served from it (others
    /// get 425 Too Early, RFC 8470) and the upstream sees `Early-Data: 1`.
    pub allow_0rtt: bool,
    /// QUIC connections open at once; past it new ones are refused.
    pub max_connections: u32,
    /// Congestion control of what the gateway sends. `bbr` paces by measured bandwidth and
    /// round trip, so random loss (a radio link) does not collapse the window as it does
    /// Cubic's; quinn marks its BBR experimental, hence not the default.
    pub congestion: Congestion,
    /// Ask clients that support the ACK frequency extension (draft-ietf-quic-ack-frequency;
    /// quinn does) to acknowledge within this time instead of their own (25 ms by default), so a
    /// lost packet at the end of a burst (the last token sent) is found and sent again sooner.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ack_delay: Option<Duration>,
}

/// A QUIC congestion controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    #[default]
    Cubic,
    NewReno,
    Bbr,
}

impl Default for Quic {
    fn default() -> Self {
        Self {
            max_idle_timeout: Duration::from_secs(30),
            stream_receive_window: 256 * 1024,
            receive_window: 4 * 1024 * 1024,
            allow_0rtt: false,
            max_connections: 10_000,
            congestion: Congestion::Cubic,
            max_ack_delay: None,
        }
    }
}

impl Quic {
    /// Problems with these settings, as (path under `listeners[i].quic`, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        // QUIC varint limit on idle timeouts is 2^62 ms; anything past a day is a mistake.
        if self.max_idle_timeout.is_zero() || self.max_idle_timeout > Duration::from_secs(86_400) {
            out.push((
                "max_idle_timeout",
                "must be greater than zero and at most 24h".to_string(),
            ));
        }
        if self.stream_receive_window < 16 * 1024 {
            out.push((
                "stream_receive_window",
                "must be at least 16384".to_string(),
            ));
        }
        if self.receive_window < self.stream_receive_window {
            out.push((
                "receive_window",
                "must be at least stream_receive_window".to_string(),
            ));
        }
        if self
            .max_ack_delay
            .is_some_and(|d| d.is_zero() || d > Duration::from_millis(16_383))
        {
            out.push((
                "max_ack_delay",
                "must be greater than zero and below 16384ms".to_string(),
            ));
        }
        if self.max_connections == 0 {
            out.push(("max_connections", "must be at least 1".to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(Quic::default().validate().is_empty());
        let bad = Quic {
            max_idle_timeout: Duration::ZERO,
            stream_receive_window: 100,
            receive_window: 50,
            max_connections: 0,
            ..Quic::default()
        };
        let paths: Vec<_> = bad.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "max_idle_timeout",
                "stream_receive_window",
                "receive_window",
                "max_connections"
            ]
        );
    }
}
