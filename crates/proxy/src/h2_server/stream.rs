//! One stream's work: the request through the pipeline, then the response out as frames.
//!
//! Each stream is a future the connection's task polls (no task per stream): it ends when the
//! response is sent, or at once when the stream is reset, which drops the pipeline's future
//! and with it the upstream request, as a cancelled request should.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;

use super::core::{reset_stream, Shared, OUT_HIGH};
use super::frame::{self, Reason};
use super::hpack;
use crate::body::{ClientBody, ResponseBody};
use crate::connection_idle::InFlight;
use crate::gateway::GatewayHandle;
use crate::pipeline::{self, ConnContext, Downstream};

/// A stream's future, stopped early when the stream is reset.
///
/// Two phases, so that a long stream does not keep the first one's state: the pipeline's
/// future (boxed: ~2 KiB, most of it room for stages long done) until the response head, then
/// only the body and the bytes waiting for window (issue 19: memory per stream).
pub struct StreamTask<'a> {
    pub id: u32,
    shared: Arc<Shared>,
    phase: Phase<'a>,
    alt_svc: Option<&'a HeaderValue>,
    /// Keeps the connection from counting as idle until the response is sent.
    in_flight: Option<InFlight>,
}

type Pipeline<'a> = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + 'a>>;

enum Phase<'a> {
    Pipeline {
        work: Pipeline<'a>,
        head: bool,
    },
    Body {
        body: ResponseBody,
        /// Data taken from the body, not yet sent for want of window; and whether it ends
        /// the stream.
        pending: Bytes,
        last: bool,
    },
}

impl Future for StreamTask<'_> {
    type Output = u32;

    /// A panic in one request's handling resets its stream and leaves the connection's other
    /// streams running, as a task per stream would (hyper's server spawned one).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let this = self.get_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.poll_stream(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!(
                    stream = this.id,
                    "handling a request panicked; resetting its HTTP/2 stream"
                );
                reset_stream(&mut this.shared.lock(), this.id, Reason::INTERNAL_ERROR);
                this.done()
            }
        }
    }
}

impl StreamTask<'_> {
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<u32> {
        let this = self;
        let id = this.id;
        {
            let mut core = this.shared.lock();
            let closed = core.closed;
            match core.streams.get_mut(&id) {
                Some(s) if !s.reset && !closed => match &s.task {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.task = Some(cx.waker().clone()),
                },
                _ => return Poll::Ready(id),
            }
        }
        loop {
            match &mut this.phase {
                Phase::Pipeline { work, head } => {
                    let Poll::Ready(resp) = work.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let (mut parts, body) = resp.into_parts();
                    if let Some(v) = this.alt_svc {
                        parts.headers.insert(http::header::ALT_SVC, v.clone());
                    }
                    prepare_head(&mut parts, &body, *head);
                    let end = body.is_end_stream();
                    send_head(&this.shared, id, parts.status, &parts.headers, end);
                    if end {
                        return this.done();
                    }
                    this.phase = Phase::Body {
                        body,
                        pending: Bytes::new(),
                        last: false,
                    };
                }
                Phase::Body {
                    body,
                    pending,
                    last,
                } => {
                    if !pending.is_empty() || *last {
                        match poll_send(&this.shared, id, pending, *last, cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(false) => return Poll::Ready(id),
                            Poll::Ready(true) if *last => return this.done(),
                            Poll::Ready(true) => {}
                        }
                    }
                    match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                        None => *last = true,
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                *last = body.is_end_stream();
                                *pending = data;
                            }
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    send_trailers(&this.shared, id, &trailers);
                                    return this.done();
                                }
                            }
                        },
                        Some(Err(e)) => {
                            // The upstream broke off mid-body: the client must not take a
                            // truncated body for a whole one, so the stream is reset rather
                            // than finished.
                            tracing::debug!(error = %e, "upstream body failed; resetting HTTP/2 stream");
                            reset_stream(&mut this.shared.lock(), id, Reason::INTERNAL_ERROR);
                            return Poll::Ready(id);
                        }
                    }
                }
            }
        }
    }

    fn done(&mut self) -> Poll<u32> {
        self.in_flight = None;
        Poll::Ready(self.id)
    }
}

/// What a stream needs from its connection.
pub struct StreamCx<'a> {
    pub handle: &'a GatewayHandle,
    pub cx: &'a ConnContext,
    pub alt_svc: Option<&'a HeaderValue>,
}

pub fn start<'a>(
    shared: &Arc<Shared>,
    id: u32,
    req: Request<ClientBody>,
    scx: StreamCx<'a>,
    in_flight: InFlight,
) -> StreamTask<'a> {
    let head = req.method() == http::Method::HEAD;
    let work = Box::pin(pipeline::handle(scx.handle, scx.cx, req, Downstream::Hyper));
    StreamTask {
        id,
        shared: shared.clone(),
        phase: Phase::Pipeline { work, head },
        alt_svc: scx.alt_svc,
        in_flight: Some(in_flight),
    }
}

/// What an HTTP/2 response head must not carry, and what hyper's server added: `date`, and a
/// `content-length` when the body's length is known.
fn prepare_head(parts: &mut http::response::Parts, body: &ResponseBody, head: bool) {
    let h = &mut parts.headers;
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE, TE] {
        if h.contains_key(&name) {
            h.remove(&name);
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        if h.contains_key(name) {
            h.remove(name);
        }
    }
    if !h.contains_key(DATE) {
        let date = crate::h1_server::date_now();
        if let Ok(v) = HeaderValue::from_bytes(&date) {
            h.insert(DATE, v);
        }
    }
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A HEAD response's length is the resource's, which an empty body does not tell.
    if !bodiless && !head && !h.contains_key(CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

fn send_head(shared: &Shared, id: u32, status: StatusCode, headers: &http::HeaderMap, end: bool) {
    let mut block = BytesMut::with_capacity(256);
    hpack::encode_response(&mut block, status, headers);
    send_block(shared, id, &block, end);
}

/// A header block (head or trailers) on a stream that is still open.
fn send_block(shared: &Shared, id: u32, block: &[u8], end: bool) {
    let mut core = shared.lock();
    if core.streams.get(&id).is_none_or(|s| s.reset) {
        return;
    }
    let max = core.peer_max_frame;
    frame::put_header_block(&mut core.out, id, block, end, max);
    core.wake_conn();
}

/// An answer the connection gives itself, without the pipeline (a head over the limits).
pub fn answer(out: &mut BytesMut, id: u32, status: StatusCode, max_frame: usize) {
    let mut headers = http::HeaderMap::new();
    let date = crate::h1_server::date_now();
    if let Ok(v) = HeaderValue::from_bytes(&date) {
        headers.insert(DATE, v);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    let mut block = BytesMut::with_capacity(64);
    hpack::encode_response(&mut block, status, &headers);
    frame::put_header_block(out, id, &block, true, max_frame);
}

fn send_trailers(shared: &Shared, id: u32, trailers: &http::HeaderMap) {
    let mut block = BytesMut::with_capacity(128);
    hpack::encode_headers(&mut block, trailers);
    send_block(shared, id, &block, true);
}

/// Sends `data` as DATA frames as the windows and the output buffer allow (what is sent is
/// taken off `data`); `Ready(false)` when the stream or the connection went away first.
fn poll_send(
    shared: &Shared,
    id: u32,
    data: &mut Bytes,
    last: bool,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    let mut core = shared.lock();
    let core = &mut *core;
    if core.closed {
        return Poll::Ready(false);
    }
    let Some(s) = core.streams.get_mut(&id).filter(|s| !s.reset) else {
        return Poll::Ready(false);
    };
    if data.is_empty() {
        // An empty DATA frame ending the stream needs no window.
        frame::put_data(&mut core.out, id, &[], last);
        core.wake_conn();
        return Poll::Ready(true);
    }
    while !data.is_empty() {
        let room = s.send_window.min(core.conn_send).max(0) as usize;
        let n = data.len().min(room).min(core.peer_max_frame);
        if n == 0 || core.out.len() >= OUT_HIGH {
            // Woken by a WINDOW_UPDATE (stream or connection) or by the output draining.
            s.task = Some(cx.waker().clone());
            core.blocked.push(cx.waker().clone());
            core.wake_conn();
            return Poll::Pending;
        }
        s.send_window -= n as i64;
        core.conn_send -= n as i64;
        let end = last && n == data.len();
        frame::put_data(&mut core.out, id, &data[..n], end);
        data.advance(n);
    }
    core.wake_conn();
    Poll::Ready(true)
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::h2_server::core::{Core, Stream};
    use crate::h2_server::frame::{Head, HEADER_LEN};

    fn task(shared: &Arc<Shared>, id: u32, work: Pipeline<'static>) -> StreamTask<'static> {
        shared
            .lock()
            .streams
            .insert(id, Stream::new(65_535, 65_535, true, None));
        StreamTask {
            id,
            shared: shared.clone(),
            phase: Phase::Pipeline { work, head: false },
            alt_svc: None,
            in_flight: None,
        }
    }

    /// The frames queued for the socket, as (header, payload).
    fn frames(out: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut rest = out;
        let mut all = Vec::new();
        while rest.len() >= HEADER_LEN {
            let head = Head::parse(rest);
            let end = HEADER_LEN + head.len;
            all.push((head, rest[HEADER_LEN..end].to_vec()));
            rest = &rest[end..];
        }
        all
    }

    #[test]
    fn a_panicking_handler_resets_its_stream_and_spares_the_others() {
        let shared = Shared::new(Core::new(BytesMut::new(), 65_535));
        let mut cx = Context::from_waker(Waker::noop());
        let mut panics = task(&shared, 1, Box::pin(async { panic!("a handler's bug") }));
        let mut answers = task(
            &shared,
            3,
            Box::pin(async { Response::new(ResponseBody::empty()) }),
        );

        assert_eq!(Pin::new(&mut panics).poll(&mut cx), Poll::Ready(1));
        assert_eq!(Pin::new(&mut answers).poll(&mut cx), Poll::Ready(3));

        let core = shared.lock();
        assert!(core.streams[&1].reset);
        assert!(!core.streams[&3].reset);
        let sent = frames(&core.out);
        assert_eq!(sent.len(), 2, "{sent:?}");
        let (rst, reason) = &sent[0];
        assert_eq!((rst.kind, rst.stream), (frame::RST_STREAM, 1));
        assert_eq!(reason[..], Reason::INTERNAL_ERROR.0.to_be_bytes());
        let (headers, _) = &sent[1];
        assert_eq!((headers.kind, headers.stream), (frame::HEADERS, 3));
        assert!(headers.has(frame::END_STREAM));
    }
}
