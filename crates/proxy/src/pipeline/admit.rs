//! Stage 3, admission: each step may refuse the request or hand back a guard held until its
//! response head (or its end, for the retry budget). The steps run in order: the circuit
//! breaker, then the concurrency limit, which may queue (by priority, tenants taking turns:
//! `crate::admission`). The route's rate limits (`rate_limit.rs`) run just before, in
//! `forward`: a token limit needs the parsed body and hands its reservation to `Finish`. A new
//! admission policy is one more step here: a file of its own and one line in [`admit`].

use http::HeaderMap;
use switchyard_config::Priority;
use switchyard_resilience::{BreakerGuard, Limit, Permit, RequestGuard};

use super::exchange::Routed;
use super::exchange::{Exchange, Reject};
use crate::error::GatewayError;
use crate::pool::PoolEntry;

/// The guards of an admitted request.
pub struct Admitted {
    _breaker: BreakerGuard,
    /// The concurrency limiter's permit; it learns from the request's latency when it succeeds.
    pub permit: Option<Permit>,
    /// The request's place in its route's retry budget (held to the end of the body).
    pub budget: Option<RequestGuard>,
}

/// The priority a request runs at: its route's, unless `x-switchyard-priority` lowers it, or
/// raises it on a listener that trusts its clients with that (`trusted_headers: [priority]`).
/// An untrusted client can give up its own place, never take another's.
pub fn priority(rx: &Exchange<'_>, to: Routed<'_>) -> Priority {
    let route = to.route.priority;
    match rx.scan.priority {
        Some(p) if p <= route || rx.conn.trust.priority => p,
        _ => route,
    }
}

pub async fn admit(
    rx: &Exchange<'_>,
    to: Routed<'_>,
    headers: &HeaderMap,
) -> Result<Admitted, Reject> {
    let pool = to.pool();
    let breaker = breaker(pool)?;
    let permit = concurrency(pool, priority(rx, to), headers).await?;
    let budget = to.route.retry.as_ref().map(|r| r.budget.start_request());
    Ok(Admitted {
        _breaker: breaker,
        permit,
        budget,
    })
}

/// The pool's circuit breaker on concurrent requests.
fn breaker(pool: &PoolEntry) -> Result<BreakerGuard, Reject> {
    pool.breaker
        .try_acquire(Limit::Requests)
        .map_err(|overflow| {
            let which = overflow.limit.as_str();
            pool.count_overflow(which);
            Reject::keep(GatewayError::Overflow(which))
        })
}

/// The pool's concurrency limit: sheddable requests never queue; the others wait by priority,
/// tenants taking turns.
async fn concurrency(
    pool: &PoolEntry,
    priority: Priority,
    headers: &HeaderMap,
) -> Result<Option<Permit>, Reject> {
    let (Some(limiter), Some(admission)) = (&pool.limiter, &pool.admission) else {
        return Ok(None);
    };
    // Boxed: a queue wait is the slow path, and unboxed its future would swell the request's
    // future, which every request moves.
    match Box::pin(admission.admit(limiter, priority, headers)).await {
        Ok(p) => Ok(Some(p)),
        Err(refused) => {
            pool.count_overflow(refused.reason);
            Err(Reject::keep(refused.error))
        }
    }
}
