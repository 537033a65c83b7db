//! Stage 5, the request body: streamed once, or read whole (bounded by the route's
//! `max_request_body`) when something must see it or send it again: an `inference` pool routes
//! on it, a model rewrite changes it, a retry or hedge replays it.

use super::exchange::Reject;
use super::exchange::Routed;
use super::shape::Shape;
use crate::body::{BodyTooLarge, InBody, RequestBody};
use crate::error::{has_source, GatewayError};

/// Bodies up to this size are kept for replay when a route hedges without a retry policy.
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 64 * 1024;

pub async fn prepare(
    to: Routed<'_>,
    path: &str,
    body: InBody,
    shape: Shape,
    upgrade: bool,
) -> Result<RequestBody, Reject> {
    let route = to.route;
    let incoming = match body {
        // Already read, for model-based routing.
        InBody::Buffered(bytes) => return Ok(RequestBody::Buffered(Some(bytes))),
        InBody::Incoming(incoming) => incoming,
    };
    let empty = http_body::Body::is_end_stream(&incoming);
    let retry = route.retries();
    let replay_cap = retry.map_or(DEFAULT_MAX_REPLAY_BODY, |r| r.policy.max_replay_body);
    let read_whole = !upgrade
        && (to.inference_api(path)
            || to.target.model.is_some() && !empty
            || (retry.is_some() || route.hedger.is_some())
                && (empty || shape.content_length.is_some_and(|n| n <= replay_cap)));
    if !read_whole {
        return Ok(RequestBody::new(incoming, route.max_request_body));
    }
    RequestBody::buffer(incoming, route.max_request_body)
        .await
        .map_err(|e| {
            if has_source::<BodyTooLarge>(e.as_ref()) {
                Reject::close(GatewayError::BodyTooLarge)
            } else {
                Reject::close(GatewayError::BadRequest("request body aborted"))
            }
        })
}
