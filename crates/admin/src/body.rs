//! Admin response bodies: whole documents, and server-sent event streams fed by a task.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use switchyard_proxy::body::ChannelBody;
use tokio::sync::mpsc;

pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// Events a stream's task may run ahead of its reader; past it the task waits, and what it
/// reads from (a broadcast, a watch) drops or skips for it, never the traffic.
const STREAM_BUFFER: usize = 16;

pub fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(v: &serde_json::Value) -> Response<AdminBody> {
    json_bytes(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    ))
}

pub fn json_bytes(bytes: Bytes) -> Response<AdminBody> {
    let mut r = Response::new(full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An event stream (`text/event-stream`) and the sender its task writes events to; the task
/// ends when a send fails, which is when the client has gone.
pub fn event_stream() -> (mpsc::Sender<Frame<Bytes>>, Response<AdminBody>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut r = Response::new(ChannelBody::new(rx).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (tx, r)
}

/// One server-sent event whose data is `json` (compact: one line, so one `data:` field).
pub fn event(json: &[u8]) -> Frame<Bytes> {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Frame::data(Bytes::from(out))
}

/// A comment line, which readers ignore: sent while idle so a gone client is noticed.
pub fn keepalive() -> Frame<Bytes> {
    Frame::data(Bytes::from_static(b": keep-alive\n\n"))
}
