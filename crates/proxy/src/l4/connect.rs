//! Connecting a tcp listener's client to one of the pool's endpoints: the pool's picker chooses
//! (hashing the client's IP for `ring_hash` and `maglev`), and a failed connect is counted into
//! the endpoint's passive health and outlier detection, then retried on an endpoint not yet
//! tried, as Envoy's tcp_proxy does with `max_connect_attempts`. The pool's
//! `limits.max_connections` circuit breaker counts these connections too (Envoy's
//! `upstream_cx_overflow`): past it a client is closed rather than queued.

use std::net::SocketAddr;

use switchyard_balance::{hash_source_ip, InFlight, PickContext};
use switchyard_health::Outcome;
use switchyard_resilience::{BreakerGuard, Limit, TriedSet};
use switchyard_telemetry::metrics::EndpointLabels;
use switchyard_telemetry::Metrics;
use tokio::net::TcpStream;

use crate::pipeline::pick_endpoint::pick_untried;
use crate::pool::PoolEntry;

/// An open upstream connection, counted in flight on its endpoint (what `least_request` reads
/// as the endpoint's open connections) for as long as it lives.
pub struct Connected {
    pub stream: TcpStream,
    pub endpoint: SocketAddr,
    pub in_flight: InFlight,
    /// One of the pool's `limits.max_connections`.
    pub breaker: BreakerGuard,
}

/// Connect to an endpoint of `pool`, trying up to `retries` more endpoints after a failure.
/// The error is the reason the connection is not forwarded (a metric label): `overflow` past the
/// pool's connection limit, `no_endpoint` when none was available to try, `connect` when every
/// attempt failed.
pub async fn connect(
    pool: &PoolEntry,
    client: SocketAddr,
    retries: u32,
    metrics: &Metrics,
) -> Result<Connected, &'static str> {
    let ctx = match pool.spec.balancer.hash_key() {
        Some(_) => PickContext::with_hash_key(hash_source_ip(client.ip())),
        None => PickContext::new(),
    };
    let breaker = match pool.breaker.try_acquire(Limit::Connections) {
        Ok(guard) => guard,
        Err(overflow) => {
            pool.count_overflow(overflow.limit.as_str());
            return Err("overflow");
        }
    };
    let mut tried = TriedSet::new();
    for _ in 0..=retries {
        if tried.covers(pool.endpoints.len()) {
            break;
        }
        let Some(index) = pick_untried(pool, &tried, &ctx) else {
            break;
        };
        tried.insert(index);
        let endpoint = &pool.endpoints[index];
        let address = endpoint.address();
        let in_flight = endpoint.state.begin();
        pool.picks[index].inc();
        let outcome = match tokio::time::timeout(
            pool.spec.connect_timeout,
            TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                pool.record_outcome(index, Outcome::Success);
                return Ok(Connected {
                    stream,
                    endpoint: address,
                    in_flight,
                    breaker,
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Outcome::ConnectRefused
            }
            Ok(Err(_)) | Err(_) => Outcome::GatewayError,
        };
        tracing::debug!(pool = %pool.name(), endpoint = %address, ?outcome, "tcp connect failed");
        pool.connect_errors.inc();
        metrics
            .tcp
            .upstream_connect_failures
            .get_or_create(&EndpointLabels {
                pool: pool.name().to_owned(),
                endpoint: address.to_string(),
            })
            .inc();
        pool.record_outcome(index, outcome);
    }
    Err(if tried.is_empty() {
        "no_endpoint"
    } else {
        "connect"
    })
}
