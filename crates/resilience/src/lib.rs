//! Resilience controllers for the request path: when to retry, how many retries the fleet can
//! afford, when a pool is full, when to hedge, and how much concurrency an upstream can take.
//!
//! Each controller is a small type in its own file, synchronous where it can be, with state kept
//! in atomics or under a short lock, and RAII guards so that a count can never leak when a
//! request future is dropped midway. Time comes from `tokio::time::Instant`, so every controller
//! is tested deterministically under `tokio::time::pause()`.
//!
//! This crate decides; it never sends. The proxy (`switchyard-proxy`) owns the request, the
//! bodies and the upstream connections, and asks these types at fixed points of a request:
//!
//! 1. admission: [`CircuitBreaker::try_acquire`] for `requests` (and `pending` while waiting for
//!    a connection), [`ConcurrencyLimiter::acquire_as`] (priority and tenant), [`RetryBudget::start_request`],
//!    [`Hedger::start_request`];
//! 2. after each attempt: [`RetryPolicy::should_retry`] on an [`Attempt`], then
//!    [`RetryBudget::try_acquire_retry`] and the breaker's `retries` limit, then sleep the delay;
//! 3. hedging: [`Hedger::delay`], and when it fires [`Hedger::try_acquire_hedge`];
//! 4. completion: drop the guards; [`Hedger::record_latency`] with the winning attempt's latency.
//!
//! See `docs/resilience.md` for the configuration and the full sequence.

// The request path never panics on a missing value: it answers or fails the request.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod adaptive_concurrency;
pub mod backoff;
pub mod circuit_breaker;
pub mod concurrency_limiter;
pub mod fair_queue;
pub mod hedge;
pub mod latency_histogram;
pub mod retry_budget;
pub mod retry_policy;

pub use adaptive_concurrency::{Gradient, GradientParams};
pub use backoff::{parse_retry_after, Backoff};
pub use circuit_breaker::{BreakerGuard, CircuitBreaker, CircuitLimits, Limit, Overflow};
pub use concurrency_limiter::{
    ConcurrencyLimiter, ConcurrencyMode, LimiterStats, Permit, QueueParams, Rejected,
};
pub use fair_queue::{QueueClass, PRIORITY_LEVELS};
pub use hedge::{HedgeDelay, HedgeGuard, HedgeParams, HedgeStats, Hedger};
pub use latency_histogram::LatencyHistogram;
pub use retry_budget::{RequestGuard, RetryBudget, RetryBudgetStats, RetryGuard};
pub use retry_policy::{
    replayable, Attempt, GrpcCode, Retry, RetryOn, RetryPolicy, RetryReason, TriedSet,
};
