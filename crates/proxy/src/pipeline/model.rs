//! Stage 5, the body's model: where the gateway learns a request's model (the `model` of a JSON
//! body, read once and bounded, or the `x-model` header for opaque bodies), the OpenAI body of an
//! `inference` pool parsed once, and the per-target model rewrite, which replaces the body's
//! top-level `model` value and nothing else.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use switchyard_inference::InferenceRequest;

use super::exchange::{Exchange, Reject, Routed, Stop};
use super::request_body::read_whole;
use super::request_rewrite::UpstreamHead;
use super::shape::Shape;
use crate::body::{ClientBody, RequestBody, ResponseBody};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::headers::X_REQUEST_ID;
use crate::models::RequestModel;

/// Read the model a request asks for: the `model` field of a JSON body (the body is read, up to
/// the largest `max_request_body` of any route, and kept to be forwarded unchanged), else the
/// `x-model` header.
pub(crate) async fn read_model(
    gateway: &Gateway,
    req: &mut Request<ClientBody>,
    shape: Shape,
) -> Result<(Option<Bytes>, Option<RequestedModel>), Reject> {
    let header = req
        .headers()
        .get("x-model")
        .and_then(|v| v.to_str().ok())
        .map(|v| RequestedModel::Header(v.to_string()));
    let has_body =
        req.method() == http::Method::POST && !http_body::Body::is_end_stream(req.body());
    if !has_body {
        return Ok((None, header));
    }
    let limit = gateway.model_body_limit;
    if shape.content_length.is_some_and(|n| n > limit) {
        return Err(Reject::close(GatewayError::BodyTooLarge));
    }
    let incoming = std::mem::replace(req.body_mut(), ClientBody::Full(None));
    let bytes = read_whole(incoming, limit, gateway.model_body_timeout)
        .await?
        .buffered()
        .unwrap_or_default();
    let model = body_model(&bytes).map(RequestedModel::Body).or(header);
    Ok((Some(bytes), model))
}

/// Where the gateway learned a request's model.
pub(crate) enum RequestedModel {
    /// The `model` of a JSON body that parsed: the one a rewrite may change.
    Body(String),
    /// Header `x-model`, for opaque bodies: routed on, never rewritten.
    Header(String),
}

impl RequestedModel {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Body(m) | Self::Header(m) => m,
        }
    }
}

/// The `model` string of a JSON object body, when the body parses as JSON.
pub(crate) fn body_model(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(bytes).ok()?.model
}

/// Parse the OpenAI body of an `inference` pool (a malformed one is answered 400 in the OpenAI
/// shape), learn the request's model, and apply the target's model rewrite.
/// The OpenAI body of a request the `inference` picker scores, parsed once (a malformed one is
/// answered 400 in the OpenAI shape). Only called for such requests.
pub(crate) async fn parse_openai(
    rx: &Exchange<'_>,
    head: &UpstreamHead,
    body: &RequestBody,
) -> Result<InferenceRequest, Stop> {
    let bytes = body.buffered().unwrap_or_default();
    let path = head.parts.uri.path();
    let parsed = if bytes.len() <= switchyard_inference::INLINE_PARSE_BYTES {
        switchyard_inference::parse_openai(path, &bytes)
    } else {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || switchyard_inference::parse_openai(&path, &bytes))
            .await
            .map_err(|_| {
                Stop::Reject(Reject::keep(GatewayError::BadRequest("body parse failed")))
            })?
    };
    parsed.map_err(|e| {
        let resp = openai_error(&e, &rx.request_id);
        Stop::Respond(Box::new(resp), Some("bad_inference_request"))
    })
}

/// A request's prompt keyed as the pool's engines key it, before the pick, when the pool routes
/// on KV events: a prompt of token ids as it is (any tokenizer); with a model's tokenizer, a
/// completions prompt tokenized, and a chat request rendered with the model's chat template
/// first (from the body, which the parse above kept only as text). A model's tokenizer takes
/// about a millisecond for 2k tokens, which would stall every other request of this worker, so
/// that work, and reading a large body's ids, runs on the blocking pool.
pub(crate) async fn engine_keys(
    to: Routed<'_>,
    mut parsed: InferenceRequest,
    body: &RequestBody,
) -> InferenceRequest {
    use switchyard_inference::ApiKind;
    let Some(kv) = to
        .pool()
        .inference
        .as_ref()
        .and_then(|p| p.kv_index())
        .cloned()
    else {
        return parsed;
    };
    let bytes = || body.buffered().unwrap_or_default();
    let keys = match parsed.kind {
        ApiKind::Completions if parsed.prompt.is_empty() && parsed.prompt_tokens > 0 => {
            let bytes = bytes();
            if bytes.len() <= switchyard_inference::INLINE_PARSE_BYTES {
                parsed.engine_keys = Some(kv.token_id_keys(&bytes));
                return parsed;
            }
            tokio::task::spawn_blocking(move || (None, kv.token_id_keys(&bytes))).await
        }
        ApiKind::Completions if kv.costly_keys() && !parsed.prompt.is_empty() => {
            let prompt = std::mem::take(&mut parsed.prompt);
            tokio::task::spawn_blocking(move || {
                let keys = kv.prompt_keys(&prompt);
                (Some(prompt), keys)
            })
            .await
        }
        ApiKind::ChatCompletions if kv.costly_keys() => {
            let bytes = bytes();
            tokio::task::spawn_blocking(move || (None, kv.chat_keys(&bytes))).await
        }
        _ => return parsed,
    };
    match keys {
        Ok((prompt, keys)) => {
            if let Some(p) = prompt {
                parsed.prompt = p;
            }
            parsed.engine_keys = Some(keys);
        }
        // The tokenizer panicked or the runtime is shutting down; a completions prompt went
        // with the task, so the pick scores this request on load alone.
        Err(_) => parsed.engine_keys = Some(Vec::new()),
    }
    parsed
}

/// Learn the request's model (from the parsed OpenAI body, or the body's `model` for a rewrite)
/// and apply the target's model rewrite.
pub(crate) fn read_and_rewrite(
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    head: &mut UpstreamHead,
    body: &mut RequestBody,
    mut model: Option<RequestedModel>,
    mut parsed: Option<InferenceRequest>,
) -> Result<Option<InferenceRequest>, Stop> {
    if head.upgrade.is_some() {
        return Ok(None);
    }
    let rewrite = to.target.model.as_ref();
    if let Some(p) = &parsed {
        model = Some(RequestedModel::Body(p.model.clone()));
    } else if rewrite.is_some() && !matches!(model, Some(RequestedModel::Body(_))) {
        // A rewrite reads the model from the body even when the route did not need it.
        model = body
            .buffered()
            .and_then(|b| body_model(&b))
            .map(RequestedModel::Body)
            .or(model);
    }
    if let Some(model) = model {
        let request_model = apply_rewrite(
            model,
            rewrite,
            body,
            &mut head.parts.headers,
            parsed.as_mut(),
        );
        rx.finish.set_model(request_model);
    }
    Ok(parsed)
}

/// The answer to a malformed or oversized OpenAI request body, in the OpenAI error shape.
pub(crate) fn openai_error(
    e: &switchyard_inference::RequestError,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(e.to_openai_json())));
    *resp.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

/// Apply a target's model rewrite (`rewrite`) to a request whose model is `model`, and say which
/// model it is for: the body's `model` value changes (and its `Content-Length` with it) only when
/// the body carried one and the target names another.
fn apply_rewrite(
    model: RequestedModel,
    rewrite: Option<&Arc<str>>,
    body: &mut RequestBody,
    headers: &mut HeaderMap,
    parsed: Option<&mut InferenceRequest>,
) -> RequestModel {
    let mut upstream_model = None;
    if let (Some(new), RequestedModel::Body(old)) = (rewrite, &model) {
        let bytes = body.buffered();
        match bytes.and_then(|b| switchyard_inference::rewrite_model(&b, new)) {
            Some(rewritten) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                *body = RequestBody::Buffered(Some(Bytes::from(rewritten)));
                upstream_model = Some(new.clone());
            }
            // Already the target name; anything else leaves the body as it was.
            None if **new == **old => upstream_model = Some(new.clone()),
            None => {}
        }
    }
    match upstream_model {
        Some(new) => {
            if let Some(p) = parsed {
                p.model = new.to_string();
            }
            let original = model.name();
            RequestModel {
                original: (*new != *original).then(|| original.to_string()),
                model: new,
            }
        }
        None => RequestModel {
            model: Arc::from(model.name()),
            original: None,
        },
    }
}
