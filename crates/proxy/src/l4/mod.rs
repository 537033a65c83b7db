//! `protocol: tcp` listeners: bytes forwarded to an endpoint of a pool, never parsed (HAProxy's
//! `mode tcp`, Envoy's `tcp_proxy`). A connection goes through four steps, each a file:
//!
//! 1. [`client_hello`]: with `sni_routes`, the ClientHello is read (bounded, not terminated) and
//!    its server name picks the pool; otherwise the listener's `pool`.
//! 2. [`connect`]: the pool's picker chooses an endpoint; a failed connect feeds passive health
//!    and is retried on another endpoint.
//! 3. [`proxy_header`]: for a `proxy_protocol: v2` pool, the client's address goes first.
//! 4. [`pump`]: bytes both ways, counted, until both sides close or the connection idles.
//!
//! The accept loop is the HTTP listener's ([`crate::listener::AcceptLoop`], so reload binds
//! before it swaps and connections are tracked for drain), with `max_connections` as HAProxy's
//! `maxconn`: at the cap the loop stops accepting and new connections wait in the kernel's
//! backlog until one closes. A connection keeps the pool it started with across reloads, and on
//! shutdown is left to finish for up to `runtime.drain_timeout`: a byte stream has no request
//! boundary at which to close it gracefully.

pub mod client_hello;
pub mod connect;
pub mod proxy_header;
pub mod pump;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_config::l4::ProxyProtocol;
use switchyard_config::Listener;
use switchyard_telemetry::metrics::{
    EndpointDirectionLabels, EndpointLabels, ListenerDirectionLabels, ListenerLabels, RejectLabels,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gateway::GatewayHandle;
use crate::l4::pump::{Meters, Traffic};
use crate::listener::AcceptLoop;

/// What every connection of one tcp listener shares.
struct Shared {
    spec: Listener,
    handle: Arc<GatewayHandle>,
    open: Gauge,
    received: Counter,
    sent: Counter,
}

/// Accept connections until the listener is stopped (reload) or the process shuts down.
pub async fn run(accept: AcceptLoop) {
    let listener = match TcpListener::from_std(accept.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %accept.spec.name, error = %e, "cannot register listener");
            return;
        }
    };
    let metrics = &accept.handle.metrics;
    let name = accept.spec.name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    let direction = |direction| ListenerDirectionLabels {
        listener: name.clone(),
        direction,
    };
    // One handle per statement: `get_or_create` returns a read guard on its family, and a
    // second call on the same family in one statement would wait on it forever.
    let open = metrics
        .downstream_connections
        .get_or_create(&labels)
        .clone();
    let received = metrics
        .tcp
        .downstream_bytes
        .get_or_create(&direction("received"))
        .clone();
    let sent = metrics
        .tcp
        .downstream_bytes
        .get_or_create(&direction("sent"))
        .clone();
    let shared = Arc::new(Shared {
        open,
        received,
        sent,
        handle: accept.handle.clone(),
        spec: accept.spec.clone(),
    });
    let accepted = metrics
        .downstream_connections_total
        .get_or_create(&labels)
        .clone();
    let cap = accept
        .spec
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n as usize)));
    loop {
        let permit = match &cap {
            None => None,
            Some(cap) => tokio::select! {
                biased;
                _ = accept.stop.cancelled() => break,
                _ = accept.shutdown.cancelled() => break,
                p = cap.clone().acquire_owned() => p.ok(),
            },
        };
        let Some((stream, peer)) =
            crate::listener::next_connection(&listener, &accept.stop, &accept.shutdown, &name)
                .await
        else {
            break;
        };
        accepted.inc();
        accept
            .tracker
            .spawn(serve(stream, peer, shared.clone(), permit));
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

struct Open(Gauge);
impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One client connection, start to end. The permit (under `max_connections`) is held to the end.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: Option<OwnedSemaphorePermit>,
) {
    shared.open.inc();
    let _open = Open(shared.open.clone());
    let metrics = &shared.handle.metrics;
    let refuse = |reason: &'static str| {
        metrics
            .tcp
            .unforwarded
            .get_or_create(&RejectLabels {
                listener: shared.spec.name.clone(),
                reason,
            })
            .inc();
    };
    let (peeked, server_name) = if shared.spec.sni_routes.is_empty() {
        (Vec::new(), None)
    } else {
        match client_hello::peek(&mut client, shared.spec.header_read_timeout).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(listener = %shared.spec.name, client = %peer, error = ?e, "no ClientHello");
                return refuse("client_hello");
            }
        }
    };
    let pool_name = server_name
        .as_deref()
        .and_then(|sni| {
            shared
                .spec
                .sni_routes
                .iter()
                .find(|r| r.matcher.matches(sni))
        })
        .map(|r| &r.pool)
        .or(shared.spec.pool.as_ref());
    let gateway = shared.handle.load();
    let Some(pool) = pool_name
        .and_then(|n| gateway.pools.iter().find(|p| p.name() == n))
        .cloned()
    else {
        tracing::debug!(listener = %shared.spec.name, client = %peer, sni = ?server_name, "no pool for connection");
        return refuse("no_route");
    };
    drop(gateway);
    if pool.endpoints.is_empty() {
        return refuse("no_endpoint");
    }
    let upstream = match connect::connect(&pool, peer, shared.spec.connect_retries, metrics).await {
        Ok(upstream) => upstream,
        Err(reason) => return refuse(reason),
    };
    let connect::Connected {
        stream: mut upstream,
        endpoint,
        in_flight: _in_flight,
        breaker: _breaker,
    } = upstream;
    let endpoint_labels = EndpointLabels {
        pool: pool.name().to_owned(),
        endpoint: endpoint.to_string(),
    };
    let endpoint_direction = |direction| EndpointDirectionLabels {
        pool: endpoint_labels.pool.clone(),
        endpoint: endpoint_labels.endpoint.clone(),
        direction,
    };
    let upstream_bytes = |direction| {
        let counter = metrics
            .tcp
            .upstream_bytes
            .get_or_create(&endpoint_direction(direction))
            .clone();
        counter
    };
    let from_endpoint = upstream_bytes("received");
    let to_endpoint = upstream_bytes("sent");
    let meters = Meters([
        shared.received.clone(),
        shared.sent.clone(),
        from_endpoint,
        to_endpoint,
    ]);
    metrics
        .tcp
        .upstream_connections_opened
        .get_or_create(&endpoint_labels)
        .inc();
    let upstream_open = metrics
        .tcp
        .upstream_connections
        .get_or_create(&endpoint_labels)
        .clone();
    upstream_open.inc();
    let _upstream_open = Open(upstream_open);

    let traffic = Arc::new(Traffic::default());
    let mut first = match pool.spec.proxy_protocol {
        Some(ProxyProtocol::V2) => {
            let local = client.local_addr().unwrap_or(shared.spec.address);
            proxy_header::encode(peer, local)
        }
        None => Vec::new(),
    };
    traffic.add(pump::CLIENT_RECEIVED, peeked.len() as u64);
    first.extend_from_slice(&peeked);
    drop(pool);
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(&first).await {
            tracing::debug!(endpoint = %endpoint, error = %e, "tcp upstream write failed");
            return;
        }
        traffic.add(pump::UPSTREAM_SENT, first.len() as u64);
    }
    let idle = (!shared.spec.idle_timeout.is_zero()).then_some(shared.spec.idle_timeout);
    let end = pump::pump(client, upstream, traffic, &meters, idle).await;
    tracing::debug!(listener = %shared.spec.name, client = %peer, endpoint = %endpoint, ?end, "tcp connection closed");
}
