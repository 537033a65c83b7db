//! One HTTP/2 connection: frames in, streams run, frames out, all on the connection's task.
//!
//! The loop reads what the socket has, handles every complete frame in it, polls the streams
//! that were woken, and writes everything they queued in one `write`. It stops reading while
//! more than [`OUT_HIGH`] bytes wait for the socket, so a peer that sends but does not read
//! (PING or SETTINGS floods included) only fills its own socket.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::core::{Core, Shared, CONN_WINDOW, OUT_HIGH};
use super::frame::{self, Reason};
use super::stream::StreamTask;
use super::Settings;

mod blocks;
mod frames;
use crate::connection_idle::Activity;
use crate::gateway::GatewayHandle;
use crate::pipeline::ConnContext;

/// Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE), as hyper's server had.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Output buffer capacity kept once everything queued is written.
const OUT_KEEP: usize = 8 * 1024;
/// Frames handled per turn of the loop before yielding to other connections.
const TURNS: usize = 32;
/// The peer resetting streams we were serving costs one of these each; a stream answered in
/// full earns one back, and so does each 1/[`RESET_REFILL_PER_SEC`] of a second. At zero the
/// connection is closed (rapid reset, CVE-2023-44487): an attack resets streams by the
/// thousand per second, a client cancelling generations a few at a time never gets there.
const RESET_BUDGET: f64 = 100.0;
const RESET_REFILL_PER_SEC: f64 = 20.0;
/// Streams we reset for the peer's errors before the connection is closed.
const MAX_LOCAL_RESETS: u32 = 256;

/// A connection-level error: GOAWAY with this reason, then close.
struct ConnError(Reason, &'static str);

type Result<T = ()> = std::result::Result<T, ConnError>;

/// A header block still arriving in CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: BytesMut,
    /// The HEADERS frame's priority said the stream depends on itself (§5.3.1).
    self_dependent: bool,
}

pub struct Conn<'a, T> {
    io: T,
    rbuf: BytesMut,
    /// `rbuf` starts with bytes handed over with the connection, not yet looked at.
    handed_over: bool,
    preface: bool,
    settings_seen: bool,
    read_closed: bool,
    shared: Arc<Shared>,
    decoder: loona_hpack::Decoder<'static>,
    block: Option<Block>,
    block_deadline: Option<Pin<Box<Sleep>>>,
    /// The highest stream id the peer opened, and the highest we took on.
    last_id: u32,
    accepted_id: u32,
    tasks: FuturesUnordered<StreamTask<'a>>,
    /// GOAWAY sent: no new streams; close once the ones running end.
    draining: bool,
    /// A connection error: close once GOAWAY is written.
    failed: bool,
    /// The drain was for idleness: bounded like a header read.
    drain_deadline: Option<Pin<Box<Sleep>>>,
    reset_budget: f64,
    reset_budget_at: Instant,
    local_resets: u32,
    ping: Option<Keepalive>,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    idle: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    settings: Settings,
    activity: &'a Arc<Activity>,
    handle: &'a GatewayHandle,
    cx: &'a ConnContext,
    alt_svc: Option<&'a HeaderValue>,
}

/// Ends every stream: their futures are dropped, and request bodies still read elsewhere (by
/// an upstream connection's task) end in error instead of waiting for frames that will not come.
fn close(tasks: &mut FuturesUnordered<StreamTask<'_>>, shared: &Shared) {
    // Dropped before the lock is taken: a stream's request body locks it when dropped.
    *tasks = FuturesUnordered::new();
    let mut core = shared.lock();
    core.closed = true;
    for s in core.streams.values_mut() {
        s.wake();
    }
    core.streams.clear();
    core.wake_blocked();
}

impl<T> Drop for Conn<'_, T> {
    fn drop(&mut self) {
        // Also when the connection's task is cancelled rather than run to its end.
        close(&mut self.tasks, &self.shared);
    }
}

struct Keepalive {
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// A PING is out, unanswered.
    waiting: bool,
    /// Frames arrived since the timer was set: the peer is alive.
    heard: bool,
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Conn<'a, T> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        io: T,
        buffered: Bytes,
        handle: &'a GatewayHandle,
        cx: &'a ConnContext,
        settings: Settings,
        shutdown: &CancellationToken,
        alt_svc: Option<&'a HeaderValue>,
        activity: &'a Arc<Activity>,
    ) -> Self {
        let mut out = BytesMut::with_capacity(128);
        frame::put_settings(
            &mut out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    settings.max_concurrent_streams,
                ),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::put_window_update(&mut out, 0, CONN_WINDOW - frame::DEFAULT_WINDOW as u32);
        let core = Core::new(out, STREAM_WINDOW);
        let ping = settings.keepalive_interval.map(|interval| Keepalive {
            interval,
            timeout: settings.keepalive_timeout,
            timer: Box::pin(tokio::time::sleep(interval)),
            waiting: false,
            heard: false,
        });
        let idle = Box::pin(activity.idle(settings.header_read_timeout, settings.idle_timeout));
        Conn {
            io,
            handed_over: !buffered.is_empty(),
            rbuf: BytesMut::from(&buffered[..]),
            preface: false,
            settings_seen: false,
            read_closed: false,
            shared: Shared::new(core),
            decoder: loona_hpack::Decoder::new(),
            block: None,
            block_deadline: None,
            last_id: 0,
            accepted_id: 0,
            tasks: FuturesUnordered::new(),
            draining: false,
            failed: false,
            drain_deadline: None,
            reset_budget: RESET_BUDGET,
            reset_budget_at: Instant::now(),
            local_resets: 0,
            ping,
            stop: Box::pin(shutdown.clone().cancelled_owned()),
            idle,
            settings,
            activity,
            handle,
            cx,
            alt_svc,
        }
    }

    pub async fn run(mut self) {
        poll_fn(|cx| self.poll(cx)).await;
        close(&mut self.tasks, &self.shared);
        // TLS: a close_notify; TCP: FIN. Bounded: the peer may not read at all any more.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncWriteExt::shutdown(&mut self.io),
        )
        .await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.lock().conn_waker = None;
        for _ in 0..TURNS {
            // Every turn: a timer set during the last one (a header block's deadline) must be
            // polled to be armed.
            let mut progress = match self.poll_timers(cx) {
                Ok(acted) => acted,
                Err(e) => {
                    self.fail(e);
                    true
                }
            };
            if !self.failed && !self.read_closed && self.shared.lock().out.len() < OUT_HIGH {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => {
                        progress = true;
                        if let Err(e) = self.on_frames() {
                            self.fail(e);
                        }
                        if self.rbuf.is_empty() {
                            // Every frame read is handled: a connection that now waits holds
                            // no read buffer (the next read allocates one).
                            self.rbuf = BytesMut::new();
                        }
                    }
                    Poll::Ready(Ok(false)) => {
                        // The peer closed: nobody is left to answer.
                        self.read_closed = true;
                        return Poll::Ready(());
                    }
                    Poll::Ready(Err(())) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            while let Poll::Ready(Some(id)) = self.tasks.poll_next_unpin(cx) {
                self.stream_done(id);
                progress = true;
            }
            let write_pending = match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => {
                    progress |= wrote;
                    false
                }
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Pending => true,
            };
            let mut core = self.shared.lock();
            if (self.failed || self.draining) && core.out.is_empty() && self.tasks.is_empty() {
                return Poll::Ready(());
            }
            if !progress {
                if !core.out.is_empty() && !write_pending {
                    // Queued from another task after our write, which saw no waker to wake.
                    drop(core);
                    cx.waker().wake_by_ref();
                } else {
                    core.conn_waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        // Busy: let the runtime's other connections have a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// `Ok(true)` when a timer queued something (GOAWAY, PING).
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        let mut acted = false;
        if !self.draining && self.stop.as_mut().poll(cx).is_ready() {
            self.drain();
            acted = true;
        }
        if !self.draining && self.idle.as_mut().poll(cx).is_ready() {
            self.drain();
            acted = true;
            let bound = self.settings.header_read_timeout;
            self.drain_deadline = Some(Box::pin(tokio::time::sleep(bound)));
        }
        if let Some(d) = &mut self.drain_deadline {
            if d.as_mut().poll(cx).is_ready() {
                self.drain_deadline = None;
                return Err(ConnError(Reason::NO_ERROR, "idle drain timed out"));
            }
        }
        if let Some(d) = &mut self.block_deadline {
            if d.as_mut().poll(cx).is_ready() {
                self.block_deadline = None;
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "header block never ended",
                ));
            }
        }
        if let Some(k) = &mut self.ping {
            while k.timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if k.heard {
                    k.heard = false;
                    k.waiting = false;
                    k.timer.as_mut().reset(now + k.interval);
                } else if k.waiting {
                    return Err(ConnError(Reason::NO_ERROR, "keep-alive PING unanswered"));
                } else {
                    let mut core = self.shared.lock();
                    frame::put_ping(&mut core.out, 0, *b"sw-alive");
                    k.waiting = true;
                    k.timer.as_mut().reset(now + k.timeout);
                    acted = true;
                }
            }
        }
        Ok(acted)
    }

    /// GOAWAY (NO_ERROR): streams already taken finish, new ones are not taken.
    fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        let mut core = self.shared.lock();
        frame::put_goaway(&mut core.out, self.accepted_id, Reason::NO_ERROR);
    }

    fn fail(&mut self, e: ConnError) {
        if self.failed {
            return;
        }
        tracing::debug!(reason = e.0 .0, why = e.1, "HTTP/2 connection error");
        self.failed = true;
        let mut core = self.shared.lock();
        frame::put_goaway(&mut core.out, self.accepted_id, e.0);
        drop(core);
        // Streams stop now; the GOAWAY is still written before the close.
        close(&mut self.tasks, &self.shared);
    }

    /// `Ok(true)`: bytes arrived; `Ok(false)`: the peer closed.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<bool, ()>> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        // Bytes handed over with the connection (a preface the HTTP/1.1 path read) come first.
        if self.handed_over {
            self.handed_over = false;
            return Poll::Ready(Ok(true));
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => {
                if let Some(k) = &mut self.ping {
                    k.heard = true;
                }
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 read failed");
                Poll::Ready(Err(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// `Ok(true)` when bytes were written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<bool, ()>> {
        let mut wrote = false;
        loop {
            let mut core = self.shared.lock();
            if core.out.is_empty() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &core.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => {
                    let was_high = core.out.len() >= OUT_HIGH;
                    core.out.advance(n);
                    wrote = true;
                    if was_high && core.out.len() < OUT_HIGH {
                        core.wake_blocked();
                    }
                    if core.out.is_empty() && core.out.capacity() > OUT_KEEP {
                        // A burst's buffer is not kept for a connection that then streams or
                        // waits (issue 19: memory per stream).
                        core.out = BytesMut::new();
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 write failed");
                    return Poll::Ready(Err(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(wrote)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A stream's future ended: its response is sent, or it was reset.
    fn stream_done(&mut self, id: u32) {
        let mut core = self.shared.lock();
        let Some(s) = core.streams.remove(&id) else {
            return;
        };
        if !s.reset {
            self.reset_budget = (self.reset_budget + 1.0).min(RESET_BUDGET);
            if !s.recv.end {
                // §8.1: the response is complete; the client may stop sending its body.
                frame::put_rst(&mut core.out, id, Reason::NO_ERROR);
            }
        }
        // Whatever of the body nobody read returns to the connection's window.
        let n = s.recv.queued as u32;
        core.release(None, n);
        if let Some(w) = s.recv.reader {
            w.wake();
        }
    }
}
