//! Admission step: the route's rate limits, in order, before any other admission work. A
//! request over an enforcing limit gets 429 with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit` (the OpenAI error shape on inference routes, `RESOURCE_EXHAUSTED` for gRPC).
//! A token limit reserves the request's estimate here (from its parsed OpenAI body; a request
//! the gateway did not parse is not counted by it) and hands the reservation to `Finish`,
//! which settles it with the response's usage.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use switchyard_balance::{hash_key, hash_source_ip};
use switchyard_config::rate_limit::{KeySpec, LimitKey};

use super::exchange::{Exchange, Reject, Routed};
use crate::error::GatewayError;
use crate::rate_limit::TokenCharge;
use switchyard_inference::InferenceRequest;

/// Most routes have no limit: the caller checks that first, and boxes this future only for
/// routes that have, so the request's own future stays as small as without this step.
pub async fn check(
    rx: &mut Exchange<'_>,
    to: Routed<'_>,
    headers: &HeaderMap,
    parsed: Option<&InferenceRequest>,
) -> Result<(), Reject> {
    let limits = &to.route.rate_limits;
    let client = rx.conn.client.ip();
    let now = Instant::now();
    for l in limits {
        let Some(key) = key(&l.key, headers, client, parsed).or(l.default_key) else {
            continue;
        };
        let outcome = if l.counts_tokens() {
            let Some(p) = parsed else { continue };
            let cost = l.estimate(p.prompt_tokens, p.messages, p.max_tokens);
            let reserved = if l.is_shared() {
                l.reserve_shared(key, cost).await
            } else {
                l.reserve(key, cost, crate::rate_limit::unix_secs())
            };
            reserved.map(|reservation| {
                rx.finish.charge(TokenCharge {
                    limiter: Arc::clone(l),
                    reservation,
                });
            })
        } else if l.is_shared() {
            l.reserve_shared(key, 1).await.map(|_| ())
        } else {
            l.check(key, now)
        };
        if let Err(over) = outcome {
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
fn key(
    spec: &KeySpec,
    headers: &HeaderMap,
    client: IpAddr,
    parsed: Option<&InferenceRequest>,
) -> Option<u64> {
    match spec {
        KeySpec::One(k) => part(k, headers, client, parsed),
        KeySpec::All(parts) => {
            let mut joined = Vec::with_capacity(parts.len() * 8);
            for k in parts {
                joined.extend_from_slice(&part(k, headers, client, parsed)?.to_le_bytes());
            }
            Some(hash_key(&joined))
        }
    }
}

fn part(
    key: &LimitKey,
    headers: &HeaderMap,
    client: IpAddr,
    parsed: Option<&InferenceRequest>,
) -> Option<u64> {
    match key {
        LimitKey::Header(name) => headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
        LimitKey::ApiKey => headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(|t| hash_key(t.trim_ascii())),
        LimitKey::SourceIp => Some(hash_source_ip(client)),
        LimitKey::Route => Some(0),
        LimitKey::Model => parsed.map(|p| hash_key(p.model.as_bytes())),
    }
}
