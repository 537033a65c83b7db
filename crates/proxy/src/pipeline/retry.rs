//! Whether a failed or refused attempt earns another, under the route's retry policy, its retry
//! budget and the pool's circuit breaker on retries; and the wait before it.

use std::time::Duration;

use switchyard_resilience::{Attempt, BreakerGuard, Limit, RetryGuard};
use tokio::time::Instant;

use crate::gateway::{PoolEntry, RouteEntry, RouteRetry};

/// Whether to retry `attempt`, and if so after how long, holding the budget and breaker
/// guards for the retry.
pub(crate) fn retry_decision(
    route: &RouteEntry,
    pool: &PoolEntry,
    retry: Option<&RouteRetry>,
    tries: u32,
    attempt: &Attempt,
    replayable: bool,
) -> Option<(Duration, (RetryGuard, BreakerGuard))> {
    let retry = retry?;
    if !replayable {
        return None;
    }
    let decision = retry.policy.should_retry(tries, attempt)?;
    let Some(budget) = retry.budget.try_acquire_retry() else {
        route.count_retry_refused("budget");
        return None;
    };
    let Ok(breaker) = pool.breaker.try_acquire(Limit::Retries) else {
        route.count_retry_refused("breaker");
        return None;
    };
    route.count_retry(decision.reason.as_str());
    Some((decision.delay, (budget, breaker)))
}

pub(crate) async fn sleep_before_retry(delay: Duration, headers_by: Instant) {
    tokio::time::sleep_until((Instant::now() + delay).min(headers_by)).await;
}
