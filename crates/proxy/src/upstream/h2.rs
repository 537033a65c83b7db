//! HTTP/2 upstream connections under the pool's circuit breakers.
//!
//! hyper-util's pooled client multiplexes well but keeps its bookkeeping to itself: it opens
//! connections when it sees fit and parks the requests that wait for one where nothing can count
//! them, so a pool's `max_connections` and `max_pending` could not be enforced through it. Here
//! each endpoint's HTTP/2 connection is kept by hand (hyper's `client::conn::http2`), in the shape
//! of Envoy's HTTP/2 connection pool with its defaults:
//!
//! - one connection per endpoint, carrying up to the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
//!   streams at once;
//! - opening a connection takes one unit of the pool's `connections` limit, held while the
//!   connection lives; with none left the request fails at once (503,
//!   `x-switchyard-overflow: connections`), as on HTTP/1;
//! - a request that has to wait, for its endpoint's connection to be established or for one of
//!   its streams to free up, holds one unit of `pending` while it waits; with none left it fails
//!   at once (`pending`).
//!
//! Streams in use are not counted here: the endpoint's in-flight count already is that number
//! (every attempt holds it from before it is sent until its response body ends or it fails),
//! less the requests still waiting in this module. A waiting request looks again when the
//! connection makes progress (a frame read, a stream ended) and every [`RECHECK`] besides, since
//! a stream's end is seen by the body that carried it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_balance::EndpointState;
use switchyard_resilience::{BreakerGuard, CircuitBreaker, Limit};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::io::UpstreamIo;
use super::SendError;
use crate::body::RequestBody;
use crate::tls::UpstreamConnector;

/// How often a waiting request looks again when nothing woke it.
const RECHECK: Duration = Duration::from_millis(2);

/// Streams assumed before the server's SETTINGS say otherwise (hyper's initial value).
const INITIAL_MAX_STREAMS: usize = 100;

/// One endpoint's HTTP/2 connection, kept across config generations.
pub struct H2Endpoint {
    address: SocketAddr,
    /// The pool's TLS client, for pools with `tls`.
    tls: Option<Arc<UpstreamConnector>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<State>,
    /// Requests inside [`H2Endpoint::send`] not yet handed to the connection. Changed only under
    /// the `state` lock; read without it by the connection's driver.
    waiting: AtomicU64,
    changed: Notify,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    connecting: bool,
    /// Connection attempts finished so far.
    attempts: u64,
    /// How the last attempt failed, for the requests that waited on it.
    failed: Option<ConnectFailure>,
    /// The endpoint whose in-flight count is the streams in use.
    endpoint: Option<Arc<EndpointState>>,
}

struct Conn {
    id: u64,
    send: http2::SendRequest<RequestBody>,
    max_streams: Arc<AtomicUsize>,
    /// When a request was last handed to this connection.
    last_used: Instant,
}

#[derive(Clone)]
enum ConnectFailure {
    Timeout,
    Io(io::ErrorKind, String),
    /// Kept whole, so every waiting request's answer names the TLS cause.
    Tls(rustls::Error),
}

impl ConnectFailure {
    fn error(&self) -> SendError {
        match self {
            Self::Timeout => SendError::ConnectTimeout,
            Self::Io(kind, msg) => SendError::Connect(io::Error::new(*kind, msg.clone())),
            Self::Tls(e) => {
                SendError::Connect(io::Error::new(io::ErrorKind::InvalidData, e.clone()))
            }
        }
    }
}

/// What a request does next, decided under the lock.
enum Step {
    Send(http2::SendRequest<RequestBody>),
    Wait,
    Connect(BreakerGuard),
}

impl H2Endpoint {
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<Arc<UpstreamConnector>>,
    ) -> Self {
        Self {
            address,
            tls,
            connect_timeout,
            idle_timeout,
            state: Mutex::default(),
            waiting: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether settings match, so the connection can be kept across a reload.
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

    /// Send `req` on this endpoint's connection (opening it if needed) once a stream is free.
    /// `endpoint` is the pool's state for this address; the caller has counted the request in
    /// its in-flight count.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        breaker: &CircuitBreaker,
        endpoint: &Arc<EndpointState>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut send = self.stream(breaker, endpoint).await?;
        send.send_request(req).await.map_err(|e| {
            let e = io::Error::other(e);
            SendError::Io(match &self.tls {
                Some(tls) => tls.explain_early_failure(e),
                None => e,
            })
        })
    }

    /// Wait for a stream on a live connection, under the `pending` and `connections` limits.
    async fn stream(
        self: &Arc<Self>,
        breaker: &CircuitBreaker,
        endpoint: &Arc<EndpointState>,
    ) -> Result<http2::SendRequest<RequestBody>, SendError> {
        let mut waiting = Waiting::enter(self);
        let mut pending: Option<BreakerGuard> = None;
        // The connection attempt this request waits on, if any.
        let mut awaited: Option<u64> = None;
        loop {
            let step = {
                let mut st = self.state.lock().expect("h2 state lock");
                if st.endpoint.is_none() {
                    st.endpoint = Some(endpoint.clone());
                }
                if st.conn.as_ref().is_some_and(|c| c.send.is_closed()) {
                    st.conn = None;
                }
                if let Some(c) = st.conn.as_ref() {
                    let queued = self.waiting.load(Ordering::Acquire);
                    let in_use = endpoint.in_flight().saturating_sub(queued);
                    if (in_use as usize) < c.max_streams.load(Ordering::Relaxed).max(1) {
                        let send = c.send.clone();
                        if let Some(c) = st.conn.as_mut() {
                            c.last_used = Instant::now();
                        }
                        waiting.leave(&mut st);
                        Step::Send(send)
                    } else {
                        Step::Wait
                    }
                } else if st.connecting {
                    awaited.get_or_insert(st.attempts);
                    Step::Wait
                } else {
                    if let (Some(a), Some(f)) = (awaited, &st.failed) {
                        if st.attempts > a {
                            // The attempt this request waited on failed: so does the request,
                            // as it would have had it made the attempt itself.
                            return Err(f.error());
                        }
                    }
                    let open = breaker
                        .try_acquire(Limit::Connections)
                        .map_err(SendError::Overflow)?;
                    st.connecting = true;
                    Step::Connect(open)
                }
            };
            match step {
                Step::Send(send) => return Ok(send),
                Step::Wait => {
                    if pending.is_none() {
                        pending = Some(
                            breaker
                                .try_acquire(Limit::Pending)
                                .map_err(SendError::Overflow)?,
                        );
                    }
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                }
                Step::Connect(open) => {
                    let mut connecting = Connecting {
                        home: self,
                        done: false,
                    };
                    if pending.is_none() {
                        pending = Some(
                            breaker
                                .try_acquire(Limit::Pending)
                                .map_err(SendError::Overflow)?,
                        );
                    }
                    match self.connect(open).await {
                        Ok(conn) => connecting.finish(Ok(conn)),
                        Err(e) => {
                            connecting.finish(Err(&e));
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Open the connection and start its driver, which holds `open` for the connection's life.
    async fn connect(self: &Arc<Self>, open: BreakerGuard) -> Result<Conn, SendError> {
        let by = Instant::now() + self.connect_timeout;
        let tcp = tokio::time::timeout_at(by, TcpStream::connect(self.address))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let io = match &self.tls {
            None => UpstreamIo::Plain(tcp),
            Some(tls) => UpstreamIo::Tls(Box::new(
                tokio::time::timeout_at(by, tls.handshake(tcp, self.address))
                    .await
                    .map_err(|_| SendError::ConnectTimeout)?
                    .map_err(SendError::Connect)?,
            )),
        };
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let max_streams = Arc::new(AtomicUsize::new(INITIAL_MAX_STREAMS));
        tokio::spawn(drive(
            conn,
            id,
            max_streams.clone(),
            Arc::downgrade(self),
            open,
        ));
        Ok(Conn {
            id,
            send,
            max_streams,
            last_used: Instant::now(),
        })
    }

    /// Close the connection `id` if it has been idle for `idle_timeout`: nothing sent on it since,
    /// and no stream in use.
    fn close_if_idle(&self, id: u64) -> bool {
        let mut st = self.state.lock().expect("h2 state lock");
        let busy = st
            .endpoint
            .as_ref()
            .is_some_and(|e| e.in_flight() > self.waiting.load(Ordering::Acquire));
        let idle = st
            .conn
            .as_ref()
            .is_some_and(|c| c.id == id && c.last_used.elapsed() >= self.idle_timeout);
        if idle && !busy {
            // Dropping the last sender lets hyper close the connection gracefully.
            st.conn = None;
        }
        idle && !busy
    }
}

/// Drive one connection: publish the server's stream limit, wake waiting requests as the
/// connection makes progress, close it once idle, and hold its `connections` unit until it ends.
async fn drive(
    conn: http2::Connection<TokioIo<UpstreamIo>, RequestBody, TokioExecutor>,
    id: u64,
    max_streams: Arc<AtomicUsize>,
    home: Weak<H2Endpoint>,
    _open: BreakerGuard,
) {
    let idle_timeout = home
        .upgrade()
        .map_or(Duration::from_secs(60), |h| h.idle_timeout);
    let mut conn = std::pin::pin!(conn);
    let mut idle_check = tokio::time::interval(idle_timeout.max(Duration::from_millis(10)));
    idle_check.tick().await;
    let mut closing = false;
    let progress = std::future::poll_fn(|cx| {
        let r = conn.as_mut().poll(cx);
        max_streams.store(
            conn.as_ref().get_ref().current_max_send_streams(),
            Ordering::Relaxed,
        );
        if let Some(h) = home.upgrade() {
            if h.waiting.load(Ordering::Acquire) > 0 {
                h.changed.notify_waiters();
            }
        }
        r
    });
    let mut progress = std::pin::pin!(progress);
    loop {
        tokio::select! {
            r = &mut progress => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
                break;
            }
            _ = idle_check.tick(), if !closing => {
                match home.upgrade() {
                    Some(h) => closing = h.close_if_idle(id),
                    None => closing = true,
                }
            }
        }
    }
    if let Some(h) = home.upgrade() {
        h.changed.notify_waiters();
    }
}

/// Counts a request in [`H2Endpoint::waiting`] until it is handed to the connection or gives up.
struct Waiting<'a> {
    home: &'a H2Endpoint,
    counted: bool,
}

impl<'a> Waiting<'a> {
    fn enter(home: &'a H2Endpoint) -> Self {
        let _st = home.state.lock().expect("h2 state lock");
        home.waiting.fetch_add(1, Ordering::AcqRel);
        Self {
            home,
            counted: true,
        }
    }

    /// Stop counting; the caller holds the state lock.
    fn leave(&mut self, _st: &mut State) {
        if std::mem::take(&mut self.counted) {
            self.home.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut st = self.home.state.lock().expect("h2 state lock");
            self.leave(&mut st);
        }
    }
}

/// The connection attempt in progress; if the request making it goes away (a timeout, the client
/// leaving), the next waiting request makes its own.
struct Connecting<'a> {
    home: &'a H2Endpoint,
    done: bool,
}

impl Connecting<'_> {
    fn finish(&mut self, result: Result<Conn, &SendError>) {
        let mut st = self.home.state.lock().expect("h2 state lock");
        st.connecting = false;
        st.attempts += 1;
        match result {
            Ok(conn) => {
                st.conn = Some(conn);
                st.failed = None;
            }
            Err(e) => {
                st.failed = Some(match e {
                    SendError::ConnectTimeout => ConnectFailure::Timeout,
                    SendError::Connect(e) => match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(tls) => ConnectFailure::Tls(tls.clone()),
                        None => ConnectFailure::Io(e.kind(), e.to_string()),
                    },
                    _ => ConnectFailure::Io(io::ErrorKind::Other, "connect failed".into()),
                });
            }
        }
        self.done = true;
        drop(st);
        self.home.changed.notify_waiters();
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.home.state.lock().expect("h2 state lock").connecting = false;
            self.home.changed.notify_waiters();
        }
    }
}
