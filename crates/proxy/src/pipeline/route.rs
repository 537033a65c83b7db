//! Stage 2, route: the first route whose match accepts the request (routes that match on the
//! model need it first: from the JSON body, read once and bounded, or the `x-model` header), then
//! the route's target, drawn by weight once so retries and hedges stay on it.

use std::sync::Arc;

use http::Request;

use super::exchange::{ClientRequest, Exchange, Reject, Routed};
use super::model::{read_model, RequestedModel};
use super::shape::Shape;
use crate::body::InBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;

/// The request, with its body read when routing needed the model, and the model it names.
pub struct RoutedRequest<'g> {
    pub req: Request<InBody>,
    pub model: Option<RequestedModel>,
    pub to: Routed<'g>,
}

pub async fn route<'g>(
    gateway: &'g Gateway,
    rx: &mut Exchange<'_>,
    req: ClientRequest,
    shape: Shape,
) -> Result<RoutedRequest<'g>, Reject> {
    let (req, model) = if gateway.needs_model {
        read_model(
            gateway.model_body_limit,
            gateway.model_body_timeout,
            req,
            shape.content_length,
        )
        .await?
    } else {
        (req.map(InBody::Incoming), None)
    };
    let model_name = model.as_ref().map(RequestedModel::name);
    let Some(route) = gateway
        .routes
        .iter()
        .find(|r| r.matcher.matches(&req) && r.matcher.model_matches(model_name))
    else {
        return Err(Reject::keep(GatewayError::NoRoute));
    };
    let target = &route.targets[route.pick_target()];
    rx.finish
        .set_route(Arc::clone(&target.metrics), target.pool.inference.is_some());
    let too_large = match req.body() {
        InBody::Buffered(bytes) => bytes.len() as u64 > route.max_request_body,
        InBody::Incoming(_) => shape
            .content_length
            .is_some_and(|n| n > route.max_request_body),
    };
    if too_large {
        return Err(Reject::close(GatewayError::BodyTooLarge));
    }
    Ok(RoutedRequest {
        req,
        model,
        to: Routed { route, target },
    })
}
