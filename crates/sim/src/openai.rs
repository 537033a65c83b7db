//! `POST /v1/completions` and `POST /v1/chat/completions`.
//!
//! A request is validated like vLLM validates it (JSON, required fields, model name, context
//! length), tokenized ([`crate::tokenizer`]), and handed to the replica's engine as a
//! [`SeqSpec`]. The response is then either an SSE stream fed token by token by the engine, or —
//! for `stream: false` — one JSON document written when the engine reports the last token.
//!
//! Output length: exactly `max_tokens` (or `max_completion_tokens`) tokens, `finish_reason:
//! "length"`. Without a limit the simulated model stops by itself after 16–256 tokens chosen from
//! the request seed, `finish_reason: "stop"`. The text is one vocabulary word per token.

use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::mpsc::unbounded_channel;

use crate::api::{created, error, json, SimBody};
use crate::chat_template::chat_messages;
use crate::kv_cache::block_hashes;
use crate::prompt_tokenizer::PromptTokenizer;
use crate::replica::{Incarnation, Replica};
use crate::scheduler::{FinishReason, SeqSpec};
use crate::sse::{ApiKind, ChunkWriter, SseBody, Usage};
use crate::tokenizer::{self, generated_text, mix64};

/// A validated inference request.
#[derive(Debug)]
struct Parsed {
    /// Model name as requested (base or adapter); echoed in responses.
    model: String,
    adapter: Option<u16>,
    prompt: Vec<u32>,
    output_len: u32,
    finish: FinishReason,
    stream: bool,
    include_usage: bool,
    seed: u64,
    priority: i64,
}

type Reject = Box<Response<SimBody>>;

fn bad(message: impl Into<String>, param: &str) -> Reject {
    Box::new(error(StatusCode::BAD_REQUEST, message, Some(param), None))
}

fn parse(body: &[u8], kind: ApiKind, replica: &Replica) -> Result<Parsed, Reject> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("Invalid JSON body: {e}"),
            None,
            None,
        ))
    })?;
    let Some(obj) = v.as_object() else {
        return Err(bad("The request body must be a JSON object.", "body"));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(bad("'model' must be a string.", "model")),
        None => return Err(bad("Field required: 'model'.", "model")),
    };
    let adapter = if model == replica.model {
        None
    } else {
        match replica.adapter_id(&model) {
            Some(a) => Some(a),
            None => {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    format!("The model `{model}` does not exist."),
                    Some("model"),
                    Some("model_not_found"),
                )))
            }
        }
    };
    let prompt = match kind {
        ApiKind::Chat => chat_prompt(obj.get("messages"), &replica.tokenizer)?,
        ApiKind::Completion => completion_prompt(obj.get("prompt"), &replica.tokenizer)?,
    };
    if prompt.is_empty() {
        return Err(bad("The prompt cannot be empty.", "prompt"));
    }
    if let Some(n) = obj.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(bad("Only n=1 is supported by the simulator.", "n"));
        }
    }
    let limit_field = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|f| obj.get(*f).is_some_and(|v| !v.is_null()));
    let max_tokens = match limit_field {
        Some(f) => match obj[f].as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Some(n as u32),
            _ => return Err(bad(format!("'{f}' must be a positive integer."), f)),
        },
        None => None,
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("'stream' must be a boolean.", "stream")),
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => fastrand::u64(..),
        Some(s) => match s.as_i64() {
            Some(s) => s as u64,
            None => return Err(bad("'seed' must be an integer.", "seed")),
        },
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => 0,
        Some(p) => match p.as_i64() {
            Some(p) => p,
            None => return Err(bad("'priority' must be an integer.", "priority")),
        },
    };
    // vLLM refuses a priority its scheduler would ignore.
    if priority != 0 && replica.cfg.scheduling_policy != crate::scheduler::Policy::Priority {
        return Err(bad(
            format!("Got priority {priority} but Priority scheduling is not enabled."),
            "priority",
        ));
    }
    let room = replica.max_model_len.saturating_sub(prompt.len());
    let (output_len, finish) = match max_tokens {
        Some(n) => {
            if n as usize > room {
                let param = if kind == ApiKind::Chat {
                    "messages"
                } else {
                    "prompt"
                };
                return Err(bad(
                    format!(
                        "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the messages, {} in the completion). Please reduce the length of the messages or completion.",
                        replica.max_model_len,
                        prompt.len() + n as usize,
                        prompt.len(),
                        n
                    ),
                    param,
                ));
            }
            (n, FinishReason::Length)
        }
        None => {
            if room == 0 {
                return Err(bad(
                    format!(
                        "This model's maximum context length is {} tokens; the prompt has {}.",
                        replica.max_model_len,
                        prompt.len()
                    ),
                    "messages",
                ));
            }
            let natural = 16 + (mix64(seed ^ 0x5eed) % 241) as usize;
            if natural <= room {
                (natural as u32, FinishReason::Stop)
            } else {
                (room as u32, FinishReason::Length)
            }
        }
    };
    Ok(Parsed {
        model,
        adapter,
        prompt,
        output_len,
        finish,
        stream,
        include_usage,
        seed,
        priority,
    })
}

fn chat_prompt(messages: Option<&Value>, tokenizer: &PromptTokenizer) -> Result<Vec<u32>, Reject> {
    let parts = chat_messages(messages).map_err(|e| bad(e, "messages"))?;
    match tokenizer.encode_chat(&parts) {
        Some(tokens) => tokens.map_err(|e| bad(e, "messages")),
        None => Ok(tokenizer::tokenize_chat(
            parts.iter().map(|(r, c)| (r.as_str(), c.as_str())),
        )),
    }
}

fn completion_prompt(
    prompt: Option<&Value>,
    tokenizer: &PromptTokenizer,
) -> Result<Vec<u32>, Reject> {
    let invalid = || {
        bad(
            "'prompt' must be a string, a one-element array of strings, or an array of token ids.",
            "prompt",
        )
    };
    let encode = |s: &str| {
        tokenizer
            .encode(s)
            .ok_or_else(|| bad("The prompt could not be tokenized.", "prompt"))
    };
    match prompt {
        None => Err(bad("Field required: 'prompt'.", "prompt")),
        Some(Value::String(s)) => encode(s),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => encode(s),
            [Value::Array(ids)] => token_ids(ids).ok_or_else(invalid),
            ids if !ids.is_empty() => token_ids(ids).ok_or_else(invalid),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

fn token_ids(ids: &[Value]) -> Option<Vec<u32>> {
    ids.iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// Serves one inference request of `kind`.
pub async fn serve(inc: &Incarnation, req: Request<Incoming>, kind: ApiKind) -> Response<SimBody> {
    let replica = &inc.replica;
    let faults = replica.faults.lock().expect("faults lock").clone();
    if faults.hang {
        std::future::pending::<()>().await;
    }
    if faults.should_fail() {
        let status = StatusCode::from_u16(faults.effective_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "Injected fault (switchyard sim).", None, None);
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
    let mut p = match parse(&body, kind, replica) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    if faults.added_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.added_latency_ms)).await;
    }
    let arrival = Instant::now();
    inc.metrics
        .lock()
        .expect("metrics lock")
        .record_arrival(arrival);
    let (tx, mut rx) = unbounded_channel();
    let salt = p.adapter.map_or(0, |a| u64::from(a) + 1);
    let prompt_len = p.prompt.len();
    let spec = SeqSpec {
        prompt_len,
        block_hashes: block_hashes(&p.prompt, salt),
        tokens: std::mem::take(&mut p.prompt),
        output_len: p.output_len,
        finish: p.finish,
        adapter: p.adapter,
        sink: tx,
        arrival,
        priority: p.priority,
    };
    if inc.engine.submit(spec).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is not running.",
            None,
            None,
        );
    }
    let id = match kind {
        ApiKind::Chat => format!("chatcmpl-{:032x}", fastrand::u128(..)),
        ApiKind::Completion => format!("cmpl-{:032x}", fastrand::u128(..)),
    };
    let created = created();
    if p.stream {
        let writer = ChunkWriter::new(kind, &id, created, &p.model);
        let body = SseBody::new(
            rx,
            writer,
            p.seed,
            prompt_len,
            p.include_usage,
            faults.drop_stream_after_tokens,
        );
        let mut resp = Response::new(
            body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed(),
        );
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        return resp;
    }
    let mut generated = 0;
    let mut finish = None;
    let mut cached_tokens = 0;
    while let Some(ev) = rx.recv().await {
        generated = ev.generated;
        cached_tokens = ev.cached_tokens;
        if ev.finish.is_some() {
            finish = ev.finish;
            break;
        }
    }
    let Some(finish) = finish else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine stopped before the request finished.",
            None,
            None,
        );
    };
    let text = generated_text(p.seed, generated);
    let usage = Usage {
        prompt_tokens: prompt_len,
        completion_tokens: generated as usize,
        cached_tokens,
    }
    .to_json();
    let choice = match kind {
        ApiKind::Chat => serde_json::json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": finish.as_str(),
        }),
        ApiKind::Completion => serde_json::json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str(),
        }),
    };
    let object = if kind == ApiKind::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "id": id, "object": object, "created": created, "model": p.model,
            "choices": [choice], "usage": usage,
        }),
    )
}

/// Largest body `/sim/oracle/cached` reads: a long prompt, not an upload.
const ORACLE_MAX_BODY: usize = 16 << 20;

/// `POST /sim/oracle/cached` with a completions or chat request body: how many leading blocks
/// of its prompt every replica of the fleet holds now, as `ADDRESS=BLOCKS,...` (see
/// [`crate::oracle`]). The prompt is parsed and hashed exactly as serving it would.
pub async fn oracle_cached(inc: &Incarnation, req: Request<Incoming>) -> Response<SimBody> {
    let body = match http_body_util::Limited::new(req.into_body(), ORACLE_MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("failed to read body (at most {ORACLE_MAX_BODY} bytes): {e}"),
                None,
                None,
            )
        }
    };
    let kind = match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.get("messages").is_some() => ApiKind::Chat,
        _ => ApiKind::Completion,
    };
    let p = match parse(&body, kind, &inc.replica) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let salt = p.adapter.map_or(0, |a| u64::from(a) + 1);
    let text = inc.replica.truth.cached(&block_hashes(&p.prompt, salt));
    crate::api::full(StatusCode::OK, "text/plain", bytes::Bytes::from(text))
}
