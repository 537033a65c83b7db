//! HTTP routing and the non-inference endpoints: models, health, metrics, fault control, info.
//!
//! Inference endpoints live in [`crate::openai`]. Every error, including 404 for unknown paths,
//! is OpenAI-shaped JSON (`{"error":{"message","type","param","code"}}`) so clients written for
//! OpenAI-compatible servers parse it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::faults::{FaultConfig, FaultPatch};
use crate::metrics::{orca_report, render, OrcaFormat};
use crate::replica::Incarnation;
use crate::sse::ApiKind;

/// Response body type of every endpoint.
pub type SimBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Request header asking for an ORCA load report.
pub const ORCA_FORMAT_HEADER: &str = "endpoint-load-metrics-format";
/// Response header carrying the ORCA load report.
pub const ORCA_HEADER: &str = "endpoint-load-metrics";

/// Serves one request on replica incarnation `inc`.
pub async fn handle(
    inc: Arc<Incarnation>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let orca = req
        .headers()
        .get(ORCA_FORMAT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(OrcaFormat::parse);
    let mut resp = route(&inc, req).await;
    if let Some(fmt) = orca {
        let report = {
            let mut m = inc.metrics.lock().expect("metrics lock");
            orca_report(fmt, &inc.replica.info, &mut m, Instant::now())
        };
        if let Ok(v) = HeaderValue::from_str(&report) {
            resp.headers_mut().insert(ORCA_HEADER, v);
        }
    }
    Ok(resp)
}

async fn route(inc: &Incarnation, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/chat/completions") => {
            served_by(inc, crate::openai::serve(inc, req, ApiKind::Chat).await)
        }
        (Method::POST, "/v1/completions") => served_by(
            inc,
            crate::openai::serve(inc, req, ApiKind::Completion).await,
        ),
        (Method::GET, "/v1/models") => json(StatusCode::OK, &models(inc)),
        (Method::GET, "/health") => full(StatusCode::OK, "text/plain", Bytes::new()),
        (Method::GET, "/metrics") => {
            let text = render(
                &inc.replica.info,
                &inc.metrics.lock().expect("metrics lock"),
            );
            full(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(text),
            )
        }
        (Method::GET, "/sim/info") => json(StatusCode::OK, &info(inc)),
        // vLLM's endpoint of the same name: drop every cached prefix (AllBlocksCleared).
        (Method::POST, "/reset_prefix_cache") => match inc.engine.reset_prefix_cache() {
            Ok(()) => full(StatusCode::OK, "text/plain", Bytes::new()),
            Err(()) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is not running.",
                None,
                None,
            ),
        },
        (Method::GET | Method::POST | Method::DELETE, "/sim/faults") => faults(inc, req).await,
        (Method::POST, "/sim/oracle/cached") => crate::openai::oracle_cached(inc, req).await,
        (
            _,
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/models"
            | "/health"
            | "/metrics"
            | "/sim/faults"
            | "/sim/info"
            | "/sim/oracle/cached"
            | "/reset_prefix_cache",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            None,
            None,
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("Not Found: {path}"),
            None,
            None,
        ),
    }
}

/// Names the replica that served an answer (`x-sim-replica: INDEX`), so benchmarks behind a
/// router can check its picks against the replica's true cache.
fn served_by(inc: &Incarnation, mut resp: Response<SimBody>) -> Response<SimBody> {
    resp.headers_mut()
        .insert("x-sim-replica", http::HeaderValue::from(inc.replica.index));
    resp
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (for `created`).
pub fn created() -> u64 {
    unix_now()
}

fn models(inc: &Incarnation) -> serde_json::Value {
    let r = &inc.replica;
    let created = unix_now();
    let mut data = vec![serde_json::json!({
        "id": r.model, "object": "model", "created": created, "owned_by": "vllm",
        "root": r.model, "parent": null, "max_model_len": r.max_model_len,
    })];
    for a in &r.cfg.lora_adapters {
        data.push(serde_json::json!({
            "id": a, "object": "model", "created": created, "owned_by": "vllm",
            "root": a, "parent": r.model, "max_model_len": null,
        }));
    }
    serde_json::json!({ "object": "list", "data": data })
}

fn info(inc: &Incarnation) -> serde_json::Value {
    let r = &inc.replica;
    serde_json::json!({
        "index": r.index,
        "address": r.addr.to_string(),
        "model": r.model,
        "zone": r.cfg.zone,
        "profile": r.profile.name,
        "speed": r.cfg.speed,
        "lora_adapters": r.cfg.lora_adapters,
        "max_loras": r.cfg.max_loras,
        "max_num_seqs": r.cfg.max_num_seqs,
        "max_num_batched_tokens": r.cfg.max_num_batched_tokens,
        "num_gpu_blocks": r.profile.num_gpu_blocks,
        "max_model_len": r.max_model_len,
        "kv_events": r.kv_events.as_ref().map(|k| serde_json::json!({
            "events": format!("tcp://{}", k.events),
            "replay": format!("tcp://{}", k.replay),
            "subscribers": inc.kv_publisher.as_ref().map_or(0, |p| p.subscribers()),
        })),
    })
}

/// Grace period between answering a crash request and crashing, so the answer gets out.
const CRASH_GRACE: Duration = Duration::from_millis(20);

async fn faults(inc: &Incarnation, req: Request<Incoming>) -> Response<SimBody> {
    let replica = &inc.replica;
    let method = req.method().clone();
    if method == Method::GET {
        let current = replica.faults.lock().expect("faults lock").clone();
        return json(StatusCode::OK, &current);
    }
    if method == Method::DELETE {
        *replica.faults.lock().expect("faults lock") = FaultConfig::default();
        return json(StatusCode::OK, &FaultConfig::default());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("failed to read body: {e}"),
                None,
                None,
            )
        }
    };
    let patch: FaultPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid fault JSON: {e}"),
                None,
                None,
            )
        }
    };
    let mut next = replica.faults.lock().expect("faults lock").clone();
    next.apply(patch);
    if let Err(e) = next.validate() {
        return error(StatusCode::BAD_REQUEST, e, None, None);
    }
    let crash = next.crash_for_ms.take();
    *replica.faults.lock().expect("faults lock") = next.clone();
    next.crash_for_ms = crash;
    if let Some(ms) = crash {
        let replica = replica.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CRASH_GRACE).await;
            replica.crash(Duration::from_millis(ms));
        });
    }
    json(StatusCode::OK, &next)
}

/// A response with a fixed body.
pub fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<SimBody> {
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<SimBody> {
    let body = serde_json::to_vec(value).expect("serializable");
    full(status, "application/json", Bytes::from(body))
}

/// An OpenAI-style error response.
pub fn error(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<SimBody> {
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({
        "error": { "message": message.into(), "type": kind, "param": param, "code": code }
    });
    let mut resp = json(status, &body);
    if matches!(status.as_u16(), 429 | 503) {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
