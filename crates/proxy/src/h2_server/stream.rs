//! One stream's work: the request through the pipeline, then the response out as frames.
//!
//! Each stream is a future the connection's task polls (no task per stream): it ends when the
//! response is sent, or at once when the stream is reset, which drops the pipeline's future
//! and with it the upstream request, as a cancelled request should.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Request, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use super::core::{reset_stream, Shared, OUT_HIGH};
use super::frame::{self, Reason};
use super::hpack;
use crate::body::{ClientBody, ResponseBody};
use crate::connection_idle::InFlight;
use crate::gateway::GatewayHandle;
use crate::pipeline::{self, ConnContext, Downstream};

/// A stream's future, stopped early when the stream is reset.
pub struct StreamTask<'a> {
    pub id: u32,
    shared: Arc<Shared>,
    work: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

impl Future for StreamTask<'_> {
    type Output = u32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        {
            let mut core = self.shared.lock();
            let closed = core.closed;
            match core.streams.get_mut(&self.id) {
                Some(s) if !s.reset && !closed => match &s.task {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.task = Some(cx.waker().clone()),
                },
                _ => return Poll::Ready(self.id),
            }
        }
        let id = self.id;
        self.work.as_mut().poll(cx).map(|()| id)
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
    let work = Box::pin(respond(shared.clone(), id, req, scx, in_flight));
    StreamTask {
        id,
        shared: shared.clone(),
        work,
    }
}

async fn respond(
    shared: Arc<Shared>,
    id: u32,
    req: Request<ClientBody>,
    scx: StreamCx<'_>,
    in_flight: InFlight,
) {
    let head = req.method() == http::Method::HEAD;
    let resp = pipeline::handle(scx.handle, scx.cx, req, Downstream::Hyper).await;
    let (mut parts, mut body) = resp.into_parts();
    if let Some(v) = scx.alt_svc {
        parts.headers.insert(http::header::ALT_SVC, v.clone());
    }
    prepare_head(&mut parts, &body, head);
    let mut end = body.is_end_stream();
    send_head(&shared, id, parts.status, &parts.headers, end);
    while !end {
        match body.frame().await {
            None => {
                send_data(&shared, id, Bytes::new(), true).await;
                end = true;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let last = body.is_end_stream();
                    if data.is_empty() && !last {
                        continue;
                    }
                    if !send_data(&shared, id, data, last).await {
                        return;
                    }
                    end = last;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send_trailers(&shared, id, &trailers);
                        end = true;
                    }
                }
            },
            Some(Err(e)) => {
                // The upstream broke off mid-body: the client must not take a truncated body
                // for a whole one, so the stream is reset rather than finished.
                tracing::debug!(error = %e, "upstream body failed; resetting HTTP/2 stream");
                reset_stream(&mut shared.lock(), id, Reason::INTERNAL_ERROR);
                return;
            }
        }
    }
    drop(in_flight);
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
    let mut core = shared.lock();
    if core.streams.get(&id).is_none_or(|s| s.reset) {
        return;
    }
    let max = core.peer_max_frame;
    frame::put_header_block(&mut core.out, id, &block, end, max);
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
    let mut core = shared.lock();
    if core.streams.get(&id).is_none_or(|s| s.reset) {
        return;
    }
    let max = core.peer_max_frame;
    frame::put_header_block(&mut core.out, id, &block, true, max);
    core.wake_conn();
}

/// Sends `data` as DATA frames as the windows and the output buffer allow; `false` when the
/// stream or the connection went away first.
async fn send_data(shared: &Shared, id: u32, mut data: Bytes, last: bool) -> bool {
    poll_fn(|cx| {
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
    })
    .await
}
