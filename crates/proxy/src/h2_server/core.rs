//! The state a connection shares with its streams: windows, the output buffer, and each
//! stream's received body.
//!
//! One lock per connection, taken briefly by the connection's task (frames in), by each
//! stream's future (frames out, which run in that same task) and by whoever reads a request
//! body (often hyper's upstream connection task). It is almost never contended: the streams of
//! one connection run on one task.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::frame::{self, Reason};

/// Output above this many bytes makes streams wait (and the connection stop reading frames,
/// whose answers would add to it) until the socket takes it.
pub const OUT_HIGH: usize = 64 * 1024;

/// Stream ids are already spread: hashing them is wasted work.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("stream ids hash as u32")
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

pub struct Shared {
    core: Mutex<Core>,
}

impl Shared {
    pub fn new(core: Core) -> Arc<Self> {
        Arc::new(Shared {
            core: Mutex::new(core),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Core {
    pub streams: StreamMap<Stream>,
    /// Frames waiting for the socket.
    pub out: BytesMut,
    /// Our send window on the connection.
    pub conn_send: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE: new streams' send window.
    pub peer_initial_window: i64,
    pub peer_max_frame: usize,
    /// Received DATA bytes consumed (or thrown away) and not yet returned to the peer.
    pub conn_unreleased: u32,
    /// What the peer may still send on the connection before our next WINDOW_UPDATE.
    pub conn_recv: i64,
    /// Our receive window per stream: data beyond it is the peer's flow-control error.
    pub stream_window: u32,
    /// The connection's task, when it waits: frames were queued from outside it.
    pub conn_waker: Option<Waker>,
    /// Streams waiting for the output to drain or the connection window to open.
    pub blocked: Vec<Waker>,
    /// The connection is gone: streams stop, bodies end in error.
    pub closed: bool,
}

impl Core {
    /// A connection's state before any frame from the peer: `out` holds what we send first
    /// (our SETTINGS), and our streams' receive window is `stream_window`.
    pub fn new(out: BytesMut, stream_window: u32) -> Self {
        Core {
            streams: StreamMap::default(),
            out,
            conn_send: frame::DEFAULT_WINDOW,
            conn_recv: i64::from(CONN_WINDOW),
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            conn_unreleased: 0,
            stream_window,
            conn_waker: None,
            blocked: Vec::new(),
            closed: false,
        }
    }

    /// Wakes the connection's task to write what was queued.
    pub fn wake_conn(&mut self) {
        if let Some(w) = self.conn_waker.take() {
            w.wake();
        }
    }

    pub fn wake_blocked(&mut self) {
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    /// Returns `n` consumed bytes of `id`'s receive window to the peer, by WINDOW_UPDATE once
    /// half a window has been consumed (one update per half window, not one per frame).
    pub fn release(&mut self, id: Option<u32>, n: u32) {
        if n == 0 {
            return;
        }
        let mut queued = false;
        self.conn_unreleased += n;
        if self.conn_unreleased >= CONN_WINDOW / 2 {
            frame::put_window_update(&mut self.out, 0, self.conn_unreleased);
            self.conn_recv += i64::from(self.conn_unreleased);
            self.conn_unreleased = 0;
            queued = true;
        }
        let half = self.stream_window / 2;
        if let Some(s) = id.and_then(|id| self.streams.get_mut(&id)) {
            s.recv.unreleased += n;
            if s.recv.unreleased >= half && !s.recv.end && !s.reset {
                frame::put_window_update(&mut self.out, id.unwrap_or(0), s.recv.unreleased);
                s.recv.window += i64::from(s.recv.unreleased);
                s.recv.unreleased = 0;
                queued = true;
            }
        }
        if queued {
            self.wake_conn();
        }
    }
}

/// The connection-level receive window we keep open (announced once, then topped up).
pub const CONN_WINDOW: u32 = 1024 * 1024;

pub struct Stream {
    pub send_window: i64,
    /// The stream's future, to wake when it was reset or its window opened.
    pub task: Option<Waker>,
    /// Reset by the peer, or by us for an error: the stream's future stops.
    pub reset: bool,
    pub recv: Recv,
}

impl Stream {
    pub fn new(send_window: i64, recv_window: u32, end: bool, content_length: Option<u64>) -> Self {
        Stream {
            send_window,
            task: None,
            reset: false,
            recv: Recv {
                end,
                window: i64::from(recv_window),
                content_length,
                ..Recv::default()
            },
        }
    }

    pub fn wake(&mut self) {
        if let Some(w) = self.task.take() {
            w.wake();
        }
        if let Some(w) = self.recv.reader.take() {
            w.wake();
        }
    }
}

/// The request body as received, until the pipeline reads it.
#[derive(Default)]
pub struct Recv {
    pub queue: VecDeque<Bytes>,
    pub queued: usize,
    pub trailers: Option<HeaderMap>,
    /// END_STREAM arrived.
    pub end: bool,
    pub error: Option<&'static str>,
    pub reader: Option<Waker>,
    pub unreleased: u32,
    /// What the peer may still send on the stream before our next WINDOW_UPDATE.
    pub window: i64,
    pub content_length: Option<u64>,
    pub received: u64,
    /// The reader is gone: data is thrown away (and its window returned) as it arrives.
    pub dropped: bool,
}

/// A request body arriving in DATA frames.
pub struct H2Body {
    shared: Arc<Shared>,
    id: u32,
    done: bool,
    hint: Option<u64>,
}

impl H2Body {
    pub fn new(shared: Arc<Shared>, id: u32, content_length: Option<u64>) -> Self {
        H2Body {
            shared,
            id,
            done: false,
            hint: content_length,
        }
    }
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body").field("stream", &self.id).finish()
    }
}

#[derive(Debug)]
pub struct BodyError(&'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 request body: {}", self.0)
    }
}

impl std::error::Error for BodyError {}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut core = this.shared.lock();
        let closed = core.closed;
        let Some(s) = core.streams.get_mut(&this.id) else {
            this.done = true;
            return Poll::Ready(Some(Err(BodyError("stream closed"))));
        };
        if let Some(e) = s.recv.error {
            this.done = true;
            return Poll::Ready(Some(Err(BodyError(e))));
        }
        if s.reset {
            this.done = true;
            return Poll::Ready(Some(Err(BodyError("stream reset"))));
        }
        if let Some(data) = s.recv.queue.pop_front() {
            s.recv.queued -= data.len();
            let n = data.len() as u32;
            core.release(Some(this.id), n);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(t) = s.recv.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if s.recv.end {
            this.done = true;
            return Poll::Ready(None);
        }
        if closed {
            this.done = true;
            return Poll::Ready(Some(Err(BodyError("connection closed"))));
        }
        match &s.recv.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.recv.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.hint {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        let Some(s) = core.streams.get_mut(&self.id) else {
            return;
        };
        s.recv.dropped = true;
        s.recv.reader = None;
        let n = s.recv.queued as u32;
        s.recv.queue.clear();
        s.recv.queued = 0;
        // What nobody will read goes back to the connection's window; the stream's own window
        // no longer matters once its body is abandoned.
        core.release(None, n);
    }
}

/// Resets `id` from our side (an error of ours, or the peer's on that stream).
pub fn reset_stream(core: &mut Core, id: u32, reason: Reason) {
    frame::put_rst(&mut core.out, id, reason);
    if let Some(s) = core.streams.get_mut(&id) {
        s.reset = true;
        s.wake();
    }
    core.wake_conn();
}
