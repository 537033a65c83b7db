//! A route's `retry`: how many tries, on which conditions, with what backoff, and the budget
//! that bounds retries fleet-wide. The conditions are `switchyard_resilience::RetryOn` itself,
//! so what the config accepts and what the retry policy acts on cannot drift apart; the defaults
//! are the resilience crate's constants.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_resilience::{backoff, retry_budget, retry_policy, RetryOn};

use super::{prefixed, Problems};

/// Most tries a route may configure; more only multiplies load on a failing upstream.
pub const MAX_ATTEMPTS: u32 = 10;

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries including the first; 1 means no retries.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Conditions that make an attempt worth retrying.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Bound on each attempt up to response headers; unset, only the route timeout applies.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// A `Retry-After` longer than this is not waited for; the attempt is not retried.
    #[serde(default = "default_retry_after_max", with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Largest request body, in bytes, kept so the request can be sent again.
    #[serde(default = "default_max_replay_body")]
    pub max_replay_body: u64,
    #[serde(default)]
    pub budget: RetryBudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            retry_on: default_retry_on(),
            retriable_status_codes: Vec::new(),
            per_try_timeout: None,
            backoff: BackoffConfig::default(),
            retry_after_max: default_retry_after_max(),
            max_replay_body: default_max_replay_body(),
            budget: RetryBudgetConfig::default(),
        }
    }
}

fn default_attempts() -> u32 {
    1
}

/// The two failures where the upstream certainly did not process the request.
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::RefusedStream]
}

fn default_retry_after_max() -> Duration {
    retry_policy::DEFAULT_RETRY_AFTER_MAX
}

fn default_max_replay_body() -> u64 {
    retry_policy::DEFAULT_MAX_REPLAY_BODY
}

impl RetryConfig {
    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        if !(1..=MAX_ATTEMPTS).contains(&self.attempts) {
            p.push((
                "attempts".into(),
                format!("must be between 1 and {MAX_ATTEMPTS} (tries including the first)"),
            ));
        }
        if self.attempts > 1 && self.retry_on.is_empty() {
            p.push((
                "retry_on".into(),
                "is empty, so nothing is ever retried; list conditions or set attempts: 1".into(),
            ));
        }
        let wants_codes = self.retry_on.contains(&RetryOn::RetriableStatusCodes);
        if wants_codes && self.retriable_status_codes.is_empty() {
            p.push((
                "retriable_status_codes".into(),
                "must list statuses when retry_on has retriable-status-codes".into(),
            ));
        }
        if !wants_codes && !self.retriable_status_codes.is_empty() {
            p.push((
                "retriable_status_codes".into(),
                "has no effect unless retry_on includes retriable-status-codes".into(),
            ));
        }
        for (i, code) in self.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                p.push((
                    format!("retriable_status_codes[{i}]"),
                    format!("{code} is not an HTTP status (100-599)"),
                ));
            }
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            p.push(("per_try_timeout".into(), "must be greater than zero".into()));
        }
        prefixed(&mut p, "backoff", self.backoff.validate());
        prefixed(&mut p, "budget", self.budget.validate());
        p
    }
}

/// Exponential backoff with full jitter between retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub base: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    backoff::DEFAULT_BASE
}

fn default_backoff_max() -> Duration {
    backoff::DEFAULT_MAX
}

impl BackoffConfig {
    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        if self.base.is_zero() {
            p.push(("base".into(), "must be greater than zero".into()));
        }
        if self.max < self.base {
            p.push(("max".into(), "must be at least `base`".into()));
        }
        p
    }
}

/// Retries allowed in flight: `max(min_concurrency, ratio × active requests)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_budget_min_concurrency")]
    pub min_concurrency: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_budget_ratio(),
            min_concurrency: default_budget_min_concurrency(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    retry_budget::DEFAULT_RATIO
}

fn default_budget_min_concurrency() -> u32 {
    retry_budget::DEFAULT_MIN_CONCURRENCY
}

impl RetryBudgetConfig {
    pub fn validate(&self) -> Problems {
        if self.ratio.is_finite() && (0.0..=1.0).contains(&self.ratio) {
            return Problems::new();
        }
        vec![(
            "ratio".into(),
            format!(
                "must be between 0.0 and 1.0 (0.2 = 20%), not {}",
                self.ratio
            ),
        )]
    }
}
