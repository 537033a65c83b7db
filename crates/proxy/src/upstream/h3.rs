//! HTTP/3 upstreams (`pools[].protocol: http3`): one QUIC connection per endpoint, opened on
//! first use (and again once it closes) and kept across reloads that leave the endpoint and its
//! TLS settings alone; every request to the endpoint is a stream of it.
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
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use switchyard_resilience::{BreakerGuard, CircuitBreaker, Limit};
use tokio::sync::oneshot;

use super::{SendError, UpstreamIncoming};
use crate::body::{BoxError, RequestBody};
use crate::h3::H3Body;

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub type H3ResponseBody = H3Body<h3::client::RequestStream<h3_quinn::RecvStream, Bytes>>;

/// One endpoint's QUIC connection.
pub struct H3Endpoint {
    address: SocketAddr,
    server_name: String,
    /// The pool's client endpoint (one UDP socket for all its connections).
    client: quinn::Endpoint,
    config: quinn::ClientConfig,
    connect_timeout: Duration,
    live: tokio::sync::Mutex<Option<Live>>,
}

struct Live {
    quic: quinn::Connection,
    send: SendRequest,
    /// The pool's `connections` unit, held while the connection lives.
    _open: BreakerGuard,
}

impl H3Endpoint {
    pub fn new(
        address: SocketAddr,
        server_name: String,
        client: quinn::Endpoint,
        config: quinn::ClientConfig,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            address,
            server_name,
            client,
            config,
            connect_timeout,
            live: tokio::sync::Mutex::new(None),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether a reload with these settings may keep this endpoint's connection.
    pub fn same_settings(&self, server_name: &str, connect_timeout: Duration) -> bool {
        self.server_name == server_name && self.connect_timeout == connect_timeout
    }

    pub async fn send(
        &self,
        req: Request<RequestBody>,
        breaker: &CircuitBreaker,
    ) -> Result<Response<UpstreamIncoming>, SendError> {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        // A connection found closed only when opening the stream never carried the request:
        // one fresh connection may take it.
        let mut stream = None;
        for fresh in [false, true] {
            let mut send = self.sender(breaker, fresh).await?;
            match send.send_request(head.clone()).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if fresh => return Err(SendError::Io(io::Error::other(e))),
                Err(_) => continue,
            }
        }
        let (tx, mut rx) = stream.expect("sent or returned").split();
        let (body_failed, failed) = oneshot::channel();
        tokio::spawn(upload(body, tx, body_failed));
        match rx.recv_response().await {
            Ok(resp) => Ok(resp.map(|()| UpstreamIncoming::H3(Box::new(H3Body::new(rx))))),
            Err(e) => Err(match failed.await {
                Ok(body_error) => SendError::Body(body_error),
                Err(_) => SendError::Io(io::Error::other(e)),
            }),
        }
    }

    /// The live connection's request sender, connecting first if there is none (or `fresh`).
    async fn sender(
        &self,
        breaker: &CircuitBreaker,
        fresh: bool,
    ) -> Result<SendRequest, SendError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if !fresh && l.quic.close_reason().is_none() {
                return Ok(l.send.clone());
            }
        }
        *live = None;
        let open = breaker
            .try_acquire(Limit::Connections)
            .map_err(SendError::Overflow)?;
        let connect = async {
            let quic = self
                .client
                .connect_with(self.config.clone(), self.address, &self.server_name)
                .map_err(|e| SendError::Connect(io::Error::other(e)))?
                .await
                .map_err(|e| SendError::Connect(connect_error(e)))?;
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
        Ok(send)
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
