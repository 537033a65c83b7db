//! Bodies on the request path. Both directions stream frame by frame: nothing here buffers a
//! whole body. [`RequestBody`] enforces the route's size limit; [`UpstreamBody`] enforces the idle
//! timeout between chunks and a gRPC call's deadline, and finishes the request's bookkeeping
//! when the stream ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::h1_codec::RawHeaders;
use crate::models::ModelStreamMetrics;
use crate::record::Finish;
use crate::upstream_h1::InlineConn;
use prometheus_client::metrics::counter::Counter;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_request_body`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body exceeds max_request_body")
    }
}
impl std::error::Error for BodyTooLarge {}

/// No body bytes arrived from the upstream for `idle_timeout`.
#[derive(Debug)]
pub struct IdleTimeout;

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream stream idle timeout")
    }
}
impl std::error::Error for IdleTimeout {}

/// A client's request body as the listener hands it over: hyper's stream, or a small body the
/// HTTP/1 fast path (`h1_server.rs`) read whole with the head.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    Full(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Hyper(i) => Pin::new(i).poll_frame(cx),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(i) => i.is_end_stream(),
            Self::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(i) => i.size_hint(),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A client's body as it reaches the request path: still streaming, or already read (to route
/// on the model it names).
#[derive(Debug)]
pub enum InBody {
    Incoming(ClientBody),
    Buffered(Bytes),
}

impl InBody {
    /// The streaming body; only called on the `Incoming` variant.
    pub fn into_incoming(self) -> ClientBody {
        match self {
            Self::Incoming(i) => i,
            Self::Buffered(_) => unreachable!("buffered bodies are handled before streaming"),
        }
    }
}

/// A client's request body on its way upstream: streamed (and cut off at the route's limit),
/// or held in memory so it can be sent again on a retry.
#[derive(Debug)]
pub enum RequestBody {
    Stream { inner: ClientBody, remaining: u64 },
    Buffered(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64) -> Self {
        Self::Stream {
            inner,
            remaining: limit,
        }
    }

    /// Read the whole body (at most `limit` bytes) so it can be replayed. Only for bodies the
    /// retry policy allows to keep (small and of known size).
    pub async fn buffer(inner: ClientBody, limit: u64) -> Result<Self, BoxError> {
        use http_body_util::BodyExt;
        let bytes = Self::new(inner, limit).collect().await?.to_bytes();
        Ok(Self::Buffered(Some(bytes)))
    }

    /// The whole body, when it was buffered.
    pub fn buffered(&self) -> Option<Bytes> {
        match self {
            Self::Buffered(b) => Some(b.clone().unwrap_or_default()),
            Self::Stream { .. } => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// A fresh copy of a buffered body (cheap: `Bytes` is reference-counted).
    pub fn replay(&self) -> Self {
        match self {
            Self::Buffered(b) => Self::Buffered(b.clone()),
            Self::Stream { .. } => unreachable!("only buffered bodies are replayed"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream { inner, remaining } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                Poll::Ready(match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                            *remaining -= len;
                        }
                        Some(Ok(frame))
                    }
                    Some(Err(e)) => Some(Err(Box::new(e))),
                    None => None,
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// What a client receives: a gateway-made body or a streamed upstream body.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }

    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(u) => Pin::new(u.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Upstream(u) => u.inner_size_hint(),
        }
    }
}

/// An upstream response body passed through frame by frame.
///
/// The idle timer is only armed when the upstream has nothing ready, and on each data frame we
/// just note the time: a stream of many small SSE events costs one clock read per event, not a
/// timer reset.
pub struct UpstreamBody {
    /// The pooled client's body (HTTP/2); `None` when the body comes off `upstream`.
    inner: Option<Incoming>,
    idle_timeout: Duration,
    last_activity: Instant,
    deadline: Option<Instant>,
    grpc: bool,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
    finish: Finish,
    /// The HTTP/1 connection this body arrives on, when the request path drives it inline.
    upstream: Option<InlineConn>,
    /// For streamed (SSE) responses: request start, whether a chunk was seen, and the
    /// first-chunk and chunk-gap histograms.
    stream: Option<StreamTiming>,
    /// For requests whose model the gateway read: usage tokens and per-model stream metrics.
    usage: Option<Box<InferenceUsage>>,
    /// The response headers, raw, for the HTTP/1 writer (the response's map is then empty).
    raw_head: Option<Box<RawHeaders>>,
}

/// Usage accounting of one inference response, as its chunks pass: the bounded tail where
/// `usage` is looked for at the end, and for streams the per-model/pool/endpoint timing.
pub struct InferenceUsage {
    /// Usage counters (prompt, completion) for the route, target pool and model.
    tokens: (Counter, Counter),
    tail: switchyard_inference::UsageTail,
    stream: Option<TokenStream>,
}

/// Timing of a streamed inference response.
struct TokenStream {
    metrics: ModelStreamMetrics,
    start: Instant,
    seen_chunk: bool,
    /// Chunks carrying generated text: first and last arrival, and how many events.
    first_text: Option<Instant>,
    last_text: Option<Instant>,
    text_events: u64,
}

impl InferenceUsage {
    /// A non-streamed (JSON) response: usage counters only.
    pub fn json(tokens: (Counter, Counter)) -> Self {
        Self {
            tokens,
            tail: Default::default(),
            stream: None,
        }
    }

    /// A streamed (SSE) response that started (request headers read) at `start`.
    pub fn streamed(
        tokens: (Counter, Counter),
        metrics: ModelStreamMetrics,
        start: Instant,
    ) -> Self {
        Self {
            tokens,
            tail: Default::default(),
            stream: Some(TokenStream {
                metrics,
                start,
                seen_chunk: false,
                first_text: None,
                last_text: None,
                text_events: 0,
            }),
        }
    }

    fn on_chunk(&mut self, data: &[u8], now: Instant) {
        self.tail.push(data);
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if !s.seen_chunk {
            s.seen_chunk = true;
            s.metrics
                .ttft
                .observe(now.duration_since(s.start).as_secs_f64());
        }
        let events = switchyard_inference::token_events(data);
        if events > 0 {
            if let Some(prev) = s.last_text {
                s.metrics
                    .itl
                    .observe(now.duration_since(prev).as_secs_f64());
            }
            s.first_text.get_or_insert(now);
            s.last_text = Some(now);
            s.text_events += events;
        }
    }

    /// The body ended cleanly: count the usage it reported, and return it.
    fn on_end(&mut self) -> Option<switchyard_inference::Usage> {
        let usage = self.tail.usage();
        if let Some(u) = usage {
            self.tokens.0.inc_by(u.prompt_tokens);
            self.tokens.1.inc_by(u.completion_tokens);
        }
        let Some(s) = self.stream.as_ref() else {
            return usage;
        };
        let output = usage.map_or(s.text_events, |u| u.completion_tokens);
        if output == 0 {
            return usage;
        }
        s.metrics.output_tokens.observe(output as f64);
        if let (Some(first), Some(last)) = (s.first_text, s.last_text) {
            let decode = last.duration_since(first).as_secs_f64();
            if output > 1 && decode > 0.0 {
                s.metrics
                    .tokens_per_second
                    .observe((output - 1) as f64 / decode);
            }
        }
        usage
    }
}

/// Per-chunk timing of a streamed response, measured as the bytes pass (no buffering).
pub struct StreamTiming {
    pub start: Instant,
    pub first_chunk: prometheus_client::metrics::histogram::Histogram,
    pub chunk_gap: prometheus_client::metrics::histogram::Histogram,
    /// Counters for the `usage` an OpenAI-style stream reports: (prompt, completion).
    pub tokens: Option<(
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    )>,
    seen: bool,
}

/// Find an OpenAI `usage` object in one chunk of an SSE stream and return (prompt, completion)
/// tokens. Only chunks that mention `"completion_tokens"` are parsed (normally just the last
/// one), so the per-token path is a substring scan.
pub fn usage_in_chunk(chunk: &[u8]) -> Option<(u64, u64)> {
    const NEEDLE: &[u8] = b"\"completion_tokens\"";
    if !chunk.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    chunk
        .split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|json| serde_json::from_slice::<serde_json::Value>(json.trim_ascii()).ok())
        .find_map(|v| {
            let u = v.get("usage")?;
            Some((
                u.get("prompt_tokens")?.as_u64()?,
                u.get("completion_tokens")?.as_u64()?,
            ))
        })
}

impl StreamTiming {
    pub fn new(
        start: Instant,
        first_chunk: prometheus_client::metrics::histogram::Histogram,
        chunk_gap: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        Self {
            start,
            first_chunk,
            chunk_gap,
            tokens: None,
            seen: false,
        }
    }
}

impl UpstreamBody {
    pub fn new(
        inner: Option<Incoming>,
        idle_timeout: Duration,
        deadline: Option<Instant>,
        grpc: bool,
        finish: Finish,
    ) -> Self {
        Self {
            inner,
            idle_timeout,
            last_activity: Instant::now(),
            deadline,
            grpc,
            timer: None,
            done: false,
            finish,
            upstream: None,
            stream: None,
            usage: None,
            raw_head: None,
        }
    }

    /// Count the usage (and, when streamed, time the tokens) of an inference response.
    pub fn set_usage(&mut self, usage: InferenceUsage) {
        self.usage = Some(Box::new(usage));
    }

    /// Time the chunks of a streamed response.
    pub fn set_stream_timing(&mut self, timing: StreamTiming) {
        self.stream = Some(timing);
    }

    /// Read the body off `conn` (an inline HTTP/1 connection), and return the connection to its
    /// pool when the body ends.
    pub fn set_connection(&mut self, conn: InlineConn) {
        self.upstream = Some(conn);
    }

    /// Headers kept raw for the HTTP/1 writer, which takes them before the body.
    pub fn set_raw_head(&mut self, raw: Box<RawHeaders>) {
        self.raw_head = Some(raw);
    }

    pub fn take_raw_head(&mut self) -> Option<Box<RawHeaders>> {
        self.raw_head.take()
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match (self.inner.as_mut(), self.upstream.as_mut()) {
            (Some(inner), _) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            (None, Some(up)) => up.poll_frame(cx).map_err(Into::into),
            (None, None) => Poll::Ready(None),
        }
    }

    fn inner_is_end_stream(&self) -> bool {
        match (&self.inner, &self.upstream) {
            (Some(inner), _) => inner.is_end_stream(),
            (None, Some(up)) => up.is_end_stream(),
            (None, None) => true,
        }
    }

    fn inner_size_hint(&self) -> SizeHint {
        match (&self.inner, &self.upstream) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(up)) => up.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }

    fn next_wake(&self) -> Instant {
        let idle = self.last_activity + self.idle_timeout;
        match self.deadline {
            Some(d) if d < idle => d,
            _ => idle,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner_is_end_stream()
    }

    /// The gRPC deadline passed mid-stream: end the call the way a gRPC server would.
    fn deadline_trailers() -> Frame<Bytes> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static("deadline exceeded at gateway"),
        );
        Frame::trailers(trailers)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body the server never polled to its end (HEAD, 204, 304, or the last frame of a
        // sized body, after which hyper stops polling) still leaves a reusable connection, and
        // a complete response to account for.
        if !self.done && self.inner_is_end_stream() {
            if let Some(up) = self.upstream.take() {
                up.release();
            }
            if let Some(u) = self.usage.take().and_then(|mut u| u.on_end()) {
                self.finish.set_usage(u.prompt_tokens, u.completion_tokens);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_inner(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.finish.add_bytes(data.len() as u64);
                    let now = Instant::now();
                    if let Some(t) = this.stream.as_mut() {
                        if let Some((prompt, completion)) = t.tokens.as_ref() {
                            if let Some((p, c)) = usage_in_chunk(data) {
                                prompt.inc_by(p);
                                completion.inc_by(c);
                            }
                        }
                        if t.seen {
                            t.chunk_gap
                                .observe(now.duration_since(this.last_activity).as_secs_f64());
                        } else {
                            t.seen = true;
                            t.first_chunk
                                .observe(now.duration_since(t.start).as_secs_f64());
                            this.finish.first_chunk();
                        }
                    }
                    if let Some(u) = this.usage.as_mut() {
                        u.on_chunk(data, now);
                    }
                    this.last_activity = now;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.upstream = None;
                this.finish.fail("upstream_reset");
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                this.done = true;
                if let Some(u) = this.usage.take().and_then(|mut u| u.on_end()) {
                    this.finish.set_usage(u.prompt_tokens, u.completion_tokens);
                }
                this.finish.complete();
                if let Some(up) = this.upstream.take() {
                    up.release();
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            let wake = this.next_wake();
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if this.deadline.is_some_and(|d| now >= d) {
                this.done = true;
                this.finish.fail("deadline_exceeded");
                if this.grpc {
                    return Poll::Ready(Some(Ok(Self::deadline_trailers())));
                }
                return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
            }
            if now >= this.last_activity + this.idle_timeout {
                this.done = true;
                this.finish.fail("idle_timeout");
                return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        UpstreamBody::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner_size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::{usage_in_chunk, InferenceUsage};
    use crate::models::ModelStreamMetrics;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use std::time::Duration;
    use tokio::time::Instant;

    fn histograms() -> ModelStreamMetrics {
        let h = || Histogram::new([0.001, 1.0, 10.0, 100.0].into_iter());
        ModelStreamMetrics {
            ttft: h(),
            itl: h(),
            output_tokens: h(),
            tokens_per_second: h(),
        }
    }

    /// (count, sum) of a histogram, through its text encoding.
    fn observed(h: &Histogram) -> (u64, f64) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |suffix: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("h_{suffix} ")))
                .unwrap()
                .parse()
                .unwrap()
        };
        (value("count") as u64, value("sum"))
    }

    const ROLE: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    const TOKEN: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    const END: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";

    #[test]
    fn stream_usage_and_timing() {
        let tokens = (Counter::default(), Counter::default());
        let m = histograms();
        let t0 = Instant::now();
        let mut u = InferenceUsage::streamed(tokens.clone(), m.clone(), t0);
        let ms = |n| t0 + Duration::from_millis(n);
        u.on_chunk(ROLE, ms(100));
        u.on_chunk(TOKEN, ms(100));
        u.on_chunk(TOKEN, ms(120));
        u.on_chunk(TOKEN, ms(140));
        // The usage event split over two frames is still found at the end.
        u.on_chunk(&END[..30], ms(141));
        u.on_chunk(&END[30..], ms(141));
        u.on_end();
        assert_eq!((tokens.0.get(), tokens.1.get()), (5, 3));
        assert_eq!(observed(&m.ttft), (1, 0.1));
        let (n, sum) = observed(&m.itl);
        assert_eq!(n, 2);
        assert!((sum - 0.04).abs() < 1e-9);
        assert_eq!(observed(&m.output_tokens), (1, 3.0));
        // (3 - 1) tokens over 40 ms.
        let (n, rate) = observed(&m.tokens_per_second);
        assert_eq!(n, 1);
        assert!((rate - 50.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn stream_without_usage_counts_text_events() {
        let tokens = (Counter::default(), Counter::default());
        let m = histograms();
        let t0 = Instant::now();
        let mut u = InferenceUsage::streamed(tokens.clone(), m.clone(), t0);
        for i in 0..4 {
            u.on_chunk(TOKEN, t0 + Duration::from_millis(10 * i));
        }
        u.on_chunk(b"data: [DONE]\n\n", t0 + Duration::from_millis(50));
        u.on_end();
        assert_eq!((tokens.0.get(), tokens.1.get()), (0, 0));
        assert_eq!(observed(&m.output_tokens), (1, 4.0));
    }

    #[test]
    fn json_usage_from_the_tail() {
        let tokens = (Counter::default(), Counter::default());
        let mut u = InferenceUsage::json(tokens.clone());
        let now = Instant::now();
        u.on_chunk(b"{\"choices\":[{\"message\":{\"content\":\"", now);
        u.on_chunk(&[b'a'; 200_000], now);
        u.on_chunk(
            b"\"}}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}",
            now,
        );
        assert!(u.tail.len() <= switchyard_inference::USAGE_TAIL_BYTES);
        let usage = u.on_end().expect("usage returned for the span");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 2));
        assert_eq!((tokens.0.get(), tokens.1.get()), (9, 2));
    }

    #[test]
    fn finds_usage_only_in_the_usage_chunk() {
        let token = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(usage_in_chunk(token), None);
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage_in_chunk(usage), Some((12, 7)));
        assert_eq!(usage_in_chunk(b"data: {\"completion_tokens\": oops"), None);
    }
}
