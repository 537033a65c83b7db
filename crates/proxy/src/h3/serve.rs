//! One HTTP/3 request: resolve its head, run it through the pipeline, write the response back
//! frame by frame. The response body is forwarded as it arrives (an SSE stream's events are
//! not held back), and its trailers (gRPC status) follow as a trailing HEADERS frame.

use std::sync::Arc;

use bytes::Bytes;
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;

use super::body::{H3Body, Probed};
use crate::body::{ClientBody, ResponseBody};
use crate::connection_idle::InFlight;
use crate::gateway::GatewayHandle;
use crate::pipeline::{self, ConnContext, Downstream};

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;
type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

pub(super) struct Request {
    pub handle: Arc<GatewayHandle>,
    pub cx: Arc<ConnContext>,
    /// Bounds the wait for the request's head once its stream opened.
    pub header_read: std::time::Duration,
    /// The request arrived before the handshake was confirmed (0-RTT): it may be a replay.
    pub early: bool,
    /// Keeps the connection from counting as idle until the response is sent.
    pub in_flight: InFlight,
}

impl Request {
    pub async fn serve(self, resolver: Resolver) {
        // A peer that opens a stream and never sends its head would hold one of its
        // connection's stream slots, and keep the connection from counting as idle.
        let resolved = tokio::time::timeout(self.header_read, resolver.resolve_request()).await;
        let (req, stream) = match resolved {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // h3 has already answered (431) or reset the stream with the right code.
                tracing::debug!(error = %e, "HTTP/3 request refused");
                return;
            }
            Err(_) => return,
        };
        let (mut send, recv) = stream.split();
        let body = match H3Body::probe(recv) {
            Ok(Probed::Empty) => ClientBody::Full(None),
            Ok(Probed::Streaming(b)) => ClientBody::H3(b),
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/3 request body failed");
                return;
            }
        };
        let mut req = req.map(|()| body);
        if self.early {
            // The pipeline's shape check refuses what is not safe to replay (425); RFC 8470
            // §5.1: the upstream is told, and may answer 425 itself.
            req.extensions_mut().insert(pipeline::EarlyData);
            static EARLY: http::HeaderName = http::HeaderName::from_static("early-data");
            req.headers_mut()
                .insert(EARLY.clone(), HeaderValue::from_static("1"));
        }
        let resp = pipeline::handle(&self.handle, &self.cx, req, Downstream::Hyper).await;
        if let Err(e) = send_response(&mut send, resp).await {
            tracing::debug!(error = %e, "HTTP/3 response not completed");
        }
        drop(self.in_flight);
    }
}

/// Connection-specific fields are malformed in HTTP/3 (RFC 9114 §4.2); an HTTP/1 upstream's
/// framing headers stop at this hop.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::header::TE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

async fn send_response(
    send: &mut SendStream,
    resp: Response<ResponseBody>,
) -> Result<(), h3::error::StreamError> {
    let (mut parts, mut body) = resp.into_parts();
    strip_connection_headers(&mut parts.headers);
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        send.send_data(data).await?;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers).await?;
                        break;
                    }
                }
            },
            Err(e) => {
                // The upstream broke off mid-body: the client must not take a truncated body
                // for a whole one, so the stream is reset rather than finished.
                tracing::debug!(error = %e, "upstream body failed; resetting HTTP/3 stream");
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    send.finish().await
}
