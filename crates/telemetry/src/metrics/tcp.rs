//! Metrics of `protocol: tcp` listeners. Open and accepted connections per listener are the
//! HTTP listeners' families (`switchyard_downstream_connections*`), and failed connects count in
//! `switchyard_upstream_connect_errors` per pool as for HTTP; these add what only a byte stream
//! has: bytes each way, per listener and per endpoint, and connections per endpoint.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{EndpointLabels, RejectLabels};
use prometheus_client::encoding::EncodeLabelSet;

/// `direction` is `received` (from the peer the label names) or `sent` (to it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerDirectionLabels {
    pub listener: String,
    pub direction: &'static str,
}

/// `direction` is `received` (from the endpoint) or `sent` (to it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointDirectionLabels {
    pub pool: String,
    pub endpoint: String,
    pub direction: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    pub downstream_bytes: Family<ListenerDirectionLabels, Counter>,
    pub upstream_bytes: Family<EndpointDirectionLabels, Counter>,
    pub upstream_connections: Family<EndpointLabels, Gauge>,
    pub upstream_connections_opened: Family<EndpointLabels, Counter>,
    pub upstream_connect_failures: Family<EndpointLabels, Counter>,
    /// Client connections closed without reaching an endpoint, by reason.
    pub unforwarded: Family<RejectLabels, Counter>,
}

impl TcpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "switchyard_tcp_downstream_bytes",
            "Bytes a tcp listener received from clients and sent to them",
            m.downstream_bytes.clone(),
        );
        registry.register(
            "switchyard_tcp_upstream_bytes",
            "Bytes a tcp listener's connections received from an endpoint and sent to it",
            m.upstream_bytes.clone(),
        );
        registry.register(
            "switchyard_tcp_upstream_connections",
            "Open tcp listener connections to an endpoint",
            m.upstream_connections.clone(),
        );
        registry.register(
            "switchyard_tcp_upstream_connections_opened",
            "Connections a tcp listener opened to an endpoint",
            m.upstream_connections_opened.clone(),
        );
        registry.register(
            "switchyard_tcp_upstream_connect_failures",
            "Failed connects of a tcp listener to an endpoint (refused, unreachable, timed out)",
            m.upstream_connect_failures.clone(),
        );
        registry.register(
            "switchyard_tcp_unforwarded_connections",
            "tcp listener connections closed before reaching an endpoint, by reason \
             (client_hello, no_route, overflow, no_endpoint, connect)",
            m.unforwarded.clone(),
        );
        m
    }
}
