//! What a client receives: a body the gateway made, or an upstream body passed through frame by
//! frame with the idle timeout between chunks and a gRPC call's deadline, finishing the request's
//! bookkeeping ([`Finish`]) when the stream ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::accounting::Accounting;
use super::request::BoxError;
use crate::finish::Finish;
use crate::h1_codec::RawHeaders;
use crate::upstream::InlineConn;
use crate::upstream::UpstreamIncoming;

/// No body bytes arrived from the upstream for `idle_timeout`.
#[derive(Debug)]
pub struct IdleTimeout;

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream stream idle timeout")
    }
}
impl std::error::Error for IdleTimeout {}

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
    /// The body of an HTTP/2 or HTTP/3 response; `None` when the body comes off `upstream`.
    inner: Option<UpstreamIncoming>,
    idle_timeout: Duration,
    last_activity: Instant,
    deadline: Option<Instant>,
    grpc: bool,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
    finish: Finish,
    /// The HTTP/1 connection this body arrives on, when the request path drives it inline.
    upstream: Option<InlineConn>,
    /// Usage and stream timing, for responses that are measured as they pass.
    accounting: Option<Box<Accounting>>,
    /// The response headers, raw, for the HTTP/1 writer (the response's map is then empty).
    raw_head: Option<Box<RawHeaders>>,
}

impl UpstreamBody {
    pub fn new(
        inner: Option<UpstreamIncoming>,
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
            accounting: None,
            raw_head: None,
        }
    }

    /// Read the usage and time the stream of this response as it passes.
    pub fn set_accounting(&mut self, accounting: Accounting) {
        self.accounting = Some(Box::new(accounting));
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

    pub(super) fn inner_size_hint(&self) -> SizeHint {
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

    fn end_accounting(&mut self) {
        if let Some(u) = self.accounting.take().and_then(|mut a| a.on_end()) {
            self.finish.set_usage(u.prompt_tokens, u.completion_tokens);
        }
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
            self.end_accounting();
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
                    if let Some(a) = this.accounting.as_mut() {
                        if a.on_chunk(data, now) {
                            this.finish.first_chunk();
                        }
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
                this.end_accounting();
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
