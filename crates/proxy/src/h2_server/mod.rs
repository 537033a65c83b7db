//! The downstream HTTP/2 server: h2c (prior knowledge, or a preface the HTTP/1.1 path read)
//! and h2 over TLS (ALPN).
//!
//! Ours rather than hyper's for the same reason as `h1_server.rs`: the request path is the
//! product, and the general-purpose layers around it cost more than the gateway itself. hyper
//! and h2 spent ~22k instructions per h2c request around a ~17k pipeline (a task and a channel
//! per stream, an HPACK encoder that indexes and Huffman-codes every response field, stream
//! prioritisation; issue 19). Here a stream is a future polled by its connection's task, frames
//! of all streams coalesce into one write, and response heads are encoded from the static
//! table and literals.
//!
//! - `frame.rs`: frame headers and the frames the server writes
//! - `hpack.rs`: response-head encoding; request-head checks over `loona-hpack`'s decoder
//! - `core.rs`: the state the connection shares with its streams; the request body
//! - `stream.rs`: one stream: the pipeline, then the response as frames
//! - `conn/`: the connection's loop (`mod.rs`: I/O, timers, GOAWAY), frames in (`frames.rs`:
//!   control, flow control, resets, request bodies; `blocks.rs`: header blocks, new streams)
//!
//! Limits are the ones hyper's server was configured with before: SETTINGS_MAX_CONCURRENT_STREAMS
//! and the header list size from the listener, rapid reset (CVE-2023-44487) and CONTINUATION
//! floods (CVE-2024-27316) cut off with GOAWAY, a header block bounded by the header read
//! timeout, keep-alive PINGs, and the connection idle bounds of `connection_idle.rs`.

mod conn;
mod core;
mod frame;
mod hpack;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use self::core::H2Body;
use crate::connection_idle::Activity;
use crate::gateway::GatewayHandle;
use crate::pipeline::ConnContext;

pub use frame::PREFACE;

/// A listener's HTTP/2 settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Bounds the first request's wait, a header block in pieces, and an idle close.
    pub header_read_timeout: Duration,
    /// No request in flight this long after the first: GOAWAY. `None`: no bound.
    pub idle_timeout: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

/// Serve HTTP/2 on `io` until the connection ends. `buffered` holds bytes already read from it
/// (the preface, when the HTTP/1.1 path saw it first). On `shutdown` the connection sends
/// GOAWAY and ends once its streams have.
#[allow(clippy::too_many_arguments)]
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    buffered: Bytes,
    handle: &GatewayHandle,
    cx: &ConnContext,
    settings: Settings,
    shutdown: &CancellationToken,
    alt_svc: Option<&HeaderValue>,
    activity: &Arc<Activity>,
) {
    conn::Conn::new(
        io, buffered, handle, cx, settings, shutdown, alt_svc, activity,
    )
    .run()
    .await;
}
