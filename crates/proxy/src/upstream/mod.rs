//! The upstream side of a pool, behind one seam: [`Upstream::send`] takes an attempt's request
//! to endpoint `index` over whichever transport the pool speaks. HTTP/1 pools drive a pooled
//! connection inline (`h1.rs`); HTTP/2 pools multiplex over each endpoint's connection (`h2.rs`);
//! HTTP/1 upgrades (WebSocket and friends) go through hyper's pooled client (`upgrade.rs`), the
//! one transport that hands a connection over. A new transport (HTTP/3, TLS upstreams) is one
//! more variant of [`Transport`] and one more arm in `send`.

mod failure;
mod h1;
mod h2;
mod h3;
mod incoming;
mod io;
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use switchyard_balance::EndpointState;
use switchyard_resilience::CircuitBreaker;
use tokio::time::Instant;

use crate::body::RequestBody;
pub use failure::{Failure, SendError};
pub use h1::{Encoded, EndpointConns, InlineConn};
pub use h2::H2Endpoint;
pub use h3::{reconcile as reconcile_h3, H3Endpoint, H3ResponseBody};
pub use incoming::UpstreamIncoming;
pub use upgrade::UpgradeClient;

/// How a pool reaches its endpoints (each list parallel to the pool's endpoints).
pub enum Transport {
    /// Per-endpoint idle HTTP/1.1 connections, driven inline by requests.
    Http1(Box<[Arc<EndpointConns>]>),
    /// Each endpoint's multiplexed HTTP/2 connection, under the pool's connection and pending
    /// limits.
    Http2(Box<[Arc<H2Endpoint>]>),
    /// Each endpoint's QUIC connection.
    Http3(Box<[Arc<H3Endpoint>]>),
}

/// A pool's upstream transports.
pub struct Upstream {
    pub transport: Transport,
    /// Upgrades only.
    pub upgrades: UpgradeClient,
    /// `ip:port` authority for each endpoint, prebuilt for absolute upstream URIs.
    authorities: Box<[Authority]>,
}

/// An attempt's response head, and the inline HTTP/1 connection its body arrives on (the
/// other transports carry the body in the response).
pub type Sent = (Response<Option<UpstreamIncoming>>, Option<InlineConn>);

impl Upstream {
    pub fn new(transport: Transport, upgrades: UpgradeClient, addresses: &[SocketAddr]) -> Self {
        Self {
            transport,
            upgrades,
            authorities: addresses
                .iter()
                .map(|a| {
                    Authority::try_from(a.to_string().as_str())
                        .expect("a socket address is an authority")
                })
                .collect(),
        }
    }

    /// Whether an attempt at `index` bounds itself by its deadline (an inline HTTP/1 exchange
    /// times itself on its connection's lazily armed timer; the caller times the others).
    pub fn self_timed(&self, index: usize, upgrade: bool) -> bool {
        !upgrade && matches!(&self.transport, Transport::Http1(c) if index < c.len())
    }

    /// Whether `address` is served by this pool's HTTP/1 connections (kept across reloads).
    pub fn has_h1(&self, address: SocketAddr) -> bool {
        matches!(&self.transport, Transport::Http1(c) if c.iter().any(|c| c.address() == address))
    }

    /// Send one attempt to endpoint `index`. `deadline` bounds a [`Upstream::self_timed`]
    /// exchange; the other paths ignore it.
    #[allow(clippy::too_many_arguments)]
    pub fn send<'a>(
        &'a self,
        index: usize,
        parts: &http::request::Parts,
        headers: http::HeaderMap,
        body: RequestBody,
        upgrade: bool,
        deadline: Option<Instant>,
        breaker: &'a CircuitBreaker,
        state: &'a Arc<EndpointState>,
    ) -> impl Future<Output = Result<Sent, Failure>> + Send + 'a {
        // Everything up to the first await happens here, so the future holds only what the
        // exchange needs: it is moved on every request.
        let prepared = match (!upgrade).then_some(&self.transport) {
            // The inline HTTP/1 path writes the request target as given, in origin-form.
            Some(Transport::Http1(conns)) => {
                let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let req = Encoded::new(&parts.method, target, &headers, body);
                Prepared::Inline(&conns[index], req)
            }
            // Boxed, as are upgrades: the inline HTTP/1 exchange is the one path whose future is
            // not boxed, and these would otherwise make it larger to copy.
            Some(Transport::Http2(h2)) => {
                let mut req = self.absolute(index, parts, headers, body);
                host_to_authority(&mut req);
                Prepared::Pooled(Box::pin(async move {
                    h2[index]
                        .send(req, breaker, state)
                        .await
                        .map(|resp| (resp.map(|b| Some(UpstreamIncoming::Hyper(b))), None))
                        .map_err(Failure::Inline)
                }))
            }
            Some(Transport::Http3(h3)) => {
                let mut req = self.absolute(index, parts, headers, body);
                host_to_authority(&mut req);
                *req.uri_mut() = with_scheme(std::mem::take(req.uri_mut()), Scheme::HTTPS);
                Prepared::Pooled(Box::pin(async move {
                    h3[index]
                        .send(req, breaker)
                        .await
                        .map(|resp| (resp.map(Some), None))
                        .map_err(Failure::Inline)
                }))
            }
            None => {
                let req = self.absolute(index, parts, headers, body);
                Prepared::Pooled(Box::pin(async move {
                    self.upgrades
                        .request(req)
                        .await
                        .map(|resp| (resp.map(|b| Some(UpstreamIncoming::Hyper(b))), None))
                        .map_err(Failure::Pooled)
                }))
            }
        };
        async move {
            match prepared {
                Prepared::Inline(conns, req) => conns
                    .send(req, breaker, deadline)
                    .await
                    .map(|(resp, conn)| (resp.map(|()| None), Some(conn)))
                    .map_err(Failure::Inline),
                Prepared::Pooled(sending) => sending.await,
            }
        }
    }

    /// The attempt as a request with an absolute URI: HTTP/2 takes `:scheme` and `:authority`
    /// from it, and the pooled client picks its connection by it.
    fn absolute(
        &self,
        index: usize,
        parts: &http::request::Parts,
        headers: http::HeaderMap,
        body: RequestBody,
    ) -> Request<RequestBody> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authorities[index].clone());
        uri.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(uri).expect("scheme, authority and path are set");
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = parts.version;
        *req.headers_mut() = headers;
        req
    }
}

/// HTTP/2 carries the request's host as `:authority` (RFC 9113 §8.3.1), as Envoy sends it: the
/// client's `Host` (or a `url_rewrite`'s), not the endpoint's address, which only picked the
/// connection.
fn host_to_authority(req: &mut Request<RequestBody>) {
    let Some(host) = req.headers_mut().remove(http::header::HOST) else {
        return;
    };
    let Ok(authority) = http::uri::Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    uri.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path are set");
}

/// An attempt ready to go: encoded for an inline HTTP/1 exchange, or another transport's boxed
/// future.
enum Prepared<'a> {
    Inline(&'a Arc<EndpointConns>, Encoded),
    Pooled(Pin<Box<dyn Future<Output = Result<Sent, Failure>> + Send + 'a>>),
}

/// HTTP/3 is always `https` (RFC 9114 §3.1).
fn with_scheme(uri: Uri, scheme: Scheme) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(scheme);
    Uri::from_parts(parts).expect("scheme, authority and path are set")
}
