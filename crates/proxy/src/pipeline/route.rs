//! Stage 2, route: the first route whose match accepts the request (routes that match on the
//! model need it first: from the JSON body, read once and bounded, or the `x-model` header), then
//! the route's target, chosen once (`split.rs`) so retries and hedges stay on it.

use std::sync::Arc;

use bytes::Bytes;

use super::exchange::{ClientRequest, Exchange, Reject, Routed, Stop};
use super::model::RequestedModel;
use super::shape::Shape;
use crate::error::GatewayError;
use crate::gateway::Gateway;

pub fn route<'g>(
    gateway: &'g Gateway,
    rx: &mut Exchange<'_>,
    req: &ClientRequest,
    model: Option<&RequestedModel>,
    pre_read: Option<&Bytes>,
    shape: Shape,
) -> Result<Routed<'g>, Stop> {
    let model_name = model.map(RequestedModel::name);
    let Some(route) = gateway.routes.iter().find(|r| {
        r.matcher.matches(req)
            && r.matcher.model_matches(model_name)
            && r.matcher.client_matches(rx.conn.client_cert.as_deref())
    }) else {
        return Err(Reject::keep(GatewayError::NoRoute).into());
    };
    if let Some(f) = route.filters.as_deref() {
        if let Some(answer) = &f.answer {
            rx.finish.set_route(answer.metrics(), false);
            return Err(respond(rx, route, f, req));
        }
    }
    let choice = super::split::choose(route, req.headers(), rx.conn.client.ip());
    if let Some(cookie) = choice.set_cookie {
        rx.response_headers.push((http::header::SET_COOKIE, cookie));
    }
    let target = &route.targets[choice.index];
    rx.finish
        .set_route(Arc::clone(&target.metrics), target.pool.inference.is_some());
    let length = pre_read.map(|b| b.len() as u64).or(shape.content_length);
    if length.is_some_and(|n| n > route.max_request_body) {
        return Err(Reject::close(GatewayError::BodyTooLarge).into());
    }
    Ok(Routed { route, target })
}

/// A route that answers itself (`redirect`, `direct_response`) does so here: it has no upstream.
#[cold]
fn respond(
    rx: &Exchange<'_>,
    route: &crate::route_entry::RouteEntry,
    f: &crate::filters::RouteFilters,
    req: &ClientRequest,
) -> Stop {
    let to = crate::filters::AnswerTo {
        uri: req.uri(),
        headers: req.headers(),
        https: rx.conn.https,
        local_port: rx.conn.local_port,
    };
    let vars = rx.filter_vars(&route.name);
    match f.answer(&to, &vars) {
        Some(resp) => Stop::Respond(Box::new(resp), None),
        None => Reject::keep(GatewayError::NoRoute).into(),
    }
}
