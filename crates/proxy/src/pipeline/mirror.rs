//! Mirror stage: before the first attempt, each of the route's mirrors that samples this request
//! gets a copy of the upstream request (its rewritten head, `x-switchyard-mirror: 1`, and a
//! replay of the body the gateway read) sent from a task of its own (`crate::mirror`). Nothing
//! here waits or fails the request: a copy that cannot go (its mirror's copies at their limit,
//! its pool's breaker open, no endpoint, a body the gateway did not hold) is dropped and counted.

use std::sync::Arc;

use http::header::HeaderValue;
use switchyard_resilience::{Limit, TriedSet};

use super::exchange::{Exchange, Routed};
use super::pick_endpoint::{pick_context, pick_untried};
use super::request_rewrite::UpstreamHead;
use crate::body::RequestBody;
use crate::mirror::{self, Mirror};

pub fn copy(rx: &Exchange<'_>, to: Routed<'_>, head: &UpstreamHead, body: &RequestBody) {
    for m in to.route.mirrors.iter().filter(|m| m.sampled()) {
        send(rx, m, head, body);
    }
}

fn send(rx: &Exchange<'_>, m: &Arc<Mirror>, head: &UpstreamHead, body: &RequestBody) {
    if head.upgrade.is_some() || !body.is_replayable() {
        return m.drop_copy("body");
    }
    let Some(slot) = m.slot() else {
        return m.drop_copy("in_flight");
    };
    let pool = &m.pool;
    let Ok(guard) = pool.breaker.try_acquire(Limit::Requests) else {
        return m.drop_copy("overflow");
    };
    let cx = pick_context(pool, &head.parts.headers, rx.conn.client);
    let Some(index) = pick_untried(pool, &TriedSet::new(), &cx) else {
        return m.drop_copy("no_endpoint");
    };
    let mut headers = head.parts.headers.clone();
    headers.insert(
        mirror::X_SWITCHYARD_MIRROR.clone(),
        HeaderValue::from_static("1"),
    );
    Mirror::spawn_copy(
        slot,
        guard,
        index,
        mirror::head_of(&head.parts),
        headers,
        body.replay(),
    );
}
