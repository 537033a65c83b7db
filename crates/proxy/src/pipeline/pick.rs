//! Stage 6, the inference-aware first pick: an `inference` pool scores its endpoints on queue,
//! KV cache, prefix affinity, LoRA adapters and in-flight tokens, through the same seam
//! `switchyard epp` uses ([`switchyard_inference::InferencePicker::pick_request`]). Other pools
//! pick in the attempt loop; retries always do. With a `predictor`, a request's latency SLO
//! (`x-slo-ttft-ms`, `x-slo-tpot-ms`) decides the pick, and a sheddable one no endpoint can
//! serve in time is refused here (429 `slo_unattainable`), and with `predictor.queue` any other
//! such request is held here until one is predicted to (`switchyard_inference::slo_queue`).

use http::HeaderValue;
use switchyard_config::Priority;
use switchyard_inference::{InferencePicker, InferenceRequest};

use super::exchange::Routed;
use super::exchange::{Exchange, Reject};
use crate::error::GatewayError;
use crate::trace::RequestSpan;

/// The first attempt's endpoint, and the explanation a client asked for with
/// `x-switchyard-debug: 1`.
#[derive(Default)]
pub struct FirstPick {
    pub index: Option<usize>,
    pub debug_header: Option<HeaderValue>,
    /// The engine priority the body is to carry (`predictor.late_priority`).
    pub late_priority: Option<i64>,
}

pub async fn first_pick(
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    parsed: Option<&InferenceRequest>,
    priority: Priority,
    headers: &http::HeaderMap,
) -> Result<FirstPick, Reject> {
    let (Some(picker), Some(parsed)) = (to.pool().inference.as_ref(), parsed) else {
        return Ok(FirstPick::default());
    };
    // Scores are for operators: only a listener that trusts its clients answers the header.
    let debug_header = rx.scan.debug && rx.conn.trust.debug;
    // A sampled trace carries the explanation whether or not the client asked for it.
    // So does one watched live (`/tap`, the dashboard), or sampled for `/debug/requests`.
    let debug = debug_header
        || rx.finish.trace().is_some_and(RequestSpan::recording)
        || rx.finish.explains_pick();
    // A benchmark's oracle (`x-switchyard-oracle-cached`), from trusted clients only.
    let truth = match rx.conn.trust.debug {
        true => oracle_truth(to, headers),
        false => Vec::new(),
    };
    let rank = match priority {
        Priority::Critical => 0,
        Priority::Standard => 1,
        Priority::Sheddable => 2,
    };
    // With a `predictor.queue`, a request no endpoint can serve in time waits here for one.
    let pick = picker
        .pick_request_queued(
            &to.pool().endpoints,
            parsed,
            (priority == Priority::Sheddable, rank),
            debug,
            rx.scan.slo.or(to.route.slo),
            &truth,
        )
        .await;
    if pick.shed {
        let error = if pick.slo_shed() {
            GatewayError::SloUnattainable
        } else {
            GatewayError::Shed
        };
        to.pool().count_overflow(error.kind());
        return Err(Reject::keep(error));
    }
    let index = pick.index();
    if let Some(i) = index {
        to.pool().count_prefix_pick(pick.decision.prefix);
        rx.finish.set_inference(
            picker.clone(),
            i,
            (pick.est_tokens, parsed.prompt_tokens),
            pick.decision.ticket,
        );
    }
    let mut first = FirstPick {
        index,
        debug_header: None,
        late_priority: picker.late_priority(&pick.decision),
    };
    if debug {
        let explanation = InferencePicker::debug_header(&pick.decision);
        if let Some(t) = rx.finish.trace() {
            t.set_pick(&explanation, &pick.decision);
        }
        rx.finish.set_pick(&explanation);
        if debug_header {
            first.debug_header = HeaderValue::from_str(&explanation).ok();
        }
    }
    Ok(first)
}

/// Give a request predicted late everywhere its engine priority (`first.late_priority`), so
/// the engine serves requests still on time first; a body that is not a buffered JSON object,
/// or that sets its own `priority`, goes as it is.
pub fn apply_late_priority(
    first: &FirstPick,
    head: &mut http::request::Parts,
    body: &mut crate::body::RequestBody,
) {
    let Some(priority) = first.late_priority else {
        return;
    };
    let rewritten = body
        .buffered()
        .and_then(|b| switchyard_inference::add_priority(&b, priority));
    if let Some(b) = rewritten {
        head.headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
        *body = crate::body::RequestBody::Buffered(Some(bytes::Bytes::from(b)));
    }
}

fn oracle_truth(to: Routed<'_>, headers: &http::HeaderMap) -> Vec<Option<usize>> {
    use switchyard_inference::prefix_truth;
    let Some(value) = headers.get(prefix_truth::ORACLE_CACHED_HEADER) else {
        return Vec::new();
    };
    let addresses: Vec<_> = to.pool().endpoints.iter().map(|e| e.address()).collect();
    prefix_truth::parse(value.as_bytes(), &addresses).unwrap_or_else(|e| {
        tracing::debug!(
            error = e,
            "ignoring a malformed x-switchyard-oracle-cached header"
        );
        Vec::new()
    })
}
