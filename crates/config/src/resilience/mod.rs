//! Resilience settings: a route's `retry` and `hedge`, a pool's `limits` and `concurrency`.
//!
//! Key names are a public contract (see `docs/resilience.md`). Every struct denies unknown keys.
//! Defaults follow Envoy where Envoy has one (retry backoff 25 ms..250 ms, retry budget 20% with
//! 3 concurrent retries minimum, circuit breakers 1024/1024/1024/3), so a route that only says
//! `retry: { attempts: 3 }` gets safe behaviour. `validate` returns `(key path, message)` pairs,
//! the path relative to the struct (the caller prefixes `routes[2].retry.`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Problems found by `validate`: (relative key path, message).
pub type Problems = Vec<(String, String)>;

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
    Duration::from_secs(10)
}

fn default_max_replay_body() -> u64 {
    64 * 1024
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

fn prefixed(out: &mut Problems, prefix: &str, inner: Problems) {
    out.extend(inner.into_iter().map(|(k, m)| (format!("{prefix}.{k}"), m)));
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
    Duration::from_millis(25)
}

fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
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
    0.2
}

fn default_budget_min_concurrency() -> u32 {
    3
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

/// One `retry_on` condition. Names follow Envoy's `x-envoy-retry-on` and gRPC status names;
/// `503` and `429` may be written as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    ConnectFailure,
    RefusedStream,
    Reset,
    FiveXx,
    GatewayError,
    Status503,
    Status429,
    RetriableStatusCodes,
    GrpcCancelled,
    GrpcDeadlineExceeded,
    GrpcResourceExhausted,
    GrpcInternal,
    GrpcUnavailable,
}

const RETRY_ON_NAMES: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "503",
    "429",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

const RETRY_ON_ALL: [RetryOn; 13] = [
    RetryOn::ConnectFailure,
    RetryOn::RefusedStream,
    RetryOn::Reset,
    RetryOn::FiveXx,
    RetryOn::GatewayError,
    RetryOn::Status503,
    RetryOn::Status429,
    RetryOn::RetriableStatusCodes,
    RetryOn::GrpcCancelled,
    RetryOn::GrpcDeadlineExceeded,
    RetryOn::GrpcResourceExhausted,
    RetryOn::GrpcInternal,
    RetryOn::GrpcUnavailable,
];

impl RetryOn {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        let i = RETRY_ON_ALL.iter().position(|c| *c == self).unwrap_or(0);
        RETRY_ON_NAMES[i]
    }

    /// The condition named `name`.
    pub fn from_name(name: &str) -> Option<RetryOn> {
        let i = RETRY_ON_NAMES.iter().position(|n| *n == name)?;
        Some(RETRY_ON_ALL[i])
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a retry condition such as `connect-failure`, `5xx` or `503`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RetryOn, E> {
                RetryOn::from_name(s).ok_or_else(|| E::unknown_variant(s, RETRY_ON_NAMES))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RetryOn, E> {
                match n {
                    503 => Ok(RetryOn::Status503),
                    429 => Ok(RetryOn::Status429),
                    _ => Err(E::custom(format!(
                        "`{n}` is not a retry condition; only 503 and 429 are named by number, \
                         use `retriable-status-codes` for others"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RetryOn, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("`{n}` is not a retry condition"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A route's hedging: `{ delay: 50ms }` or `{ percentile: 95 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// Send the hedge after this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// Send the hedge after the route's observed latency at this percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Hedges allowed per 100 requests.
    #[serde(default = "default_hedge_budget")]
    pub budget_percent: f64,
}

fn default_hedge_budget() -> f64 {
    10.0
}

impl HedgeConfig {
    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        match (self.delay, self.percentile) {
            (Some(_), Some(_)) => p.push((
                "delay".into(),
                "set either `delay` or `percentile`, not both".into(),
            )),
            (None, None) => p.push(("delay".into(), "set `delay` or `percentile`".into())),
            (None, Some(q)) if !(q.is_finite() && q > 0.0 && q < 100.0) => p.push((
                "percentile".into(),
                format!("must be above 0 and below 100, not {q}"),
            )),
            _ => {}
        }
        let b = self.budget_percent;
        if !(b.is_finite() && (0.0..=100.0).contains(&b)) {
            p.push((
                "budget_percent".into(),
                format!("must be between 0 and 100, not {b}"),
            ));
        }
        p
    }
}

/// A pool's circuit-breaker thresholds (Envoy semantics and defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitLimits {
    #[serde(default = "default_limit")]
    pub max_connections: u32,
    #[serde(default = "default_limit")]
    pub max_pending: u32,
    #[serde(default = "default_limit")]
    pub max_requests: u32,
    /// A pool-wide cap on retries in flight, on top of the routes' retry budgets. Unset by
    /// default: every retry policy has a budget, and in Envoy a retry budget replaces the
    /// `max_retries` breaker (whose default of 3 would refuse retries that a busy route's budget
    /// allows, failing requests that a retry would have saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        CircuitLimits {
            max_connections: default_limit(),
            max_pending: default_limit(),
            max_requests: default_limit(),
            max_retries: None,
        }
    }
}

fn default_limit() -> u32 {
    1024
}

impl CircuitLimits {
    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_requests", self.max_requests),
        ] {
            if v == 0 {
                p.push((
                    key.into(),
                    "must be at least 1, or no request can pass".into(),
                ));
            }
        }
        p
    }
}

/// How tenants share a pool's concurrency queue: within a priority, waiting requests are
/// admitted one tenant at a time in turn, and one tenant may hold at most
/// `max_queued_per_tenant` places in the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fairness {
    /// Header whose value names the tenant (say `x-tenant`, set by an authenticating proxy).
    /// Without it, or when a request lacks it, the tenant is the bearer API key of
    /// `authorization`, hashed; requests with neither share one anonymous turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_header: Option<String>,
    /// Places one tenant may hold in the queue at one priority; default a quarter of the
    /// concurrency `max_queue` (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_per_tenant: Option<u32>,
}

impl Fairness {
    /// The per-tenant share for a queue of `max_queue`.
    pub fn max_queued_per_tenant(&self, max_queue: u32) -> u32 {
        self.max_queued_per_tenant.unwrap_or((max_queue / 4).max(1))
    }

    /// Problems, given the pool's concurrency setting (fairness shares its queue).
    pub fn validate(&self, concurrency: Option<&Concurrency>) -> Problems {
        let mut p = Problems::new();
        if let Some(name) = &self.tenant_header {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                p.push((
                    "tenant_header".into(),
                    format!("`{name}` is not a valid header name"),
                ));
            } else if name.eq_ignore_ascii_case("authorization") {
                p.push((
                    "tenant_header".into(),
                    "leave it unset to take the tenant from `authorization` (the key is hashed)"
                        .into(),
                ));
            }
        }
        let Some(concurrency) = concurrency else {
            p.push((
                String::new(),
                "has no effect without `concurrency`: tenants share the concurrency queue".into(),
            ));
            return p;
        };
        let max_queue = concurrency.max_queue();
        match self.max_queued_per_tenant {
            Some(0) => p.push(("max_queued_per_tenant".into(), "must be at least 1".into())),
            Some(n) if n > max_queue => p.push((
                "max_queued_per_tenant".into(),
                format!(
                    "{n} is above the pool's `concurrency.max_queue` ({max_queue}), so one \
                     tenant could fill the whole queue"
                ),
            )),
            _ => {}
        }
        p
    }
}

/// A pool's concurrency limit: `adaptive`, a fixed number (`64`), or a map with `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Concurrency {
    Fixed(FixedConcurrency),
    Adaptive(AdaptiveConcurrency),
}

/// A fixed limit, with the queue in front of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedConcurrency {
    pub limit: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

/// Envoy's gradient controller bounds and timing, with the queue in front of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConcurrency {
    pub min_limit: u32,
    pub max_limit: u32,
    pub sample_window: Duration,
    pub min_rtt_interval: Duration,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

const DEFAULT_MAX_QUEUE: u32 = 128;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

impl FixedConcurrency {
    pub fn new(limit: u32) -> FixedConcurrency {
        FixedConcurrency {
            limit,
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        AdaptiveConcurrency {
            min_limit: 3,
            max_limit: 1000,
            sample_window: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(60),
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

const CONCURRENCY_KINDS: &[&str] = &["fixed", "adaptive"];
const QUEUE_KEYS: [&str; 2] = ["max_queue", "queue_timeout"];
const FIXED_KEYS: &[&str] = &["kind", "limit", "max_queue", "queue_timeout"];
const ADAPTIVE_KEYS: &[&str] = &[
    "kind",
    "min_limit",
    "max_limit",
    "sample_window",
    "min_rtt_interval",
    "max_queue",
    "queue_timeout",
];
const CONCURRENCY_KEYS: &[&str] = &[
    "kind",
    "limit",
    "min_limit",
    "max_limit",
    "sample_window",
    "min_rtt_interval",
    "max_queue",
    "queue_timeout",
];

impl Concurrency {
    fn keys(kind: &str) -> &'static [&'static str] {
        if kind == "fixed" {
            FIXED_KEYS
        } else {
            ADAPTIVE_KEYS
        }
    }

    /// Requests that may wait for a slot.
    pub fn max_queue(&self) -> u32 {
        match self {
            Concurrency::Fixed(f) => f.max_queue,
            Concurrency::Adaptive(a) => a.max_queue,
        }
    }

    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        let (max_queue, queue_timeout) = match self {
            Concurrency::Fixed(f) => {
                if f.limit == 0 {
                    p.push(("limit".into(), "must be at least 1".into()));
                }
                (f.max_queue, f.queue_timeout)
            }
            Concurrency::Adaptive(a) => {
                if a.min_limit == 0 {
                    p.push(("min_limit".into(), "must be at least 1".into()));
                }
                if a.max_limit < a.min_limit {
                    p.push(("max_limit".into(), "must be at least `min_limit`".into()));
                }
                if a.sample_window.is_zero() {
                    p.push(("sample_window".into(), "must be greater than zero".into()));
                }
                if a.min_rtt_interval <= a.sample_window {
                    p.push((
                        "min_rtt_interval".into(),
                        "must be longer than `sample_window`".into(),
                    ));
                }
                (a.max_queue, a.queue_timeout)
            }
        };
        if max_queue > 0 && queue_timeout.is_zero() {
            p.push((
                "queue_timeout".into(),
                "must be greater than zero when `max_queue` is above 0".into(),
            ));
        }
        p
    }
}

/// The settings of a concurrency map, before `kind` decides which are allowed.
#[derive(Default)]
struct Settings {
    limit: Option<u32>,
    min_limit: Option<u32>,
    max_limit: Option<u32>,
    sample_window: Option<Duration>,
    min_rtt_interval: Option<Duration>,
    max_queue: Option<u32>,
    queue_timeout: Option<Duration>,
}

/// A humantime duration (`10s`, `3m`) as a map value.
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
}

fn read_setting<'de, A: MapAccess<'de>>(
    map: &mut A,
    key: &str,
    s: &mut Settings,
) -> Result<(), A::Error> {
    let duration = |map: &mut A| map.next_value::<HumanDuration>().map(|d| Some(d.0));
    match key {
        "limit" => s.limit = Some(map.next_value()?),
        "min_limit" => s.min_limit = Some(map.next_value()?),
        "max_limit" => s.max_limit = Some(map.next_value()?),
        "max_queue" => s.max_queue = Some(map.next_value()?),
        "sample_window" => s.sample_window = duration(map)?,
        "min_rtt_interval" => s.min_rtt_interval = duration(map)?,
        "queue_timeout" => s.queue_timeout = duration(map)?,
        _ => unreachable!("caller checks the key against CONCURRENCY_KEYS"),
    }
    Ok(())
}

impl Concurrency {
    fn from_settings<E: de::Error>(kind: &str, s: Settings) -> Result<Self, E> {
        let queue_timeout = s.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT);
        let max_queue = s.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
        Ok(match kind {
            "fixed" => Concurrency::Fixed(FixedConcurrency {
                limit: s.limit.ok_or_else(|| E::missing_field("limit"))?,
                max_queue,
                queue_timeout,
            }),
            "adaptive" => {
                let d = AdaptiveConcurrency::default();
                Concurrency::Adaptive(AdaptiveConcurrency {
                    min_limit: s.min_limit.unwrap_or(d.min_limit),
                    max_limit: s.max_limit.unwrap_or(d.max_limit),
                    sample_window: s.sample_window.unwrap_or(d.sample_window),
                    min_rtt_interval: s.min_rtt_interval.unwrap_or(d.min_rtt_interval),
                    max_queue,
                    queue_timeout,
                })
            }
            other => return Err(E::unknown_variant(other, CONCURRENCY_KINDS)),
        })
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Concurrency;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`adaptive`, a fixed limit such as 64, or a map with `kind`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Concurrency, E> {
                match s {
                    "adaptive" => Ok(Concurrency::Adaptive(AdaptiveConcurrency::default())),
                    other => Err(E::unknown_variant(other, &["adaptive"])),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Concurrency, E> {
                match u32::try_from(n) {
                    Ok(n) if n > 0 => Ok(Concurrency::Fixed(FixedConcurrency::new(n))),
                    _ => Err(E::custom(format!(
                        "a fixed concurrency must be between 1 and {}, not {n}",
                        u32::MAX
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Concurrency, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("concurrency must be positive, not {n}"))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Concurrency, A::Error> {
                let mut kind: Option<String> = None;
                let mut seen: Vec<String> = Vec::new();
                let mut settings = Settings::default();
                while let Some(key) = map.next_key::<String>()? {
                    // Check each key as soon as it is read, so the error points at its line.
                    let allowed = kind.as_deref().map_or(CONCURRENCY_KEYS, Concurrency::keys);
                    if !allowed.contains(&key.as_str()) || seen.contains(&key) {
                        return Err(de::Error::unknown_field(&key, allowed));
                    }
                    if key == "kind" {
                        let k: String = map.next_value()?;
                        if !CONCURRENCY_KINDS.contains(&k.as_str()) {
                            return Err(de::Error::unknown_variant(&k, CONCURRENCY_KINDS));
                        }
                        kind = Some(k);
                    } else {
                        read_setting(&mut map, &key, &mut settings)?;
                    }
                    seen.push(key);
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                // Keys read before `kind` are checked now.
                let allowed = Concurrency::keys(&kind);
                if let Some(bad) = seen.iter().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(de::Error::unknown_field(bad, allowed));
                }
                Concurrency::from_settings(&kind, settings)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Concurrency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let queue = |m: &mut S::SerializeMap, max_queue: u32, timeout: Duration| {
            m.serialize_entry(QUEUE_KEYS[0], &max_queue)?;
            m.serialize_entry(
                QUEUE_KEYS[1],
                &humantime::format_duration(timeout).to_string(),
            )
        };
        match self {
            Concurrency::Fixed(f) if *f == FixedConcurrency::new(f.limit) => {
                s.serialize_u32(f.limit)
            }
            Concurrency::Adaptive(a) if *a == AdaptiveConcurrency::default() => {
                s.serialize_str("adaptive")
            }
            Concurrency::Fixed(f) => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("kind", "fixed")?;
                m.serialize_entry("limit", &f.limit)?;
                queue(&mut m, f.max_queue, f.queue_timeout)?;
                m.end()
            }
            Concurrency::Adaptive(a) => {
                let human = |d: Duration| humantime::format_duration(d).to_string();
                let mut m = s.serialize_map(Some(7))?;
                m.serialize_entry("kind", "adaptive")?;
                m.serialize_entry("min_limit", &a.min_limit)?;
                m.serialize_entry("max_limit", &a.max_limit)?;
                m.serialize_entry("sample_window", &human(a.sample_window))?;
                m.serialize_entry("min_rtt_interval", &human(a.min_rtt_interval))?;
                queue(&mut m, a.max_queue, a.queue_timeout)?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests;
