//! HTTP/1.1 upstream connections driven inline by the request that uses them.
//!
//! A general-purpose client (hyper-util's legacy `Client`) runs every connection as its own task
//! and hands requests and responses across with channels: two extra task wake-ups and a pool
//! keyed by hashed authority on every request. A proxy knows better: an HTTP/1 connection serves
//! one exchange at a time, so the task that forwards the request can poll the connection itself,
//! from sending the head to the last body byte, and then put it back on a per-endpoint idle
//! stack. This is the shape Pingora uses; here it costs no task and no hash per request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::io::UpstreamIo;
use super::SendError;
use crate::body::RequestBody;
use crate::deadline::LazyDeadline;
use crate::h1_codec::{
    decode_chunked, encode_chunk, encode_last_chunk, encode_request_head, parse_response_head,
    response_framing, BodyFraming, Chunked, Decoded, ProtocolError, RawHeaders, ReqFraming,
};
use crate::tls::UpstreamConnector;
use switchyard_resilience::{BreakerGuard, CircuitBreaker, Limit};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Idle connections to one endpoint, most recently used on top.
pub struct EndpointConns {
    address: SocketAddr,
    /// The pool's TLS client, for pools with `tls`.
    tls: Option<Arc<UpstreamConnector>>,
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One open connection: the socket and its read buffer.
struct Conn {
    io: UpstreamIo,
    buf: BytesMut,
    /// Bounds each exchange's wait for its head (the attempt's deadline; `None` when the caller
    /// times the exchange).
    deadline: LazyDeadline,
    /// Held against the pool's `max_connections` for the life of the connection.
    _open: BreakerGuard,
}

impl Conn {
    /// Whether the upstream closed (or wrote unasked-for bytes) while the connection sat idle.
    /// Costs no syscall unless the reactor saw the socket become readable.
    fn is_stale(&mut self) -> bool {
        self.io.is_stale()
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::read_buf::read_more(&mut self.io, cx, &mut self.buf, READ_CHUNK)
    }
}

impl EndpointConns {
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<Arc<UpstreamConnector>>,
    ) -> Self {
        Self {
            address,
            tls,
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
            max_idle: 1024,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether settings match, so the idle connections can be kept across a reload.
    pub fn same_settings(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<&UpstreamConnector>,
    ) -> bool {
        self.connect_timeout == connect_timeout
            && self.idle_timeout == idle_timeout
            && UpstreamConnector::same(self.tls.as_deref(), tls)
    }

    /// An idle connection that still looks alive, or `None`.
    fn pop_idle(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        loop {
            let mut idle = self.idle.lock().expect("idle lock").pop()?;
            if now.duration_since(idle.since) > self.idle_timeout || idle.conn.is_stale() {
                continue;
            }
            return Some(idle.conn);
        }
    }

    async fn connect(
        &self,
        breaker: &CircuitBreaker,
        deadline: Option<Instant>,
    ) -> Result<Box<Conn>, SendError> {
        let _pending = breaker
            .try_acquire(Limit::Pending)
            .map_err(SendError::Overflow)?;
        let open = breaker
            .try_acquire(Limit::Connections)
            .map_err(SendError::Overflow)?;
        let now = Instant::now();
        let connect_by = now + self.connect_timeout;
        let by = deadline.map_or(connect_by, |d| d.min(connect_by));
        let timed_out = || {
            if by < connect_by {
                SendError::Timeout
            } else {
                SendError::ConnectTimeout
            }
        };
        let tcp = tokio::time::timeout_at(by, TcpStream::connect(self.address))
            .await
            .map_err(|_| timed_out())?
            .map_err(SendError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let io = match &self.tls {
            None => UpstreamIo::Plain(tcp),
            Some(tls) => UpstreamIo::Tls(Box::new(
                tokio::time::timeout_at(by, tls.handshake(tcp, self.address))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(SendError::Connect)?,
            )),
        };
        Ok(Box::new(Conn {
            io,
            buf: BytesMut::new(),
            deadline: LazyDeadline::new(now + Duration::from_secs(3600)),
            _open: open,
        }))
    }

    /// Send `req` on a pooled connection (or a new one), returning the response head and the
    /// connection, from which the caller reads the body.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Encoded,
        breaker: &CircuitBreaker,
        deadline: Option<Instant>,
    ) -> Result<(Response<()>, InlineConn), SendError> {
        // One exchange await, not one per case: the future is moved on every request, and two
        // awaits of the exchange would lay out two of its states.
        let (mut conn, mut reused) = match self.pop_idle() {
            Some(conn) => (conn, true),
            None => (self.connect_boxed(breaker, deadline).await?, false),
        };
        loop {
            let mut up = InlineConn::new(self.clone(), conn);
            match up.exchange(&mut req, reused, deadline).await {
                Ok(resp) => return Ok((resp, up)),
                // The idle connection was closed under us before the upstream took the
                // request: safe to try once more on a fresh connection.
                Err(SendError::NotSent) if reused => {}
                Err(SendError::Io(e)) if !reused && self.tls.is_some() => {
                    let tls = self.tls.as_ref().expect("checked");
                    return Err(SendError::Io(tls.explain_early_failure(e)));
                }
                Err(e) => return Err(e),
            }
            conn = self.connect_boxed(breaker, deadline).await?;
            reused = false;
        }
    }

    /// Boxed: connecting is the rare path, and its future would otherwise make every
    /// exchange's future (moved on each request) larger.
    async fn connect_boxed(
        &self,
        breaker: &CircuitBreaker,
        deadline: Option<Instant>,
    ) -> Result<Box<Conn>, SendError> {
        Box::pin(self.connect(breaker, deadline)).await
    }
}

/// Write all of `buf`, bounded by the exchange's deadline: `Err(None)` when it passes first.
async fn write_all_by(conn: &mut Conn, mut buf: &[u8]) -> Result<(), Option<io::Error>> {
    std::future::poll_fn(|cx| {
        while !buf.is_empty() {
            match Pin::new(&mut conn.io).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Some(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => buf = &buf[n..],
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Some(e))),
                Poll::Pending => {
                    return if conn.deadline.poll(cx).is_ready() {
                        Poll::Ready(Err(None))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        match Pin::new(&mut conn.io).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(Some)),
            Poll::Pending if conn.deadline.poll(cx).is_ready() => Poll::Ready(Err(None)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A request encoded for the wire before the exchange starts. The exchange's future then holds
/// these bytes and the body, not the request: a 272-byte head was stored four times over in it,
/// and that future is moved on every request.
pub struct Encoded {
    /// The head, with a small buffered body coalesced into the same write.
    out: BytesMut,
    /// The body still to send after the head; taken when a streamed upload starts.
    body: Option<RequestBody>,
    framing: ReqFraming,
    method: Method,
}

impl Encoded {
    /// `target` is the request target as written on the wire (origin-form).
    pub fn new(method: &Method, target: &str, headers: &HeaderMap, body: RequestBody) -> Self {
        let framing = request_framing(headers, &body);
        let mut out = BytesMut::new();
        encode_request_head(&mut out, method, target, headers, framing);
        let body = match body.buffered() {
            Some(b) if b.len() <= COALESCE_BODY => {
                out.extend_from_slice(&b);
                None
            }
            _ if framing == ReqFraming::None => None,
            _ => Some(body),
        };
        Self {
            out,
            body,
            framing,
            method: method.clone(),
        }
    }
}

/// One upstream connection in use by one exchange; after the response head it yields the
/// response body.
pub struct InlineConn {
    home: Arc<EndpointConns>,
    conn: Box<Conn>,
    framing: BodyFraming,
    chunked: Chunked,
    /// The response allows another exchange (the upload must also have finished).
    reusable: bool,
    /// A request body still going out.
    upload: Option<Box<Upload>>,
    /// The response's headers as they came, when the exchange kept them raw (the response's
    /// header map is then empty).
    raw_head: Option<Box<RawHeaders>>,
}

/// A streamed request body on its way out, and its framing.
struct Upload {
    body: RequestBody,
    chunked: bool,
    /// Encoded bytes not yet written.
    out: BytesMut,
    done: bool,
}

impl InlineConn {
    fn new(home: Arc<EndpointConns>, conn: Box<Conn>) -> Self {
        Self {
            home,
            conn,
            framing: BodyFraming::Empty,
            chunked: Chunked::Size,
            reusable: false,
            upload: None,
            raw_head: None,
        }
    }

    /// The response headers kept raw; the caller must use them (or their map) in place of the
    /// response's empty header map.
    pub fn take_raw_head(&mut self) -> Option<Box<RawHeaders>> {
        self.raw_head.take()
    }

    async fn exchange(
        &mut self,
        req: &mut Encoded,
        reused: bool,
        deadline: Option<Instant>,
    ) -> Result<Response<()>, SendError> {
        self.conn.deadline.set(deadline);
        match write_all_by(&mut self.conn, &req.out).await {
            Ok(()) => {}
            Err(Some(_)) if reused => return Err(SendError::NotSent),
            Err(Some(e)) => return Err(SendError::Io(e)),
            Err(None) => return Err(SendError::Timeout),
        }
        match req.body.as_ref().and_then(RequestBody::buffered) {
            // Too large to coalesce with the head.
            Some(b) => write_all_by(&mut self.conn, &b)
                .await
                .map_err(|e| e.map_or(SendError::Timeout, SendError::Io))?,
            // A streamed body goes out as it arrives, while the response is read: an upstream
            // may answer (and even stream its answer) before the upload ends.
            None => {
                if let Some(body) = req.body.take() {
                    self.upload = Some(Box::new(Upload {
                        body,
                        chunked: req.framing == ReqFraming::Chunked,
                        out: BytesMut::new(),
                        done: false,
                    }));
                }
            }
        }
        // Read the response head, skipping interim (1xx) responses.
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
                return Poll::Ready(Err(e));
            }
            loop {
                match parse_response_head(&self.conn.buf).map_err(protocol)? {
                    Some(head) if head.status.is_informational() => {
                        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                            return Poll::Ready(Err(protocol(ProtocolError("unexpected 101"))));
                        }
                        let _ = self.conn.buf.split_to(head.len);
                    }
                    Some(mut head) => {
                        let bytes = self.conn.buf.split_to(head.len).freeze();
                        if let Some(raw) = head.raw.as_mut() {
                            raw.set_head(bytes);
                        }
                        return Poll::Ready(Ok(Some(head)));
                    }
                    None => match self.conn.poll_read_more(cx) {
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Io(e))),
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => {
                            if self.conn.deadline.poll(cx).is_ready() {
                                return Poll::Ready(Err(SendError::Timeout));
                            }
                            return Poll::Pending;
                        }
                    },
                }
            }
        })
        .await?;
        let Some(mut head) = head else {
            // Closed after the whole request went out and before any answer: the upstream may
            // have acted on it (a replica that died mid-request looks the same as one that
            // closed an idle connection as we wrote). That is the retry policy's call, with its
            // budget and its `retry_on`, not a silent resend here; a connection already closed
            // while idle is caught before use (`is_stale`) or by the failed write above.
            return Err(SendError::Io(io::ErrorKind::UnexpectedEof.into()));
        };
        let (framing, keep_alive) = response_framing(&req.method, &mut head).map_err(protocol)?;
        self.framing = framing;
        self.chunked = Chunked::Size;
        self.reusable = keep_alive;
        self.raw_head = head.raw.take();
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// Move the streamed request body along: flush what is encoded, then take the next frame.
    /// `Ready(Ok)` once it has all gone out (or there is none).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let Some(up) = self.upload.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while !up.out.is_empty() {
                let n = ready!(Pin::new(&mut self.conn.io).poll_write(cx, &up.out))
                    .map_err(SendError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())));
                }
                up.out.advance(n);
            }
            ready!(Pin::new(&mut self.conn.io).poll_flush(cx)).map_err(SendError::Io)?;
            if up.done {
                self.upload = None;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut up.body).poll_frame(cx)) {
                None => {
                    if up.chunked {
                        encode_last_chunk(&mut up.out, None);
                    }
                    up.done = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(SendError::Body(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if up.chunked => encode_chunk(&mut up.out, &data),
                    Ok(data) => up.out.extend_from_slice(&data),
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), up.chunked) {
                            encode_last_chunk(&mut up.out, Some(&trailers));
                            up.done = true;
                        }
                    }
                },
            }
        }
    }

    /// The next piece of the response body. Always inlined: it is the body's hot loop, and with
    /// the mirror's drain as a second caller the compiler made it a call on every proxied chunk
    /// (+45 instructions per request, `bench/proxies/instructions.sh`).
    #[inline(always)]
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
            // The client's upload failed mid-exchange: the upstream's answer is cut off too.
            self.upload = None;
            self.framing = BodyFraming::Empty;
            self.reusable = false;
            let e = match e {
                SendError::Io(e) => e,
                other => io::Error::other(format!("request body: {other:?}")),
            };
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let buf = &mut self.conn.buf;
            match self.framing {
                BodyFraming::Empty => return Poll::Ready(None),
                BodyFraming::Length(left) if !buf.is_empty() => {
                    let n = (left as usize).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    self.framing = match left - n as u64 {
                        0 => BodyFraming::Empty,
                        left => BodyFraming::Length(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Chunked => match decode_chunked(&mut self.chunked, buf) {
                    Err(e) => {
                        self.framing = BodyFraming::Empty;
                        self.reusable = false;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => {
                        self.framing = BodyFraming::Empty;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        self.framing = BodyFraming::Empty;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                },
                BodyFraming::Length(_) | BodyFraming::Close => {}
            }
            let n = match ready!(self.conn.poll_read_more(cx)) {
                Ok(n) => n,
                Err(e) => {
                    self.framing = BodyFraming::Empty;
                    self.reusable = false;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if n == 0 {
                let closed = self.framing == BodyFraming::Close;
                self.framing = BodyFraming::Empty;
                self.reusable = false;
                if closed {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
            }
        }
    }

    /// Whether the response body has been read to its end.
    pub fn is_end_stream(&self) -> bool {
        self.framing == BodyFraming::Empty
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Empty => SizeHint::with_exact(0),
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The exchange completed: keep the connection for the next request if it can take one.
    pub fn release(self) {
        if !self.reusable
            || !self.is_end_stream()
            || self.upload.is_some()
            || !self.conn.buf.is_empty()
        {
            return;
        }
        let mut idle = self.home.idle.lock().expect("idle lock");
        if idle.len() < self.home.max_idle {
            idle.push(Idle {
                conn: self.conn,
                since: Instant::now(),
            });
        }
    }
}

/// How to frame a request body upstream: a known length as `content-length` (a GET without a
/// body gets none), anything else chunked.
fn request_framing(headers: &http::HeaderMap, body: &RequestBody) -> ReqFraming {
    let had_length = headers.contains_key(http::header::CONTENT_LENGTH);
    match body.size_hint().exact() {
        Some(0) if !had_length => ReqFraming::None,
        Some(n) => ReqFraming::Length(n),
        None if body.is_end_stream() => ReqFraming::None,
        None => ReqFraming::Chunked,
    }
}

fn protocol(e: ProtocolError) -> SendError {
    SendError::Io(e.into())
}
