//! HTTP/1.1 upstream connections driven inline by the request that uses them.
//!
//! A general-purpose client (hyper-util's legacy `Client`) runs every connection as its own task
//! and hands requests and responses across with channels: two extra task wake-ups and a pool
//! keyed by hashed authority on every request. A proxy knows better: an HTTP/1 connection serves
//! one exchange at a time, so the task that forwards the request can poll the connection itself,
//! from sending the head to the last body byte, and then put it back on a per-endpoint idle
//! stack. This is the shape Pingora uses; here it costs no task and no hash per request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use switchyard_resilience::{BreakerGuard, CircuitBreaker, Limit, Overflow};

type Io = TokioIo<TcpStream>;

/// Idle connections to one endpoint, most recently used on top.
pub struct EndpointConns {
    address: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct Idle {
    parts: Box<ConnParts>,
    since: Instant,
}

/// Kept boxed: hyper's connection state is large, and it moves between the idle stack, the
/// request future and the response body on every request.
struct ConnParts {
    sender: SendRequest<RequestBody>,
    conn: Connection<Io, RequestBody>,
    /// Held against the pool's `max_connections` for the life of the connection.
    _open: BreakerGuard,
}

/// Why an exchange failed, in the terms the request path needs.
#[derive(Debug)]
pub enum SendError {
    Connect(std::io::Error),
    ConnectTimeout,
    /// The connection closed before the request was written; the request is returned intact.
    NotSent(Box<Request<RequestBody>>),
    Http(hyper::Error),
    /// A new connection would pass the pool's `max_connections` or `max_pending`.
    Overflow(Overflow),
}

impl EndpointConns {
    pub fn new(address: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            address,
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
    pub fn same_settings(&self, connect_timeout: Duration, idle_timeout: Duration) -> bool {
        self.connect_timeout == connect_timeout && self.idle_timeout == idle_timeout
    }

    /// An idle connection that still looks alive, or `None`.
    fn pop_idle(&self) -> Option<Box<ConnParts>> {
        let now = Instant::now();
        loop {
            let mut idle = self.idle.lock().expect("idle lock").pop()?;
            if now.duration_since(idle.since) > self.idle_timeout {
                continue;
            }
            // Let the connection notice a close that arrived while it sat idle.
            let mut cx = Context::from_waker(Waker::noop());
            let p = &mut idle.parts;
            if Pin::new(&mut p.conn).poll(&mut cx).is_ready() || !p.sender.is_ready() {
                continue;
            }
            return Some(idle.parts);
        }
    }

    async fn connect(&self, breaker: &CircuitBreaker) -> Result<Box<ConnParts>, SendError> {
        let _pending = breaker
            .try_acquire(Limit::Pending)
            .map_err(SendError::Overflow)?;
        let open = breaker
            .try_acquire(Limit::Connections)
            .map_err(SendError::Overflow)?;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(Box::new(ConnParts {
            sender,
            conn,
            _open: open,
        }))
    }

    /// Send `req` on a pooled connection (or a new one), returning the response head and the
    /// connection, which the caller must keep polling while it reads the body.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        breaker: &CircuitBreaker,
    ) -> Result<(Response<Incoming>, InlineConn), SendError> {
        let mut req = req;
        if let Some(parts) = self.pop_idle() {
            let mut up = InlineConn::new(self.clone(), parts);
            match up.exchange(req).await {
                Ok(resp) => return Ok((resp, up)),
                // The idle connection was closed under us before the request went out: safe to
                // try once more on a fresh connection.
                Err(SendError::NotSent(back)) => req = *back,
                Err(e) => return Err(e),
            }
        }
        let parts = self.connect(breaker).await?;
        let mut up = InlineConn::new(self.clone(), parts);
        let resp = up.exchange(req).await?;
        Ok((resp, up))
    }
}

/// One upstream connection in use by one exchange.
pub struct InlineConn {
    home: Arc<EndpointConns>,
    parts: Box<ConnParts>,
    finished: bool,
}

impl InlineConn {
    fn new(home: Arc<EndpointConns>, parts: Box<ConnParts>) -> Self {
        Self {
            home,
            parts,
            finished: false,
        }
    }

    async fn exchange(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut response = std::pin::pin!(self.parts.sender.try_send_request(req));
        let conn = &mut self.parts.conn;
        let finished = &mut self.finished;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(|mut e| match e.take_message() {
                    Some(req) => SendError::NotSent(Box::new(req)),
                    None => SendError::Http(e.into_error()),
                }));
            }
            if !*finished {
                if let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
                    *finished = true;
                    // The dispatcher has answered the request's callback by now.
                    if let Poll::Ready(r2) = response.as_mut().poll(cx) {
                        return Poll::Ready(r2.map_err(|mut e| match e.take_message() {
                            Some(req) => SendError::NotSent(Box::new(req)),
                            None => SendError::Http(e.into_error()),
                        }));
                    }
                    return Poll::Ready(Err(match r {
                        Err(e) => SendError::Http(e),
                        Ok(()) => SendError::Connect(std::io::Error::from(
                            std::io::ErrorKind::ConnectionAborted,
                        )),
                    }));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Make progress on the connection (reading the response body, writing the request body).
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if !self.finished && Pin::new(&mut self.parts.conn).poll(cx).is_ready() {
            self.finished = true;
        }
    }

    /// The exchange completed: keep the connection for the next request if it can take one.
    pub fn release(mut self) {
        if self.finished {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let p = &mut self.parts;
        if Pin::new(&mut p.conn).poll(&mut cx).is_ready() || !p.sender.is_ready() {
            return;
        }
        let mut idle = self.home.idle.lock().expect("idle lock");
        if idle.len() < self.home.max_idle {
            idle.push(Idle {
                parts: self.parts,
                since: Instant::now(),
            });
        }
    }
}
