//! Downstream listeners: accept, optional TLS, then HTTP/1.1 or HTTP/2 on the same port (the
//! HTTP/2 preface decides). Each connection is a task tracked for graceful drain.
//!
//! Every connection is bounded in time as well as in size: the TLS handshake and the first
//! request by `header_read_timeout`, a connection with nothing in flight by `idle_timeout`
//! ([`crate::connection_idle`]), and an HTTP/2 peer that stops answering by keep-alive PINGs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_config::Listener;

use crate::pipeline::Downstream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ClientBody;
use crate::connection_idle::{Activity, Tracked};
use crate::framing_guard::{FramingFlags, Guarded};
use crate::gateway::GatewayHandle;
use crate::pipeline::{self, ConnContext, Trust};
use crate::{h1_server, h2_server};
use switchyard_telemetry::metrics::ListenerLabels;

/// Bind with SO_REUSEPORT so a reload can open the new socket before closing the old one, and
/// no connection attempt is refused in between.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Everything an accept loop needs.
pub struct AcceptLoop {
    pub spec: Listener,
    pub socket: std::net::TcpListener,
    pub handle: Arc<GatewayHandle>,
    pub tracker: TaskTracker,
    /// Swappable so that a reload can rotate the certificate of a listener it leaves running.
    pub tls: Option<Arc<crate::tls::ReloadableTls>>,
    /// Stop accepting (reload removed or changed this listener).
    pub stop: CancellationToken,
    /// Process shutdown: stop accepting and drain connections.
    pub shutdown: CancellationToken,
}

/// hyper's server, for the HTTP/1 requests the fast path hands over (uploads, upgrades, odd
/// shapes). HTTP/2 never reaches it: `h2_server` takes the preface and ALPN `h2`.
fn connection_builder(spec: &Listener) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new()).http1_only();
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(spec.header_read_timeout)
        .max_buf_size(spec.max_header_bytes.max(8192))
        .max_headers(spec.max_headers)
        .keep_alive(true);
    b
}

fn h2_settings(spec: &Listener) -> h2_server::Settings {
    h2_server::Settings {
        max_concurrent_streams: spec.max_concurrent_streams,
        max_header_bytes: spec.max_header_bytes,
        max_headers: spec.max_headers,
        header_read_timeout: spec.header_read_timeout,
        idle_timeout: (!spec.idle_timeout.is_zero()).then_some(spec.idle_timeout),
        keepalive_interval: (!spec.http2_keepalive_interval.is_zero())
            .then_some(spec.http2_keepalive_interval),
        keepalive_timeout: spec.http2_keepalive_timeout,
    }
}

/// Time bounds of one connection.
#[derive(Clone, Copy)]
struct Bounds {
    /// TLS handshake, and the wait for the first request.
    header_read: Duration,
    /// Nothing in flight; `None`: unbounded.
    idle: Option<Duration>,
}

impl AcceptLoop {
    pub async fn run(self) {
        let listener = match TcpListener::from_std(self.socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.spec.name, error = %e, "cannot register listener");
                return;
            }
        };
        let local_port = listener.local_addr().map_or(0, |a| a.port());
        let labels = ListenerLabels {
            listener: self.spec.name.clone(),
        };
        let open = self
            .handle
            .metrics
            .downstream_connections
            .get_or_create(&labels)
            .clone();
        let accepted = self
            .handle
            .metrics
            .downstream_connections_total
            .get_or_create(&labels)
            .clone();
        let builder = Arc::new(connection_builder(&self.spec));
        let h2 = h2_settings(&self.spec);
        let name: Arc<str> = Arc::from(self.spec.name.as_str());
        // HTTP/3 on the same port (RFC 9114 §3.1.1); clients remember it for a day.
        let alt_svc = (self.spec.http3 && self.tls.is_some()).then(|| {
            http::HeaderValue::try_from(format!("h3=\":{local_port}\"; ma=86400"))
                .expect("a port makes a valid header value")
        });
        while let Some((stream, peer)) =
            next_connection(&listener, &self.stop, &self.shutdown, &name).await
        {
            accepted.inc();
            let cx = Arc::new(ConnContext {
                framing: Arc::new(FramingFlags::default()),
                listener: name.clone(),
                client: peer,
                client_ip: http::HeaderValue::try_from(peer.ip().to_string())
                    .expect("an IP address is a valid header value"),
                https: self.tls.is_some(),
                local_port,
                max_header_bytes: self.spec.max_header_bytes,
                max_headers: self.spec.max_headers,
                access_log: self.spec.access_log,
                trust: Trust::of(&self.spec.trusted_headers),
                paths: self.spec.path_normalization,
                client_cert: None,
                forward_client_cert: self.spec.forward_client_cert,
                xfcc: None,
            });
            let bounds = Bounds {
                header_read: self.spec.header_read_timeout,
                idle: (!self.spec.idle_timeout.is_zero()).then_some(self.spec.idle_timeout),
            };
            self.tracker.spawn(serve_connection(
                stream,
                self.tls.as_ref().map(|t| t.acceptor()),
                alt_svc.clone(),
                bounds,
                builder.clone(),
                h2,
                self.handle.clone(),
                cx,
                open.clone(),
                self.shutdown.clone(),
            ));
        }
        tracing::debug!(listener = %name, "stopped accepting");
    }
}

/// The next client connection (with `TCP_NODELAY` set), or `None` once `stop` or `shutdown`
/// fires. A failed accept (EMFILE and friends) backs off instead of spinning.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

struct OpenGuard(Gauge);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    alt_svc: Option<http::HeaderValue>,
    bounds: Bounds,
    builder: Arc<auto::Builder<TokioExecutor>>,
    h2: h2_server::Settings,
    handle: Arc<GatewayHandle>,
    cx: Arc<ConnContext>,
    open: Gauge,
    shutdown: CancellationToken,
) {
    open.inc();
    let _guard = OpenGuard(open);
    let framing = cx.framing.clone();
    let limits = h1_server::Limits {
        max_header_bytes: cx.max_header_bytes,
        max_headers: cx.max_headers,
        header_read_timeout: bounds.header_read,
    };
    let activity = Activity::new();
    match tls {
        None => {
            // Plain HTTP/1.1 takes the fast path; whatever it does not take (HTTP/2, uploads,
            // upgrades, odd requests) continues on hyper's server from the same byte.
            let (stream, buffered) =
                match h1_server::serve(stream, &handle, &cx, limits, &shutdown, None).await {
                    h1_server::Outcome::Closed => return,
                    h1_server::Outcome::Fallback { stream, buffered } => (stream, buffered),
                };
            if buffered.starts_with(&h2_server::PREFACE[..3]) {
                // Boxed for the same reason as hyper's connection below.
                Box::pin(h2_server::serve(
                    stream, buffered, &handle, &cx, h2, &shutdown, None, &activity,
                ))
                .await;
                return;
            }
            // Boxed, as is the TLS path: hyper's connection is several KiB of state, and
            // inline it would size the task of every fast-path connection, a streaming one
            // included (issue 19).
            Box::pin(async move {
                let svc = service(handle, cx, &activity, alt_svc);
                let io = Guarded::new(crate::rewind::Rewind::new(buffered, stream), framing);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                drive(conn, shutdown, &activity, bounds).await;
            })
            .await;
        }
        Some(acceptor) => {
            Box::pin(serve_tls(
                stream, acceptor, alt_svc, bounds, limits, builder, h2, handle, cx, activity,
                shutdown,
            ))
            .await;
        }
    }
}

/// A TLS connection: the handshake, then h2 (ALPN) on `h2_server`, or HTTP/1.1 on the fast
/// path (as plain connections) and what the fast path does not take on hyper's server. Each
/// step is boxed, so the connection's task holds only the step it is in: a streaming HTTP/1.1
/// response keeps neither the handshake's nor hyper's state (issue 19).
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    alt_svc: Option<http::HeaderValue>,
    bounds: Bounds,
    limits: h1_server::Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    h2: h2_server::Settings,
    handle: Arc<GatewayHandle>,
    cx: Arc<ConnContext>,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) {
    let accept = Box::pin(tokio::time::timeout(
        bounds.header_read,
        acceptor.accept(stream),
    ));
    let tls = match accept.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let cx = with_client_cert(cx, leaf);
    let framing = cx.framing.clone();
    let (tls, buffered) = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let served = h2_server::serve(
            tls,
            bytes::Bytes::new(),
            &handle,
            &cx,
            h2,
            &shutdown,
            alt_svc.as_ref(),
            &activity,
        );
        Box::pin(served).await;
        return;
    } else {
        let served = Box::pin(h1_server::serve(
            tls,
            &handle,
            &cx,
            limits,
            &shutdown,
            alt_svc.as_ref(),
        ));
        match served.await {
            h1_server::Outcome::Closed => return,
            h1_server::Outcome::Fallback { stream, buffered } => (stream, buffered),
        }
    };
    Box::pin(async move {
        let svc = service(handle, cx, &activity, alt_svc);
        // The guard reads the decrypted bytes: under TLS it would see only ciphertext.
        let io = Guarded::new(crate::rewind::Rewind::new(buffered, tls), framing);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        drive(conn, shutdown, &activity, bounds).await;
    })
    .await;
}

/// Hyper's service for one connection: every request through the pipeline, counted as in
/// flight until its response body ends.
fn service(
    handle: Arc<GatewayHandle>,
    cx: Arc<ConnContext>,
    activity: &Arc<Activity>,
    alt_svc: Option<http::HeaderValue>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<Tracked<crate::body::ResponseBody>>,
    Error = Infallible,
    Future = impl Future<
        Output = Result<http::Response<Tracked<crate::body::ResponseBody>>, Infallible>,
    > + Send,
> + Clone {
    let activity = activity.clone();
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let handle = handle.clone();
        let cx = cx.clone();
        let in_flight = activity.start();
        let alt_svc = alt_svc.clone();
        async move {
            let req = req.map(ClientBody::Hyper);
            // Boxed: hyper moves this future into its per-stream task (and tokio into the
            // task's cell), copying the pipeline's multi-KiB state each time; and it keeps the
            // future's room in the stream's task while the body streams, long after the
            // pipeline is done with it (issue 19).
            let mut resp = Box::pin(pipeline::handle(&handle, &cx, req, Downstream::Hyper)).await;
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(http::header::ALT_SVC, v);
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        }
    })
}

/// The connection's context with the identity of the client certificate rustls verified (read
/// once here, for every request of the connection).
pub(crate) fn with_client_cert(
    cx: Arc<ConnContext>,
    leaf: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> Arc<ConnContext> {
    let Some(identity) = leaf.and_then(|leaf| crate::tls::ClientIdentity::from_der(leaf)) else {
        return cx;
    };
    let xfcc = (cx.forward_client_cert != switchyard_config::ForwardClientCert::Sanitize)
        .then(|| http::HeaderValue::try_from(identity.xfcc_element()).ok())
        .flatten();
    Arc::new(ConnContext {
        client_cert: Some(Arc::new(identity)),
        xfcc,
        ..(*cx).clone()
    })
}

/// Run a hyper (HTTP/1) connection to completion; on shutdown, let the request in flight
/// finish first and close after its response. A connection idle past its bounds is closed the
/// same way, but only waited for as long as a header read.
async fn drive<C>(conn: C, shutdown: CancellationToken, activity: &Activity, bounds: Bounds)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = activity.idle(bounds.header_read, bounds.idle) => {
            tracing::debug!("closing idle connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(bounds.header_read, conn).await;
        }
    }
}
