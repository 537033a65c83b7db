//! Sending one completion and timing it: streamed (the default), or with `stream: false`, where
//! the whole reply arrives as one JSON document and its first token is seen when the reply is.
//!
//! The client is hyper-util's pooled client over plain TCP with `TCP_NODELAY` on every socket
//! (Nagle would hold small request writes back by up to 40 ms and corrupt TTFT), HTTP/1.1
//! keep-alive by default or HTTP/2 with prior knowledge. Each body frame is timestamped once,
//! as it arrives, and fed to the incremental SSE scanner; the per-token path does no JSON parse
//! and no allocation beyond pushing the inter-token gap.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;

use crate::secure::{Failed, ReplyBody};
use crate::sse::{self, Chunk, SseScanner};
use switchyard_sim::prompt_tokenizer::PromptTokenizer;

use crate::workload::{Input, Message, RequestPlan, Role};
use crate::Endpoint;

/// The HTTP client used for every request of a run: hyper's pool for `http://` targets, one
/// multiplexed TLS or QUIC connection per target for `https://` ones.
pub enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Secure(crate::secure::Secure),
}

impl HttpClient {
    /// The client a run's settings ask for.
    pub fn for_spec(spec: &crate::LoadSpec) -> anyhow::Result<Self> {
        let secure = spec.targets.iter().any(|t| t.url.starts_with("https://"));
        if !secure {
            anyhow::ensure!(!spec.http3, "--http3 needs https:// targets");
            let connect = spec.timeout.min(Duration::from_secs(10));
            return Ok(Self::Plain(build_client(spec.http2, connect)));
        }
        anyhow::ensure!(
            spec.http2 || spec.http3,
            "https:// targets are spoken to over --http2 or --http3"
        );
        let ca = spec
            .cacert
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("https:// targets need --cacert"))?;
        Ok(Self::Secure(crate::secure::Secure::new(spec.http3, ca)?))
    }

    async fn request(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<ReplyBody>, Failed> {
        match self {
            Self::Plain(c) => c
                .request(req)
                .await
                .map(|r| r.map(ReplyBody::Hyper))
                .map_err(|e| Failed {
                    connect: e.is_connect(),
                }),
            Self::Secure(s) => s.request(req).await,
        }
    }
}

/// Builds the client: keep-alive pool, `TCP_NODELAY`, h2c prior knowledge when `http2`.
pub fn build_client(http2: bool, connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(true);
    connector.set_connect_timeout(Some(connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if http2 {
        builder.http2_only(true).http2_adaptive_window(true);
    }
    builder.build(connector)
}

/// Why a request failed. The report counts failures by [`ErrorKind::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// TCP connect failed (refused, unreachable, connect timeout).
    Connect,
    /// The connection failed after connecting, before a response head arrived.
    ConnectionClosed,
    /// The server answered with a non-2xx status.
    Status(u16),
    /// The request did not finish within the per-request timeout.
    Timeout,
    /// The body ended or errored before `data: [DONE]`.
    StreamBroken,
    /// The stream carried data that is neither JSON nor `[DONE]`.
    InvalidSse,
    /// The stream carried an `{"error": ...}` event.
    StreamError,
    /// The stream completed without a single generated token.
    EmptyStream,
}

impl ErrorKind {
    /// Stable label used in tables and JSON, e.g. `http_503`.
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::ConnectionClosed => "connection_closed".into(),
            ErrorKind::Status(s) => format!("http_{s}"),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::StreamBroken => "stream_broken".into(),
            ErrorKind::InvalidSse => "invalid_sse".into(),
            ErrorKind::StreamError => "stream_error".into(),
            ErrorKind::EmptyStream => "empty_stream".into(),
        }
    }
}

/// Timings of one request. Fields other than `error` and `e2e` are meaningful on success.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// `None` on success.
    pub error: Option<ErrorKind>,
    /// Send to first token chunk.
    pub ttft: Option<Duration>,
    /// Send to end of stream (`[DONE]`), or to the failure.
    pub e2e: Duration,
    /// Gaps between consecutive token chunks, in whole microseconds.
    pub itl_us: Vec<u32>,
    /// Token chunks seen.
    pub chunks: u32,
    /// `usage.completion_tokens` if reported, else `chunks`.
    pub output_tokens: u32,
    /// `usage.prompt_tokens` if reported.
    pub prompt_tokens: Option<u32>,
    /// The generated text, when it was asked for.
    pub reply: Option<String>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    ignore_eos: bool,
}

/// A completions prompt: text, or the token ids it tokenizes to.
#[derive(Serialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(&'a str),
    Ids(Vec<u32>),
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    prompt: Prompt<'a>,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    ignore_eos: bool,
}

/// The JSON body for `plan` on `endpoint` (`ignore_eos`; streamed with usage included unless
/// `stream` is false, as servers refuse `stream_options` without `stream`). With `ids`, a
/// completions prompt goes as the token ids that tokenizer makes of it (as text if it refuses).
pub fn request_body(
    endpoint: Endpoint,
    plan: &RequestPlan,
    model: Option<&str>,
    stream: bool,
    ids: Option<&PromptTokenizer>,
) -> Bytes {
    let model = plan.model.as_deref().or(model);
    let so = || {
        stream.then_some(StreamOptions {
            include_usage: true,
        })
    };
    let v = match endpoint {
        Endpoint::Chat => {
            let messages = match &plan.input {
                Input::Text(t) => vec![WireMessage {
                    role: Role::User,
                    content: t,
                }],
                Input::Chat(m) => m
                    .iter()
                    .map(|m| WireMessage {
                        role: m.role,
                        content: &m.content,
                    })
                    .collect(),
            };
            serde_json::to_vec(&ChatBody {
                model,
                messages,
                max_tokens: plan.max_tokens,
                stream,
                stream_options: so(),
                ignore_eos: true,
            })
        }
        Endpoint::Completions => {
            let joined;
            let prompt = match &plan.input {
                Input::Text(t) => t.as_str(),
                Input::Chat(m) => {
                    joined = join_messages(m);
                    joined.as_str()
                }
            };
            let prompt = match ids.and_then(|t| t.encode(prompt)) {
                Some(ids) => Prompt::Ids(ids),
                None => Prompt::Text(prompt),
            };
            serde_json::to_vec(&CompletionBody {
                model,
                prompt,
                max_tokens: plan.max_tokens,
                stream,
                stream_options: so(),
                ignore_eos: true,
            })
        }
    };
    Bytes::from(v.unwrap_or_default())
}

fn join_messages(m: &[Message]) -> String {
    let mut s = String::new();
    for msg in m {
        if !s.is_empty() {
            s.push_str("\n\n");
        }
        s.push_str(&msg.content);
    }
    s
}

/// Sends `req` and times its stream (or, when `stream` is false, its one JSON reply), giving up
/// after `timeout`. Never returns an error: every failure is a [`Measurement`] with its
/// [`ErrorKind`]. `capture` keeps the reply text.
pub async fn execute(
    client: &HttpClient,
    req: http::Request<Full<Bytes>>,
    capture: bool,
    timeout: Duration,
    stream: bool,
) -> Measurement {
    let start = Instant::now();
    let run = async {
        if stream {
            self::stream(client, req, capture, start).await
        } else {
            whole(client, req, capture, start).await
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(m) => m,
        Err(_) => Measurement {
            error: Some(ErrorKind::Timeout),
            e2e: start.elapsed(),
            ..Default::default()
        },
    }
}

async fn stream(
    client: &HttpClient,
    req: http::Request<Full<Bytes>>,
    capture: bool,
    start: Instant,
) -> Measurement {
    let fail = |kind| Measurement {
        error: Some(kind),
        e2e: start.elapsed(),
        ..Default::default()
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(Failed { connect: true }) => return fail(ErrorKind::Connect),
        Err(Failed { connect: false }) => return fail(ErrorKind::ConnectionClosed),
    };
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        // Read the (small) error body so the connection can go back to the pool.
        while let Some(Ok(_)) = body.frame().await {}
        return fail(ErrorKind::Status(status.as_u16()));
    }
    let mut t = Tracker {
        capture,
        reply: capture.then(String::new),
        ..Tracker::default()
    };
    let mut scanner = SseScanner::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            t.error.get_or_insert(ErrorKind::StreamBroken);
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if t.done_at.is_some() || t.error.is_some() {
            continue; // drain to the end so the connection is reusable
        }
        let now = Instant::now();
        scanner.feed(&data, |payload| t.on_event(payload, now));
    }
    t.finish(start)
}

/// A `stream: false` request: the reply is one JSON document, so its first token arrives with
/// the rest of it (TTFT equals E2E, as the client experiences it).
async fn whole(
    client: &HttpClient,
    req: http::Request<Full<Bytes>>,
    capture: bool,
    start: Instant,
) -> Measurement {
    let fail = |kind| Measurement {
        error: Some(kind),
        e2e: start.elapsed(),
        ..Default::default()
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(Failed { connect: true }) => return fail(ErrorKind::Connect),
        Err(Failed { connect: false }) => return fail(ErrorKind::ConnectionClosed),
    };
    let status = resp.status();
    let body = resp.into_body().collect().await;
    if !status.is_success() {
        return fail(ErrorKind::Status(status.as_u16()));
    }
    let Ok(body) = body else {
        return fail(ErrorKind::StreamBroken);
    };
    let e2e = start.elapsed();
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        choices: Vec<serde_json::Value>,
        usage: Option<ReplyUsage>,
        error: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize, Clone, Copy)]
    struct ReplyUsage {
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
    }
    let reply: Reply = match serde_json::from_slice(&body.to_bytes()) {
        Ok(r) => r,
        Err(_) => return fail(ErrorKind::InvalidSse),
    };
    if reply.error.is_some() {
        return fail(ErrorKind::StreamError);
    }
    let text = reply.choices.first().and_then(|c| {
        c.pointer("/message/content")
            .or_else(|| c.get("text"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
    });
    let output_tokens = reply.usage.and_then(|u| u.completion_tokens).unwrap_or(0);
    if text.as_deref().unwrap_or("").is_empty() && output_tokens == 0 {
        return fail(ErrorKind::EmptyStream);
    }
    Measurement {
        error: None,
        ttft: Some(e2e),
        e2e,
        itl_us: Vec::new(),
        chunks: 1,
        output_tokens: output_tokens.max(1),
        prompt_tokens: reply.usage.and_then(|u| u.prompt_tokens),
        reply: if capture { text } else { None },
    }
}

/// Per-request state while the stream is read.
#[derive(Debug, Default)]
struct Tracker {
    capture: bool,
    first: Option<Instant>,
    last: Option<Instant>,
    done_at: Option<Instant>,
    itl_us: Vec<u32>,
    chunks: u32,
    usage: Option<sse::Usage>,
    error: Option<ErrorKind>,
    reply: Option<String>,
}

impl Tracker {
    fn on_event(&mut self, payload: &[u8], now: Instant) {
        if self.done_at.is_some() || self.error.is_some() {
            return;
        }
        match sse::classify(payload) {
            Chunk::Done => self.done_at = Some(now),
            Chunk::Invalid => self.error = Some(ErrorKind::InvalidSse),
            Chunk::Error => self.error = Some(ErrorKind::StreamError),
            Chunk::Json { token, usage } => {
                if let Some(u) = usage {
                    self.usage = Some(u);
                }
                if token {
                    match self.last {
                        None => self.first = Some(now),
                        Some(prev) => {
                            let gap =
                                now.duration_since(prev).as_micros().min(u32::MAX as u128) as u32;
                            self.itl_us.push(gap);
                        }
                    }
                    self.last = Some(now);
                    self.chunks += 1;
                    if self.capture {
                        if let (Some(r), Some(text)) =
                            (self.reply.as_mut(), sse::chunk_text(payload))
                        {
                            r.push_str(&text);
                        }
                    }
                }
            }
        }
    }

    fn finish(self, start: Instant) -> Measurement {
        let end = self.done_at.unwrap_or_else(Instant::now);
        let mut error = self.error;
        if error.is_none() && self.done_at.is_none() {
            error = Some(ErrorKind::StreamBroken);
        }
        if error.is_none() && self.first.is_none() {
            error = Some(ErrorKind::EmptyStream);
        }
        let output_tokens = self
            .usage
            .and_then(|u| u.completion_tokens)
            .unwrap_or(self.chunks);
        Measurement {
            error,
            ttft: self.first.map(|f| f.duration_since(start)),
            e2e: end.duration_since(start),
            itl_us: self.itl_us,
            chunks: self.chunks,
            output_tokens,
            prompt_tokens: self.usage.and_then(|u| u.prompt_tokens),
            reply: if error.is_none() { self.reply } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn plan(input: Input) -> RequestPlan {
        RequestPlan {
            target: 0,
            input,
            max_tokens: 7,
            model: None,
            headers: vec![],
            session: None,
        }
    }

    #[test]
    fn bodies_stream_with_usage_and_ignore_eos() {
        let b = request_body(
            Endpoint::Chat,
            &plan(Input::Text("hello".into())),
            Some("m"),
            true,
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":7,
                "stream":true,"stream_options":{"include_usage":true},"ignore_eos":true})
        );
        let chat = Input::Chat(vec![
            Message {
                role: Role::System,
                content: Arc::from("sys"),
            },
            Message {
                role: Role::User,
                content: Arc::from("q"),
            },
        ]);
        let mut p = plan(chat);
        p.model = Some("override".into());
        let v: serde_json::Value = serde_json::from_slice(&request_body(
            Endpoint::Completions,
            &p,
            Some("m"),
            true,
            None,
        ))
        .unwrap();
        assert_eq!(v["prompt"], "sys\n\nq");
        assert_eq!(v["model"], "override");
        // As token ids: the simulator's tokenizer's, in a JSON array.
        let sim = PromptTokenizer::Sim;
        let b = request_body(Endpoint::Completions, &p, None, true, Some(&sim));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let want = switchyard_sim::tokenizer::tokenize("sys\n\nq");
        assert!(!want.is_empty());
        assert_eq!(v["prompt"], serde_json::json!(want));
        let v: serde_json::Value = serde_json::from_slice(&request_body(
            Endpoint::Chat,
            &plan(Input::Text("x".into())),
            None,
            true,
            None,
        ))
        .unwrap();
        assert!(v.get("model").is_none());
        let v: serde_json::Value = serde_json::from_slice(&request_body(
            Endpoint::Chat,
            &plan(Input::Text("x".into())),
            None,
            false,
            None,
        ))
        .unwrap();
        assert_eq!(v["stream"], false);
        assert!(v.get("stream_options").is_none(), "{v}");
    }

    #[test]
    fn error_labels() {
        assert_eq!(ErrorKind::Status(503).label(), "http_503");
        assert_eq!(ErrorKind::StreamBroken.label(), "stream_broken");
    }
}
