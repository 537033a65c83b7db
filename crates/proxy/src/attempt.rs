//! One attempt at an upstream: which endpoint (respecting what this request already tried,
//! panic mode and slow start), how the request is sent (inline HTTP/1 connection or the pooled
//! HTTP/2 client), and whether a failed or refused attempt earns a retry under the route's policy
//! and budget.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use switchyard_balance::{hash_key, hash_source_ip, PickContext};
use switchyard_config::HashKey;
use switchyard_health::Outcome;
use switchyard_resilience::{Attempt, BreakerGuard, Limit, RetryGuard, TriedSet};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::gateway::{PoolEntry, RouteEntry, RouteRetry};
use crate::record::Finish;
use crate::upstream_h1::{InlineConn, SendError};

/// The hash key a consistent-hashing balancer asks for (header, cookie or client IP).
pub(crate) fn pick_context(
    pool: &PoolEntry,
    headers: &http::HeaderMap,
    client: SocketAddr,
) -> PickContext<'static> {
    let key = match pool.spec.balancer.hash_key() {
        None => None,
        Some(HashKey::SourceIp) => Some(hash_source_ip(client.ip())),
        Some(HashKey::Header(name)) => headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
        Some(HashKey::Cookie(name)) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
    };
    key.map_or_else(PickContext::new, PickContext::with_hash_key)
}

/// Pick an endpoint this request has not tried yet (any endpoint once all were tried). A retry
/// or hedge of a request without a hash key goes to [`pick_retry_target`].
pub(crate) fn pick_untried(
    pool: &PoolEntry,
    tried: &TriedSet,
    ctx: &PickContext<'_>,
) -> Option<usize> {
    if pool.in_panic() {
        let n = pool.endpoints.len();
        let start = fastrand::usize(..n);
        return (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(*i))
            .or(Some(start));
    }
    if !tried.is_empty() && ctx.hash_key().is_none() {
        if let Some(i) = pick_retry_target(pool, tried) {
            return Some(i);
        }
    }
    let mut first = pool.picker.pick_with(&pool.endpoints, ctx)?;
    if pool.warming_declines(first) {
        first = pool.picker.pick_with(&pool.endpoints, ctx)?;
    }
    if !tried.contains(first) || tried.covers(pool.endpoints.len()) {
        return Some(first);
    }
    // Pickers are stateless about a request's history; ask again a few times, then scan.
    for _ in 0..3 {
        let i = pool.picker.pick_with(&pool.endpoints, ctx)?;
        if !tried.contains(i) {
            return Some(i);
        }
    }
    (0..pool.endpoints.len())
        .find(|&i| !tried.contains(i) && pool.endpoints[i].is_available())
        .or(Some(first))
}

/// Where a retry (or hedge) goes: an endpoint the request has not tried, available, and whose
/// latest attempt did not fail; of two such endpoints drawn at random, the one with the lower
/// peak-EWMA latency × (in flight + 1) per unit of weight (the cost Linkerd's balancer uses).
///
/// The first attempt follows the pool's balancer; a retry has one more thing to go on, that an
/// attempt just failed, and should spend it. `least_request` alone would happily send the
/// retry to an endpoint whose last request timed out (few requests in flight there, since they
/// all time out) or that just reset a stream; each such retry is one more that fails and is
/// retried again. `None` when no endpoint qualifies; the caller then takes any untried one.
/// Scans the pool (retries are rare; the first attempt never comes here).
pub(crate) fn pick_retry_target(pool: &PoolEntry, tried: &TriedSet) -> Option<usize> {
    let eligible = |i: usize| {
        let e = &pool.endpoints[i];
        !tried.contains(i) && e.is_available() && !e.state.is_failing()
    };
    let n = pool.endpoints.len();
    let count = (0..n).filter(|&i| eligible(i)).count();
    let nth = |k: usize| (0..n).filter(|&i| eligible(i)).nth(k);
    let a = nth(fastrand::usize(..count.max(1)))?;
    if count == 1 {
        return Some(a);
    }
    let b = loop {
        let b = nth(fastrand::usize(..count))?;
        if b != a {
            break b;
        }
    };
    let now = std::time::Instant::now();
    let cost = |i: usize| {
        let e = &pool.endpoints[i];
        let latency = e.state.latency_at(now).map_or(0.0, |d| d.as_secs_f64());
        (latency + 1e-6) * (e.state.in_flight() + 1) as f64 / f64::from(e.weight.max(1))
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

/// Tell outlier detection (and the endpoint's failing flag) how a response went. A streamed
/// (`text/event-stream`) 2xx is not a success yet: an inference server sends its headers when it
/// accepts the request, before queueing and generating, so the headers of a stream say as much
/// about a stalled or crawling replica as about a healthy one. Counting them as successes lets
/// a 10× slow replica, whose whole-reply requests all time out, reset its gateway-error streak
/// with every stream it starts and stay in the pool. Its success is recorded when the stream
/// ends cleanly ([`Finish::complete`]); a stream cut mid-body is a gateway error as before, and
/// one the client abandons counts for nothing.
pub(crate) fn record_response(
    pool: &PoolEntry,
    index: usize,
    status: http::StatusCode,
    event_stream: bool,
    finish: &mut Finish,
) {
    let outcome = Outcome::from_status(status.as_u16());
    if outcome == Outcome::Success && event_stream {
        finish.defer_success();
    } else {
        pool.record_outcome(index, outcome);
    }
}

/// Bodies up to this size are kept for replay when a route hedges without a retry policy.
pub(crate) const DEFAULT_MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Start one attempt at endpoint `index`: HTTP/1 pools drive a pooled connection inline; HTTP/2
/// pools multiplex over the endpoint's connection (`upstream_h2`); upgrades go through the
/// pooled client.
/// `deadline`: an inline HTTP/1 exchange bounds itself by it, on its connection's lazily armed
/// timer; the other paths ignore it and are timed by the caller.
pub(crate) fn send_attempt<'a>(
    pool: &'a PoolEntry,
    index: usize,
    parts: &http::request::Parts,
    headers: http::HeaderMap,
    body: RequestBody,
    upgrade: bool,
    deadline: Option<Instant>,
) -> impl std::future::Future<
    Output = Result<(Response<Option<Incoming>>, Option<InlineConn>), Failure>,
> + 'a {
    let inline = pool.h1.get(index).filter(|_| !upgrade);
    let h2 = pool.h2.get(index).filter(|_| !upgrade);
    let mut uri = http::uri::Parts::default();
    if inline.is_none() {
        // HTTP/2 takes `:scheme` and `:authority` from an absolute URI (as the pooled client
        // picks its connection by it); the inline HTTP/1 path writes the request target as
        // given, so it gets origin-form.
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(pool.authorities[index].clone());
    }
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(uri).expect("path is set; scheme and authority go together");
    let req = attempt_request(parts, headers, uri, body);
    async move {
        match (inline, h2) {
            (Some(conns), _) => conns
                .send(req, &pool.breaker, deadline)
                .await
                .map(|(resp, conn)| (resp.map(|()| None), Some(conn)))
                .map_err(Failure::Inline),
            (None, Some(h2)) => h2
                .send(req, &pool.breaker, &pool.endpoints[index].state)
                .await
                .map(|resp| (resp.map(Some), None))
                .map_err(Failure::Inline),
            (None, None) => pool
                .client
                .request(req)
                .await
                .map(|resp| (resp.map(Some), None))
                .map_err(Failure::Pooled),
        }
    }
}

/// One attempt's request, from the rewritten head and a body.
pub(crate) fn attempt_request(
    parts: &http::request::Parts,
    headers: http::HeaderMap,
    uri: Uri,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = headers;
    req
}

/// Whether to retry `attempt`, and if so after how long, holding the budget and breaker
/// guards for the retry.
pub(crate) fn retry_decision(
    route: &RouteEntry,
    pool: &PoolEntry,
    retry: Option<&RouteRetry>,
    tries: u32,
    tried: &TriedSet,
    attempt: &Attempt,
    replayable: bool,
) -> Option<(Duration, (RetryGuard, BreakerGuard))> {
    let retry = retry?;
    if !replayable {
        return None;
    }
    let decision = retry.policy.should_retry(tries, attempt)?;
    let _ = tried;
    let Some(budget) = retry.budget.try_acquire_retry() else {
        route.count_retry_refused("budget");
        return None;
    };
    let breaker = match pool.breaker.try_acquire(Limit::Retries) {
        Ok(g) => g,
        Err(_) => {
            route.count_retry_refused("breaker");
            return None;
        }
    };
    route.count_retry(decision.reason.as_str());
    Some((decision.delay, (budget, breaker)))
}

pub(crate) async fn sleep_before_retry(delay: Duration, headers_by: Instant) {
    tokio::time::sleep_until((Instant::now() + delay).min(headers_by)).await;
}

/// How sending upstream failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// From our own clients: the inline HTTP/1 connection or the HTTP/2 connection.
    Inline(SendError),
    /// From the pooled client (upgrades).
    Pooled(hyper_util::client::legacy::Error),
}

impl Failure {
    /// Whether the upstream is to blame (not a local limit or the client's body).
    pub(crate) fn is_upstream(&self) -> bool {
        !matches!(
            self,
            Failure::Inline(SendError::Overflow(_) | SendError::Body(_))
        )
    }

    /// The gateway error type this failure stands for (for a hedge's span, which fails alone).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Inline(SendError::Connect(_) | SendError::ConnectTimeout) => {
                "upstream_connect_failure"
            }
            Failure::Inline(SendError::Overflow(_)) => "overflow",
            Failure::Inline(SendError::Timeout) => "timeout",
            Failure::Pooled(e) if e.is_connect() => "upstream_connect_failure",
            _ => "upstream_reset",
        }
    }

    /// The outcome for outlier detection: a gateway error, and a decisive one when the
    /// connection was refused (nothing listens there).
    pub(crate) fn outcome(&self) -> Outcome {
        let refused = match self {
            Failure::Inline(SendError::Connect(e)) => {
                e.kind() == std::io::ErrorKind::ConnectionRefused
            }
            Failure::Pooled(e) if e.is_connect() => {
                let mut source = std::error::Error::source(e);
                let mut refused = false;
                while let Some(err) = source {
                    if let Some(io) = err.downcast_ref::<std::io::Error>() {
                        refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                    }
                    source = err.source();
                }
                refused
            }
            _ => false,
        };
        if refused {
            Outcome::ConnectRefused
        } else {
            Outcome::GatewayError
        }
    }
}
