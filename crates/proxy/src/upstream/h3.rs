//! HTTP/3 upstreams (`pools[].protocol: http3`, always with the pool's `tls`): one QUIC
//! connection per endpoint, opened on first use (and again once it closes) and kept across
//! reloads that leave the endpoint and its TLS settings alone; every request to the endpoint is
//! a stream of it.
//!
//! Like the HTTP/2 transport, opening a connection takes one unit of the pool's `connections`
//! limit for as long as it lives (none left: 503 `x-switchyard-overflow: connections`). QUIC's
//! own stream credit (the server's `initial_max_streams_bidi`) paces streams; a request waiting
//! for credit waits inside quinn.
//!
//! The request body goes up on a task of its own, so an upstream that answers before it has
//! read everything (an error, an echo) is not held up by it; a failure of the client's body
//! resets the stream and is reported as the client's, not the upstream's.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::ServerName;
use switchyard_resilience::{BreakerGuard, CircuitBreaker, Limit};
use tokio::sync::oneshot;

use super::{SendError, UpstreamIncoming};
use crate::body::{BoxError, RequestBody};
use crate::h3::H3Body;
use crate::tls::UpstreamConnector;

/// How long an upstream QUIC connection may go without hearing from its peer.
const UPSTREAM_IDLE: Duration = Duration::from_secs(10);

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub type H3ResponseBody = H3Body<h3::client::RequestStream<h3_quinn::RecvStream, Bytes>>;

/// One endpoint's QUIC connection.
pub struct H3Endpoint {
    address: SocketAddr,
    server_name: String,
    /// The pool's TLS client as QUIC takes it (refused when it cannot speak TLS 1.3).
    config: Result<quinn::ClientConfig, String>,
    tls: Arc<UpstreamConnector>,
    connect_timeout: Duration,
    live: tokio::sync::Mutex<Option<Live>>,
}

struct Live {
    quic: quinn::Connection,
    send: SendRequest,
    /// The pool's `connections` unit, held while the connection lives.
    _open: BreakerGuard,
}

/// The process's QUIC client sockets (IPv4 and IPv6), shared by every HTTP/3 pool: quinn
/// multiplexes connections on one socket, so pools need no socket each.
fn client(address: SocketAddr) -> io::Result<quinn::Endpoint> {
    static V4: OnceLock<quinn::Endpoint> = OnceLock::new();
    static V6: OnceLock<quinn::Endpoint> = OnceLock::new();
    let (cell, bind) = if address.is_ipv4() {
        (&V4, SocketAddr::from(([0, 0, 0, 0], 0)))
    } else {
        (&V6, SocketAddr::from(([0u16; 8], 0)))
    };
    if let Some(e) = cell.get() {
        return Ok(e.clone());
    }
    let endpoint = quinn::Endpoint::client(bind)?;
    Ok(cell.get_or_init(|| endpoint).clone())
}

impl H3Endpoint {
    pub fn new(
        address: SocketAddr,
        tls: Arc<UpstreamConnector>,
        connect_timeout: Duration,
    ) -> Self {
        let config = QuicClientConfig::try_from(tls.config().clone())
            .map(|c| {
                let mut config = quinn::ClientConfig::new(Arc::new(c));
                let mut transport = quinn::TransportConfig::default();
                // A peer that stops answering (UDP has no reset; ICMP is ignored) is given up
                // after this; an idle connection closes then too and the next request opens
                // a fresh one.
                transport.max_idle_timeout(Some(
                    quinn::IdleTimeout::try_from(UPSTREAM_IDLE).expect("a few seconds"),
                ));
                config.transport_config(Arc::new(transport));
                config
            })
            .map_err(|e| format!("QUIC needs TLS 1.3: {e}"));
        let server_name = match tls.server_name(address) {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(ip).to_string(),
            other => format!("{other:?}"),
        };
        Self {
            address,
            server_name,
            config,
            tls,
            connect_timeout,
            live: tokio::sync::Mutex::new(None),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether a reload with these settings may keep this endpoint's connection.
    pub fn same_settings(&self, tls: &UpstreamConnector, connect_timeout: Duration) -> bool {
        UpstreamConnector::same(Some(&self.tls), Some(tls))
            && self.connect_timeout == connect_timeout
    }

    pub async fn send(
        &self,
        req: Request<RequestBody>,
        breaker: &CircuitBreaker,
    ) -> Result<Response<UpstreamIncoming>, SendError> {
        let (parts, body) = req.into_parts();
        let mut head = Some(Request::from_parts(parts, ()));
        // A reused connection may turn out closed as the stream opens, before the request went
        // anywhere: a fresh connection may take it then, so only that case keeps a copy.
        let mut stream = None;
        for fresh in [false, true] {
            let (mut send, reused) = self.sender(breaker, fresh).await?;
            let attempt = if reused { head.clone() } else { head.take() };
            match send.send_request(attempt.expect("kept for a retry")).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if !reused => return Err(SendError::Io(io::Error::other(e))),
                Err(_) => continue,
            }
        }
        let (mut tx, mut rx) = stream.expect("sent or returned").split();
        let (body_failed, failed) = oneshot::channel();
        if body.is_end_stream() {
            // Nothing to upload (a GET): end the stream here rather than on a task.
            tx.finish()
                .await
                .map_err(|e| SendError::Io(io::Error::other(e)))?;
            drop(body_failed);
        } else {
            tokio::spawn(upload(body, tx, body_failed));
        }
        match rx.recv_response().await {
            Ok(mut resp) => {
                // The downstream writer speaks its own version; hyper's HTTP/1 writer refuses
                // (panics on) a response that says HTTP/3.
                *resp.version_mut() = http::Version::HTTP_11;
                Ok(resp.map(|()| UpstreamIncoming::H3(Box::new(H3Body::new(rx)))))
            }
            Err(e) => Err(match failed.await {
                Ok(body_error) => SendError::Body(body_error),
                Err(_) => SendError::Io(io::Error::other(e)),
            }),
        }
    }

    /// The live connection's request sender, connecting first if there is none (or `fresh`),
    /// and whether the connection was already open.
    async fn sender(
        &self,
        breaker: &CircuitBreaker,
        fresh: bool,
    ) -> Result<(SendRequest, bool), SendError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if !fresh && l.quic.close_reason().is_none() {
                return Ok((l.send.clone(), true));
            }
        }
        *live = None;
        let open = breaker
            .try_acquire(Limit::Connections)
            .map_err(SendError::Overflow)?;
        let config = self
            .config
            .clone()
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        let connect = async {
            let quic = client(self.address)
                .map_err(SendError::Connect)?
                .connect_with(config, self.address, &self.server_name)
                .map_err(|e| SendError::Connect(io::Error::other(e)))?
                .await
                .map_err(|e| {
                    SendError::Connect(self.tls.explain_early_failure(connect_error(e)))
                })?;
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|e| SendError::Connect(io::Error::other(e)))?;
            tokio::spawn(async move {
                let closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                tracing::debug!(error = %closed, "HTTP/3 upstream connection closed");
            });
            Ok::<_, SendError>((quic, send))
        };
        let (quic, send) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        *live = Some(Live {
            quic,
            send: send.clone(),
            _open: open,
        });
        Ok((send, false))
    }
}

/// A refused QUIC connection reads as a refused TCP one, so outlier detection treats both
/// alike (nothing listens there).
fn connect_error(e: quinn::ConnectionError) -> io::Error {
    let kind = match e {
        quinn::ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::Reset => {
            io::ErrorKind::ConnectionRefused
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// Send the request body (and trailers) up the stream, then finish it. A failure of the
/// client's body resets the stream and is reported on `failed`.
async fn upload(mut body: RequestBody, mut tx: SendHalf, failed: oneshot::Sender<BoxError>) {
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let sent = match frame.into_data() {
                    Ok(data) if data.is_empty() => Ok(()),
                    Ok(data) => tx.send_data(data).await,
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => tx.send_trailers(trailers).await,
                        Err(_) => Ok(()),
                    },
                };
                if sent.is_err() {
                    // The upstream stopped reading (it answered, or the stream is gone).
                    return;
                }
            }
            Some(Err(e)) => {
                // RFC 9114 §8.1: the request is abandoned, not a protocol error.
                tx.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                let _ = failed.send(e);
                return;
            }
        }
    }
    let _ = tx.finish().await;
}

/// A reload's HTTP/3 endpoints: those whose address and settings are unchanged keep their
/// connection; the rest start afresh. Empty for pools of other protocols.
pub fn reconcile(
    old: &[Arc<H3Endpoint>],
    addresses: impl Iterator<Item = SocketAddr>,
    tls: Option<&Arc<UpstreamConnector>>,
    connect_timeout: Duration,
) -> Vec<Arc<H3Endpoint>> {
    let Some(tls) = tls else {
        return Vec::new();
    };
    addresses
        .map(|a| {
            old.iter()
                .find(|h| h.address == a && h.same_settings(tls, connect_timeout))
                .cloned()
                .unwrap_or_else(|| Arc::new(H3Endpoint::new(a, tls.clone(), connect_timeout)))
        })
        .collect()
}
