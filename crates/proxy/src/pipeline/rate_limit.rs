//! Admission step: the route's rate limits, in order, before any other admission work. A
//! request over an enforcing limit gets 429 with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit` (the OpenAI error shape on inference routes, `RESOURCE_EXHAUSTED` for gRPC).

use std::net::IpAddr;
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use switchyard_balance::{hash_key, hash_source_ip};
use switchyard_config::rate_limit::LimitKey;

use super::exchange::{Reject, Routed};
use crate::error::GatewayError;

/// Out of line: most routes have no limit, and the caller checks that first, so the request's
/// future stays as small as without this step.
#[inline(never)]
pub fn check(to: Routed<'_>, headers: &HeaderMap, client: IpAddr) -> Result<(), Reject> {
    let limits = &to.route.rate_limits;
    let now = Instant::now();
    for l in limits {
        let Some(key) = key(&l.key, headers, client) else {
            continue;
        };
        if let Err(over) = l.check(key, now) {
            return Err(Reject::keep(GatewayError::RateLimited {
                limit: l.limit,
                window_secs: l.window_secs,
                retry_after_secs: over.retry_after_secs,
            }));
        }
    }
    Ok(())
}

/// The request's key for a limit; `None`: the request does not have it, and is not limited.
fn key(key: &LimitKey, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match key {
        LimitKey::Header(name) => headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
        LimitKey::ApiKey => headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(|t| hash_key(t.trim_ascii())),
        LimitKey::SourceIp => Some(hash_source_ip(client)),
        LimitKey::Route => Some(0),
    }
}
