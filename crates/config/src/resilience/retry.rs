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
    /// Bound on each attempt up to response headers: a duration, or `auto` (see
    /// [`AutoTimeout`]); unset, only the route timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<PerTryTimeout>,
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
        match &self.per_try_timeout {
            Some(PerTryTimeout::Fixed(d)) if d.is_zero() => {
                p.push(("per_try_timeout".into(), "must be greater than zero".into()));
            }
            Some(PerTryTimeout::Auto(a)) => {
                for (k, m) in a.validate() {
                    p.push((format!("per_try_timeout.{k}"), m));
                }
            }
            _ => {}
        }
        prefixed(&mut p, "backoff", self.backoff.validate());
        prefixed(&mut p, "budget", self.budget.validate());
        p
    }
}

/// `per_try_timeout`: `2s`, or `auto`, or `{ percentile: 99, factor: 1.5, min: 10ms, max: 5s }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PerTryTimeout {
    Fixed(#[serde(with = "humantime_serde")] Duration),
    Auto(AutoTimeout),
}

impl PerTryTimeout {
    /// The fixed bound, if this is one.
    pub fn fixed(&self) -> Option<Duration> {
        match self {
            PerTryTimeout::Fixed(d) => Some(*d),
            PerTryTimeout::Auto(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for PerTryTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PerTryTimeout;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 2s, or auto, or auto's settings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PerTryTimeout, E> {
                if v == "auto" {
                    return Ok(PerTryTimeout::Auto(AutoTimeout::default()));
                }
                humantime::parse_duration(v)
                    .map(PerTryTimeout::Fixed)
                    .map_err(|e| E::custom(format!("`{v}`: {e} (a duration such as 2s, or auto)")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PerTryTimeout, A::Error> {
                AutoTimeout::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PerTryTimeout::Auto)
            }
        }
        d.deserialize_any(V)
    }
}

/// `per_try_timeout: auto`: an attempt still without its response head after `factor` × the
/// pool's recent `percentile` time to head (per requested token for non-streamed completions
/// that say `max_tokens`, times the request's), bounded by `min` and `max` and the route
/// timeout, is abandoned for a retry. Only when a retry may be sent then (attempts left, the
/// body replayable, the retry budget and breaker allow it); otherwise the attempt goes on to the
/// route timeout, so an adaptive timeout never fails a request a fixed one would not. Until the
/// pool has seen enough attempts (20 in the last seconds), there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoTimeout {
    #[serde(default = "default_auto_percentile")]
    pub percentile: f64,
    #[serde(default = "default_auto_factor")]
    pub factor: f64,
    #[serde(default = "default_auto_min", with = "humantime_serde")]
    pub min: Duration,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max: Option<Duration>,
}

impl Default for AutoTimeout {
    fn default() -> Self {
        Self {
            percentile: default_auto_percentile(),
            factor: default_auto_factor(),
            min: default_auto_min(),
            max: None,
        }
    }
}

fn default_auto_percentile() -> f64 {
    99.0
}

fn default_auto_factor() -> f64 {
    1.5
}

fn default_auto_min() -> Duration {
    Duration::from_millis(10)
}

impl AutoTimeout {
    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            p.push(("percentile", "must be above 0 and at most 100".into()));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            p.push(("factor", "must be a number of at least 1".into()));
        }
        if self.min.is_zero() {
            p.push(("min", "must be greater than zero".into()));
        }
        if self.max.is_some_and(|m| m < self.min) {
            p.push(("max", "must be at least `min`".into()));
        }
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
