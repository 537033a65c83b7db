//! Stage 1, limits and request shape: what can be refused from the head alone, before any work.
//! HTTP/1 limits are mostly enforced by the codec; this also covers HTTP/2, whose header block
//! arrives already decoded.

use http::{Request, Version};

use super::exchange::{Exchange, Reject};
use crate::error::GatewayError;
use crate::headers;

/// What the shape check learned about the request's framing.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The declared `Content-Length`, when there is one.
    pub content_length: Option<u64>,
}

/// Marks a request that arrived in TLS early data (an HTTP/3 listener with `allow_0rtt`): an
/// attacker who captured it could replay it, so only safe methods (GET, HEAD, OPTIONS, TRACE) are served from it.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

pub fn check<B>(rx: &Exchange<'_>, req: &Request<B>) -> Result<Shape, Reject> {
    let scan = &rx.scan;
    let conflicting_framing =
        req.version() < Version::HTTP_2 && rx.conn.framing.next_request_conflicts();
    if req.headers().len() > rx.conn.max_headers
        || scan.bytes + headers::uri_len(req.uri()) > rx.conn.max_header_bytes
    {
        return Err(Reject::keep(GatewayError::HeadersTooLarge));
    }
    if conflicting_framing {
        // Request smuggling shape (RFC 9112 §6.3): refuse and close, forward nothing.
        return Err(Reject::close(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding are present",
        )));
    }
    if req.extensions().get::<EarlyData>().is_some() && !req.method().is_safe() {
        // RFC 8470 §5.2: not acted on; the client retries after its handshake.
        return Err(Reject::keep(GatewayError::TooEarly));
    }
    if req.method() == http::Method::CONNECT {
        // Tunnels are not forwarded (a CONNECT's target is not a path a route could match);
        // what follows it on the connection is tunnel data, so close.
        return Err(Reject::close(GatewayError::NotImplemented(
            "CONNECT is not supported",
        )));
    }
    if scan.unknown_coding {
        // RFC 9112 §6.1: a transfer coding the gateway cannot decode; forwarding the body as
        // plain chunked would change its meaning.
        return Err(Reject::close(GatewayError::NotImplemented(
            "unsupported Transfer-Encoding",
        )));
    }
    let content_length = match scan.content_length {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => {
            return Err(Reject::close(GatewayError::BadRequest(
                "invalid Content-Length",
            )))
        }
    };
    Ok(Shape { content_length })
}
