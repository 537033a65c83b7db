//! HTTP/3 downstream: QUIC (quinn) on a TLS listener's port over UDP, with `h3` on top. Every
//! request goes through the same pipeline as HTTP/1.1 and HTTP/2 (`pipeline::handle`); only the
//! framing differs (`serve.rs`).
//!
//! What the crates give and what is ours:
//! - quinn handles the transport: address validation, flow control (`listeners[].quic`), loss
//!   recovery, connection migration, GSO/GRO through quinn-udp where the kernel has them.
//! - h3 decodes frames and QPACK statelessly: it announces a dynamic table of size 0, so a QPACK
//!   bomb has no table to inflate; `max_field_section_size` (the listener's `max_header_bytes`)
//!   bounds a header block, answered 431. Malformed frames close the stream or the connection
//!   with the RFC 9114 error code, never the process.
//! - Ours: connection bounds (the listener's `header_read_timeout` for the handshake and the
//!   first request, `idle_timeout` with nothing in flight, `quic.max_connections`), graceful
//!   drain (GOAWAY, then close once the last response is sent), 0-RTT admission (`serve.rs`),
//!   and certificate rotation: the endpoint holds its own copy of the TLS config and takes the
//!   listener's new one when [`ReloadableTls`] says it changed.
//!
//! The UDP socket is bound on the TCP listener's address, so `Alt-Svc: h3=":PORT"` on TCP
//! responses points at it. A reload that keeps the address keeps the endpoint (and its
//! connections); only the accept loop and the settings are replaced.

mod body;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, VarInt};
use switchyard_config::Listener;
use switchyard_telemetry::metrics::ListenerLabels;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::{H3Body, RecvHalf};

use crate::connection_idle::Activity;
use crate::framing_guard::FramingFlags;
use crate::gateway::GatewayHandle;
use crate::pipeline::{ConnContext, Trust};
use crate::tls::ReloadableTls;

/// HTTP/3's error code for a clean close (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;

/// Open a QUIC endpoint on `address` (the TCP listener's bound address).
pub fn endpoint(
    address: SocketAddr,
    spec: &Listener,
    tls: &ReloadableTls,
) -> Result<quinn::Endpoint, String> {
    let (config, _) = server_config(spec, tls)?;
    let socket = std::net::UdpSocket::bind(address)
        .map_err(|e| format!("listener `{}`: cannot bind UDP {address}: {e}", spec.name))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("listener `{}`: QUIC endpoint: {e}", spec.name))
}

/// The endpoint's settings from the listener's spec and its current certificate, and that
/// certificate's generation.
fn server_config(
    spec: &Listener,
    tls: &ReloadableTls,
) -> Result<(quinn::ServerConfig, u64), String> {
    let (current, generation) = tls.current();
    let mut crypto = (*current).clone();
    crypto.alpn_protocols = vec![b"h3".to_vec()];
    // quinn takes early data all or nothing; the request path decides what may use it.
    crypto.max_early_data_size = if spec.quic.allow_0rtt { u32::MAX } else { 0 };
    if spec.quic.allow_0rtt {
        // rustls takes early data only on a stateful resumption (`tls::no_tickets`).
        crypto.ticketer = crate::tls::no_tickets();
    }
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| format!("listener `{}`: QUIC needs TLS 1.3: {e}", spec.name))?;
    let q = &spec.quic;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IdleTimeout::try_from(q.max_idle_timeout).map_err(
            |e| format!("listener `{}`: quic.max_idle_timeout: {e}", spec.name),
        )?))
        .stream_receive_window(VarInt::from_u32(q.stream_receive_window))
        .receive_window(VarInt::from_u32(q.receive_window))
        .max_concurrent_bidi_streams(VarInt::from_u32(spec.max_concurrent_streams))
        // The peer's control and QPACK streams, with room for a few it may add (grease).
        .max_concurrent_uni_streams(VarInt::from_u32(8));
    use quinn::congestion;
    use switchyard_config::quic::Congestion;
    match q.congestion {
        Congestion::Cubic => {
            transport.congestion_controller_factory(Arc::new(congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            transport.congestion_controller_factory(Arc::new(congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            transport.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
        }
    };
    if let Some(delay) = q.max_ack_delay {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.max_ack_delay(Some(delay));
        transport.ack_frequency_config(Some(ack));
    }
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    config.migration(true);
    Ok((config, generation))
}

/// The accept loop of one listener's QUIC endpoint.
pub struct QuicLoop {
    pub spec: Listener,
    pub endpoint: quinn::Endpoint,
    pub handle: Arc<GatewayHandle>,
    pub tracker: TaskTracker,
    pub tls: Arc<ReloadableTls>,
    /// Stop accepting (reload removed or changed this listener).
    pub stop: CancellationToken,
    /// Process shutdown: stop accepting and drain connections.
    pub shutdown: CancellationToken,
}

impl QuicLoop {
    pub async fn run(self) {
        let name: Arc<str> = Arc::from(self.spec.name.as_str());
        // A reload hands a kept endpoint to a new loop; these settings are the new ones.
        let mut generation = match server_config(&self.spec, &self.tls) {
            Ok((config, generation)) => {
                self.endpoint.set_server_config(Some(config));
                generation
            }
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "QUIC settings refused");
                return;
            }
        };
        let labels = ListenerLabels {
            listener: self.spec.name.clone(),
        };
        let metrics = &self.handle.metrics;
        let open = metrics
            .downstream_connections
            .get_or_create(&labels)
            .clone();
        let accepted = metrics
            .downstream_connections_total
            .get_or_create(&labels)
            .clone();
        let local_port = self.endpoint.local_addr().map_or(0, |a| a.port());
        let max = self.spec.quic.max_connections as usize;
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = self.shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            if self.tls.changed_since(generation) {
                match server_config(&self.spec, &self.tls) {
                    Ok((config, g)) => {
                        self.endpoint.set_server_config(Some(config));
                        generation = g;
                    }
                    Err(e) => tracing::warn!(listener = %name, error = %e, "QUIC certificate"),
                }
            }
            // The count includes the one being accepted.
            if self.endpoint.open_connections() > max {
                incoming.refuse();
                continue;
            }
            accepted.inc();
            let conn = Conn {
                handle: self.handle.clone(),
                spec: Arc::new(Bounds::of(&self.spec)),
                listener: name.clone(),
                local_port,
                tracker: self.tracker.clone(),
                shutdown: self.shutdown.clone(),
            };
            self.tracker.spawn(conn.serve(incoming, open.clone()));
        }
        tracing::debug!(listener = %name, "QUIC stopped accepting");
    }
}

/// What a connection needs of its listener's spec.
struct Bounds {
    header_read: std::time::Duration,
    idle: Option<std::time::Duration>,
    max_header_bytes: usize,
    max_headers: usize,
    allow_0rtt: bool,
    access_log: bool,
    trust: Trust,
    paths: switchyard_config::PathNormalization,
    forward_client_cert: switchyard_config::ForwardClientCert,
}

impl Bounds {
    fn of(spec: &Listener) -> Self {
        Self {
            header_read: spec.header_read_timeout,
            idle: (!spec.idle_timeout.is_zero()).then_some(spec.idle_timeout),
            max_header_bytes: spec.max_header_bytes,
            max_headers: spec.max_headers,
            allow_0rtt: spec.quic.allow_0rtt,
            access_log: spec.access_log,
            trust: Trust::of(&spec.trusted_headers),
            paths: spec.path_normalization,
            forward_client_cert: spec.forward_client_cert,
        }
    }
}

struct Conn {
    handle: Arc<GatewayHandle>,
    spec: Arc<Bounds>,
    listener: Arc<str>,
    local_port: u16,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

struct OpenGuard(Gauge);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Conn {
    async fn serve(self, incoming: quinn::Incoming, open: Gauge) {
        open.inc();
        let _guard = OpenGuard(open);
        let bounds = self.spec.clone();
        let Some((quic, mut zero_rtt)) = self.handshake(incoming).await else {
            return;
        };
        // A 0-RTT handshake still has to complete within the header-read bound: one that never
        // does is a replay or a dead client.
        let handshake_deadline = tokio::time::sleep(bounds.header_read);
        tokio::pin!(handshake_deadline);
        let peer = quic.remote_address();
        let cx = Arc::new(ConnContext {
            framing: Arc::new(FramingFlags::default()),
            listener: self.listener.clone(),
            client: peer,
            client_ip: http::HeaderValue::try_from(peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            https: true,
            local_port: self.local_port,
            max_header_bytes: bounds.max_header_bytes,
            max_headers: bounds.max_headers,
            access_log: bounds.access_log,
            trust: bounds.trust,
            paths: bounds.paths,
            client_cert: None,
            forward_client_cert: bounds.forward_client_cert,
            xfcc: None,
        });
        // The client certificate the handshake verified (a listener with `client_ca`).
        let chain = quic.peer_identity().and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let cx = crate::listener::with_client_cert(cx, chain.as_deref().and_then(|c| c.first()));
        let mut builder = h3::server::builder();
        builder.max_field_section_size(bounds.max_header_bytes as u64);
        let build = builder.build::<_, bytes::Bytes>(h3_quinn::Connection::new(quic.clone()));
        let mut h3 = match tokio::time::timeout(bounds.header_read, build).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/3 connection setup failed");
                return;
            }
            Err(_) => return,
        };
        let activity = Activity::new();
        let mut draining = false;
        loop {
            tokio::select! {
                r = h3.accept() => match r {
                    Ok(Some(resolver)) => {
                        let req = serve::Request {
                            handle: self.handle.clone(),
                            cx: cx.clone(),
                            header_read: bounds.header_read,
                            early: still_early(&mut zero_rtt),
                            in_flight: activity.start(),
                        };
                        self.tracker.spawn(req.serve(resolver));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP/3 connection ended with error");
                        break;
                    }
                },
                _ = async { zero_rtt.as_mut().expect("guarded").await }, if zero_rtt.is_some() => {
                    zero_rtt = None;
                }
                _ = &mut handshake_deadline, if zero_rtt.is_some() => {
                    quic.close(VarInt::from_u32(H3_NO_ERROR), b"handshake");
                    break;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    let _ = h3.shutdown(0).await;
                }
                _ = activity.idle(bounds.header_read, bounds.idle), if !draining => {
                    tracing::debug!("closing idle HTTP/3 connection");
                    draining = true;
                    let _ = h3.shutdown(0).await;
                }
                _ = activity.quiet(), if draining => break,
            }
        }
        // Responses still being sent keep their streams (they hold the connection); the close
        // waits for them only when we chose to end the connection.
        activity.quiet().await;
        quic.close(VarInt::from_u32(H3_NO_ERROR), b"");
    }

    /// Complete the QUIC handshake within the header-read bound. With 0-RTT allowed the
    /// connection is usable before the handshake completes, and comes with the future that
    /// says when it has: requests that arrive before that are early data.
    async fn handshake(
        &self,
        incoming: quinn::Incoming,
    ) -> Option<(quinn::Connection, Option<quinn::ZeroRttAccepted>)> {
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "QUIC connection refused");
                return None;
            }
        };
        let connecting = if self.spec.allow_0rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => return Some((conn, Some(accepted))),
                Err(connecting) => connecting,
            }
        } else {
            connecting
        };
        match tokio::time::timeout(self.spec.header_read, connecting).await {
            Ok(Ok(conn)) => Some((conn, None)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "QUIC handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// Whether a request arriving now is early data: the handshake has not completed. The answer
/// is read off the handshake's own signal at the moment the request is taken (the connection's
/// driver sets it before it hands over anything sent after the client's Finished), never off a
/// flag another task sets later.
fn still_early(zero_rtt: &mut Option<quinn::ZeroRttAccepted>) -> bool {
    use futures_util::FutureExt;
    let Some(pending) = zero_rtt.as_mut() else {
        return false;
    };
    if pending.now_or_never().is_some() {
        *zero_rtt = None;
        return false;
    }
    true
}
