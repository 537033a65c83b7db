//! Which endpoint an attempt goes to: the pool's balancer for a first attempt (with panic mode
//! and slow start), and for a retry or hedge an endpoint this request has not tried, preferring
//! one whose last attempt did not fail.

use std::net::SocketAddr;

use switchyard_balance::{hash_key, hash_source_ip, PickContext};
use switchyard_config::HashKey;
use switchyard_resilience::TriedSet;

use crate::pool::PoolEntry;

/// The hash key a consistent-hashing balancer asks for (header, cookie or client IP).
#[inline]
pub(crate) fn pick_context(
    pool: &PoolEntry,
    headers: &http::HeaderMap,
    client: SocketAddr,
) -> PickContext<'static> {
    let key = match pool.spec.balancer.hash_key() {
        None => None,
        Some(HashKey::SourceIp) => Some(hash_source_ip(client.ip())),
        Some(HashKey::Header(name)) => headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
        Some(HashKey::Cookie(name)) => {
            crate::headers::cookie(headers, name).map(|v| hash_key(v.as_bytes()))
        }
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
    // A first attempt stays in the nearest tier with room (locality); retries and hedges go
    // wherever an untried endpoint is.
    if tried.is_empty() {
        if let Some(tier) = pool.locality.as_ref().and_then(|l| l.choose()) {
            if let Some(j) = pool.picker.pick_with(&tier.endpoints, ctx) {
                return tier.indices.get(j).copied();
            }
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
