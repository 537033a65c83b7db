//! Stage 5, the request body: streamed once, or read whole (bounded by the route's
//! `max_request_body`) when something must see it or send it again: an `inference` pool routes
//! on it, a model rewrite changes it, a retry, hedge or mirror replays it.

use super::exchange::Reject;
use super::exchange::Routed;
use super::shape::Shape;
use std::time::Duration;

use crate::body::{BodyTooLarge, ClientBody, InBody, RequestBody};
use crate::error::{has_source, GatewayError};

/// Bodies up to this size are kept for replay when a route hedges without a retry policy.
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 64 * 1024;

/// What to do with a request's body: stream it as it is, or read it whole first.
pub enum Plan {
    Ready(RequestBody),
    /// Read whole with [`read_whole`], bounded by the route's limits.
    ReadWhole(ClientBody),
}

/// Decide the body's form; synchronous, so a streamed body (the common case) costs no await.
pub fn plan(to: Routed<'_>, path: &str, body: InBody, shape: Shape, upgrade: bool) -> Plan {
    let route = to.route;
    let incoming = match body {
        // Already read, for model-based routing.
        InBody::Buffered(bytes) => return Plan::Ready(RequestBody::Buffered(Some(bytes))),
        InBody::Incoming(incoming) => incoming,
    };
    let empty = http_body::Body::is_end_stream(&incoming);
    let retry = route.retries();
    let replay_cap = retry.map_or(DEFAULT_MAX_REPLAY_BODY, |r| r.policy.max_replay_body);
    // A mirrored route holds every body (within its `max_request_body`) to copy it.
    let whole = !upgrade
        && (to.inference_api(path)
            || !route.mirrors.is_empty()
            || to.target.model.is_some() && !empty
            || (retry.is_some() || route.hedger.is_some())
                && (empty || shape.content_length.is_some_and(|n| n <= replay_cap)));
    if whole {
        Plan::ReadWhole(incoming)
    } else {
        Plan::Ready(RequestBody::new(incoming, route.max_request_body))
    }
}

/// Read a client's body whole, at most `limit` bytes within `timeout`. Every failure is the
/// client's and closes its connection (the rest of the body cannot be skipped safely).
pub async fn read_whole(
    incoming: ClientBody,
    limit: u64,
    timeout: Duration,
) -> Result<RequestBody, Reject> {
    // Boxed: reading a whole body is the slow path, and unboxed its future would swell the
    // request's future, which every request moves.
    let read = Box::pin(tokio::time::timeout(
        timeout,
        RequestBody::buffer(incoming, limit),
    ));
    match read.await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) if has_source::<BodyTooLarge>(e.as_ref()) => {
            Err(Reject::close(GatewayError::BodyTooLarge))
        }
        Ok(Err(_)) => Err(Reject::close(GatewayError::BadRequest(
            "request body aborted",
        ))),
        Err(_elapsed) => Err(Reject::close(GatewayError::BodyTimeout)),
    }
}
