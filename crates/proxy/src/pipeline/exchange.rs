//! The per-request context every stage reads and writes: the client connection, what one pass
//! over the request headers found, the request id, and the bookkeeping that ends with the last
//! byte ([`Finish`]). Stages that refuse a request return a [`Reject`]; the pipeline turns it
//! into the gateway's own response.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};
use tokio::time::Instant;

use crate::body::{ClientBody, ResponseBody};
use crate::error::GatewayError;
use crate::finish::{AccessInfo, Finish};
use crate::gateway::{Gateway, GatewayHandle, PoolEntry, RouteEntry, RouteTarget};
use crate::headers::RequestScan;

/// What the request path needs to know about the client connection.
#[derive(Clone)]
pub struct ConnContext {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The client IP, preformatted for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    pub https: bool,
    /// The listener's port (a redirect's default port).
    pub local_port: u16,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub access_log: bool,
    /// Set by the HTTP/1 framing guard on this connection's socket.
    pub framing: Arc<crate::framing_guard::FramingFlags>,
    /// Which control headers this listener's clients are trusted with.
    pub trust: Trust,
    /// How this listener normalizes request paths.
    pub paths: switchyard_config::PathNormalization,
    /// The client certificate verified in this connection's handshake, if any.
    pub client_cert: Option<Arc<crate::tls::ClientIdentity>>,
    /// What `x-forwarded-client-cert` becomes upstream.
    pub forward_client_cert: switchyard_config::ForwardClientCert,
    /// This connection's `x-forwarded-client-cert` element, prebuilt when the listener forwards
    /// it.
    pub xfcc: Option<HeaderValue>,
}

/// The control headers a listener honours from its clients (`listeners[].trusted_headers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trust {
    /// `x-switchyard-priority` may raise a request above its route's priority.
    pub priority: bool,
    /// `x-switchyard-debug: 1` is answered with the pick's explanation.
    pub debug: bool,
}

impl Trust {
    pub fn of(headers: &[switchyard_config::TrustedHeader]) -> Self {
        use switchyard_config::TrustedHeader;
        Self {
            priority: headers.contains(&TrustedHeader::Priority),
            debug: headers.contains(&TrustedHeader::Debug),
        }
    }
}

/// Who writes the response to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// The HTTP/1.1 fast path (`h1_server`), which writes raw upstream heads as they came.
    Http1,
    /// Every other server (`h2_server`, HTTP/3, hyper's for the HTTP/1 fallback): responses
    /// carry a header map.
    Hyper,
}

/// One request on its way through the stages.
pub struct Exchange<'c> {
    pub conn: &'c ConnContext,
    /// Everything the path reads from the request headers, in one pass.
    pub scan: RequestScan,
    pub request_id: HeaderValue,
    pub finish: Finish,
    /// Headers stages add to the upstream's response (a sticky split's `Set-Cookie`).
    pub response_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// The client asked for an ORCA load report (a parent gateway): this gateway's, or `None`
    /// when it has none; either way it replaces the endpoint's.
    pub load_report: Option<Option<HeaderValue>>,
}

/// Where routing sent a request.
#[derive(Clone, Copy)]
pub struct Routed<'g> {
    pub route: &'g RouteEntry,
    pub target: &'g RouteTarget,
}

impl<'g> Routed<'g> {
    pub fn pool(&self) -> &'g PoolEntry {
        &self.target.pool
    }

    /// Whether the `inference` picker scores this request: its pool is an `inference` pool and
    /// `path` is one of the OpenAI APIs it reads. Any other path through such a pool (`/v1/models`,
    /// `/health`, `/tokenize`, ...) is forwarded as it is, picked by the pool's fallback balancer,
    /// as vllm-router, smg and Envoy do.
    pub fn inference_api(&self, path: &str) -> bool {
        self.target.pool.inference.is_some()
            && switchyard_inference::ApiKind::from_path(path).is_some()
    }
}

/// A stage refused the request: answer `error`, and close the client connection when the
/// request's framing can no longer be trusted.
#[derive(Debug, Clone, Copy)]
pub struct Reject {
    pub error: GatewayError,
    pub close: bool,
}

impl Reject {
    /// Answer and keep the connection.
    pub fn keep(error: GatewayError) -> Self {
        Self {
            error,
            close: false,
        }
    }

    /// Answer and close: the rest of the request's bytes cannot be skipped safely.
    pub fn close(error: GatewayError) -> Self {
        Self { error, close: true }
    }
}

/// Why the pipeline stopped before an upstream answered.
pub enum Stop {
    /// A gateway error, answered in the client's protocol (JSON, OpenAI or gRPC).
    Reject(Reject),
    /// A stage's own complete answer (a malformed OpenAI body's 400; redirects and direct
    /// responses), with the error type the access log and span record (`None` for answers that
    /// are not errors).
    Respond(Box<Response<ResponseBody>>, Option<&'static str>),
}

impl From<Reject> for Stop {
    fn from(r: Reject) -> Self {
        Self::Reject(r)
    }
}

impl<'c> Exchange<'c> {
    /// What a route filter's values may read of this request.
    pub fn filter_vars<'a>(&'a self, route: &'a str) -> crate::filters::Vars<'a> {
        crate::filters::Vars {
            request_id: &self.request_id,
            client_ip: &self.conn.client_ip,
            route,
        }
    }

    /// Start the bookkeeping of a request that arrived now: request id, access log details,
    /// and (with `tracing`) its SERVER span.
    pub fn start<B>(
        handle: &GatewayHandle,
        gateway: &Gateway,
        conn: &'c ConnContext,
        req: &Request<B>,
    ) -> Self {
        let start = Instant::now();
        let scan = RequestScan::new(req.headers());
        let request_id = scan.request_id();
        let access = conn.access_log.then(|| {
            Box::new(AccessInfo {
                log: handle.access_log().clone(),
                listener: conn.listener.clone(),
                request_id: request_id.clone(),
                client: conn.client,
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                version: req.version(),
                client_cert: conn.client_cert.clone(),
            })
        });
        let trace = gateway.tracing.as_ref().map(|t| {
            Box::new(t.start_request(
                req.method(),
                req.uri().path(),
                req.version(),
                req.headers(),
                conn.client,
                &request_id,
            ))
        });
        let mut finish = Finish::new(start, access, trace);
        if handle.observer.wants_requests() {
            finish.observe(
                handle.observer.clone(),
                crate::observe::RequestMeta {
                    id: crate::observe::recent::RequestId::new(request_id.as_bytes()),
                    method: req.method().clone(),
                    path: crate::observe::recent::RequestPath::new(req.uri().path().as_bytes()),
                },
            );
        }
        Self {
            conn,
            scan,
            request_id,
            finish,
            response_headers: Vec::new(),
            load_report: None,
        }
    }

    /// When the request arrived.
    pub fn start_time(&self) -> Instant {
        self.finish.start()
    }
}

/// A client request as the listeners hand it over.
pub type ClientRequest = Request<ClientBody>;
