//! Resilience settings: a route's `retry` and `hedge`, a pool's `limits` and `concurrency`.
//!
//! Key names are a public contract (see `docs/resilience.md`). Every struct denies unknown keys.
//! Defaults follow Envoy where Envoy has one (retry backoff 25 ms..250 ms, retry budget 20% with
//! 3 concurrent retries minimum, circuit breakers 1024/1024/1024/3), so a route that only says
//! `retry: { attempts: 3 }` gets safe behaviour. `validate` returns `(key path, message)` pairs,
//! the path relative to the struct (the caller prefixes `routes[2].retry.`).
//!
//! One file per policy: [`retry`], [`hedge`], [`circuit_limits`], [`concurrency`], [`fairness`].

pub mod circuit_limits;
pub mod concurrency;
pub mod fairness;
pub mod hedge;
pub mod retry;

pub use circuit_limits::CircuitLimits;
pub use concurrency::{AdaptiveConcurrency, Concurrency, FixedConcurrency};
pub use fairness::Fairness;
pub use hedge::HedgeConfig;
pub use retry::{
    AutoTimeout, BackoffConfig, PerTryTimeout, RetryBudgetConfig, RetryConfig, MAX_ATTEMPTS,
};
pub use switchyard_resilience::RetryOn;

/// Problems found by `validate`: (relative key path, message).
pub type Problems = Vec<(String, String)>;

/// `inner`'s problems, their paths under `prefix`.
fn prefixed(out: &mut Problems, prefix: &str, inner: Problems) {
    out.extend(inner.into_iter().map(|(k, m)| (format!("{prefix}.{k}"), m)));
}

#[cfg(test)]
mod tests;
