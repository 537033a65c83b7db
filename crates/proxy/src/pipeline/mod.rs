//! The request path as named stages over one per-request context ([`Exchange`]). [`forward`]
//! (stages 1–6 in [`prepare`], 7–8 after it) is the list of stages in the order a request meets
//! them; each stage is a file here, and a
//! stage that refuses a request returns a [`Reject`] (or answers itself with [`Stop::Respond`]):
//!
//! 1. `shape.rs`: limits and request shape (431, 400 and close, 501); `target.rs`: one
//!    validated authority and a normalized path, for routing and upstream alike
//! 2. `route.rs`: the first matching route (after reading the model when routes need it), and
//!    its target (`split.rs`: by weight, sticky per user, or forced by a tester's header)
//! 3. `rate_limit.rs`: the route's request and token limits (429); `admit.rs`: circuit
//!    breaker, concurrency limit with its fair queue (503, 429)
//! 4. `request_rewrite.rs`: the upstream hop's head
//! 5. `request_body.rs`: streamed, or read whole and bounded for replay, routing or rewrite;
//!    then `model.rs`: an `inference` pool's OpenAI body, parsed once; the model rewrite
//! 6. `pick.rs`: the inference-aware first pick (the seam shared with `switchyard epp`); then
//!    `mirror.rs`: copies of the request to the route's mirror pools, sent from their own tasks
//! 7. `attempts.rs`: pick (`pick_endpoint.rs`), send, hedge (`hedge.rs`), classify
//!    (`outcome.rs`), retry (`retry.rs`)
//! 8. `response.rs`: response rewrite and stream back
//! 9. `crate::finish`: metrics, access log and span after the last byte
//!
//! Where a new policy goes is in ARCHITECTURE.md ("Where to add things").

mod admit;
mod attempts;
mod exchange;
mod hedge;
mod mirror;
mod model;
mod outcome;
mod pick;
pub(crate) mod pick_endpoint;
mod rate_limit;
mod reject;
mod request_body;
mod request_rewrite;
mod response;
mod retry;
mod route;
mod shape;
mod split;
mod target;

use http::Response;

pub use exchange::{ClientRequest, ConnContext, Downstream, Exchange, Reject, Stop, Trust};
pub use request_body::DEFAULT_MAX_REPLAY_BODY;
pub use response::X_SWITCHYARD_PICK;
pub use shape::EarlyData;
#[doc(hidden)]
pub use target::normalize_path;

use crate::body::ResponseBody;
use crate::gateway::{Gateway, GatewayHandle};
use exchange::Routed;

/// Serve one request. Never fails: every problem becomes a gateway response.
///
/// The request goes into a box before the future exists: an async fn keeps room for its
/// arguments in every state of its future, so a by-value request head (264 bytes) would be held
/// twice at every level for as long as the upstream takes to answer (issue 19).
pub fn handle<'a>(
    handle: &'a GatewayHandle,
    cx: &'a ConnContext,
    req: ClientRequest,
    downstream: Downstream,
) -> impl std::future::Future<Output = Response<ResponseBody>> + 'a {
    serve(handle, cx, Box::new(req), downstream)
}

async fn serve(
    handle: &GatewayHandle,
    cx: &ConnContext,
    req: Box<ClientRequest>,
    downstream: Downstream,
) -> Response<ResponseBody> {
    // The request keeps the generation it started on to the end, whatever reloads happen.
    let gateway = handle.load();
    let mut rx = Exchange::start(handle, &gateway, cx, &req);
    match forward(&gateway, &mut rx, req, downstream).await {
        Ok(resp) => resp,
        Err(Stop::Reject(r)) => reject::respond(handle, &gateway, rx, r),
        Err(Stop::Respond(resp, error)) => reject::answered(rx, *resp, error),
    }
}

/// The stages, in order: everything up to the first pick, then the attempts and the response.
async fn forward(
    gateway: &Gateway,
    rx: &mut Exchange<'_>,
    req: Box<ClientRequest>,
    downstream: Downstream,
) -> Result<Response<ResponseBody>, Stop> {
    let Prepared {
        to,
        mut head,
        body,
        mut admitted,
        first,
        head_class,
        request_headers,
    } = prepare(gateway, rx, req).await?;
    let answer = attempts::run(
        rx,
        to,
        &mut head,
        body,
        first.index,
        &mut admitted,
        head_class,
    )
    .await?;
    let added = response::Added {
        upgrade: head.upgrade.map(|(_, client_side)| client_side),
        pick_debug: first.debug_header,
        request_headers,
    };
    Ok(response::stream_back(
        gateway, rx, to, answer, added, downstream,
    ))
}

/// A request admitted, its first endpoint picked: what the attempts need. A stage of its own so
/// that what only the earlier stages hold (the client's request, the parsed body, the body
/// reads) is gone from the future while the upstream answers, which for a token stream is the
/// whole time before its first byte (issue 19: memory per stream).
struct Prepared<'g> {
    to: Routed<'g>,
    head: request_rewrite::UpstreamHead,
    body: crate::body::RequestBody,
    admitted: admit::Admitted,
    first: pick::FirstPick,
    head_class: (switchyard_balance::head_latency::HeadClass, u32),
    request_headers: Option<Box<http::HeaderMap>>,
}

async fn prepare<'g>(
    gateway: &'g Gateway,
    rx: &mut Exchange<'_>,
    mut req: Box<ClientRequest>,
) -> Result<Prepared<'g>, Stop> {
    let shape = shape::check(rx, &req)?;
    target::check(rx, &mut req)?;
    let (pre_read, model) = if gateway.needs_model {
        model::read_model(gateway, &mut req, shape).await?
    } else {
        (None, None)
    };
    let to = route::route(gateway, rx, &req, model.as_ref(), pre_read.as_ref(), shape)?;
    if req
        .headers()
        .contains_key(&crate::capacity::ENDPOINT_LOAD_METRICS_FORMAT)
    {
        rx.load_report = Some(crate::capacity::load_report(to.pool()));
    }
    let (mut head, body) = request_rewrite::rewrite(rx, to, *req, pre_read);
    // Bodies the gateway reads are read (bounded in size and time) before admission, so a slow
    // upload never holds a slot a ready request could use.
    let upgrade = head.upgrade.is_some();
    let path = head.parts.uri.path();
    let mut body = match request_body::plan(to, path, body, shape, upgrade) {
        request_body::Plan::Ready(body) => body,
        request_body::Plan::ReadWhole(incoming) => {
            let (limit, timeout) = (to.route.max_request_body, to.route.body_read_timeout);
            request_body::read_whole(incoming, limit, timeout).await?
        }
    };
    let parsed = if !upgrade && to.inference_api(path) {
        let parsed = model::parse_openai(rx, &head, &body).await?;
        Some(model::engine_keys(to, parsed, &body).await)
    } else {
        None
    };
    let parsed = model::read_and_rewrite(rx, to, &mut head, &mut body, model, parsed)?;
    if !to.route.rate_limits.is_empty() {
        Box::pin(rate_limit::check(
            rx,
            to,
            &head.parts.headers,
            parsed.as_ref(),
        ))
        .await?;
    }
    let admitted = admit::admit(rx, to, &head.parts.headers).await?;
    let priority = admit::priority(rx, to);
    let first = pick::first_pick(rx, to, parsed.as_ref(), priority, &head.parts.headers).await?;
    pick::apply_late_priority(&first, &mut head.parts, &mut body);
    // A whole completion's head comes with its last token: its wait is judged per token.
    let head_class = switchyard_balance::head_latency::HeadClass::of(
        parsed
            .as_ref()
            .filter(|p| !p.stream)
            .and_then(|p| p.max_tokens),
    );
    drop(parsed);
    mirror::copy(rx, to, &head, &body);
    // Kept only for a response filter that reads them: the last attempt takes the headers.
    let request_headers = to
        .route
        .filters
        .as_deref()
        .filter(|f| f.response_reads_request())
        .map(|_| Box::new(head.parts.headers.clone()));
    Ok(Prepared {
        to,
        head,
        body,
        admitted,
        first,
        head_class,
        request_headers,
    })
}
