//! A route of one config generation, compiled: its matcher, weighted targets, retry policy and
//! budget, hedging, and the metric handles resolved once so requests never look labels up.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use switchyard_config::resilience::PerTryTimeout;
use switchyard_resilience::{Hedger, RetryBudget, RetryPolicy};
use switchyard_telemetry::metrics::{RouteNameLabels, RouteReasonLabels};
use switchyard_telemetry::Metrics;

use crate::pool::PoolEntry;
use crate::route_match::RouteMatch;
use crate::route_metrics::RouteMetrics;

/// A route, compiled.
pub struct RouteEntry {
    pub name: String,
    pub matcher: RouteMatch,
    /// Where requests go: one target (`pool`), or weighted `backends`.
    pub targets: Box<[RouteTarget]>,
    /// Running sums of target weights (parallel to `targets`); used when there are several.
    pub(crate) cumulative_weights: Box<[u64]>,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body: u64,
    /// Bounds reading a body the gateway reads whole.
    pub body_read_timeout: Duration,
    /// Default priority of the route's requests.
    pub priority: switchyard_config::Priority,
    /// Latency SLOs of the route's requests that send none (`slo`; the pool's fill the rest).
    pub slo: switchyard_inference::Slo,
    pub retry: Option<RouteRetry>,
    /// Hedging, with the config it was built from (kept across reloads when unchanged).
    pub hedger: Option<Hedger>,
    pub(crate) hedge_config: Option<switchyard_config::resilience::HedgeConfig>,
    pub(crate) retries: prometheus_client::metrics::family::Family<RouteReasonLabels, Counter>,
    pub(crate) retries_refused:
        prometheus_client::metrics::family::Family<RouteReasonLabels, Counter>,
    /// Present exactly when `hedger` is.
    pub hedge_metrics: Option<HedgeMetrics>,
    /// How a split chooses among `targets` besides by weight.
    pub split: Split,
    /// Pools that get a copy of some of the route's requests.
    pub mirrors: Box<[Arc<crate::mirror::Mirror>]>,
    /// A canary rollout between two of `targets`: it sets their shares.
    pub rollout: Option<Arc<crate::rollout::Rollout>>,
    /// Rate limits the route applies, in order (shared with other routes naming them).
    pub rate_limits: Box<[Arc<crate::rate_limit::Limiter>]>,
    /// Header changes, URL rewrite and the route's own answer; `None` without filters.
    pub filters: Option<Box<crate::filters::RouteFilters>>,
}

/// A weighted split's stickiness and tester override (`sticky`, `force_backend_header`).
#[derive(Default)]
pub struct Split {
    pub sticky: Option<StickyKey>,
    pub force: Option<http::HeaderName>,
}

/// The key a sticky split hashes.
pub enum StickyKey {
    Cookie(Box<str>),
    Header(http::HeaderName),
    ApiKey,
    SourceIp,
}

impl Split {
    pub(crate) fn new(r: &switchyard_config::Route) -> Result<Self, String> {
        use switchyard_config::Sticky;
        let header = |n: &str| {
            http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("route `{}`: `{n}` is not a header name", r.name))
        };
        let sticky = match &r.sticky {
            None => None,
            Some(Sticky::Cookie(name)) => Some(StickyKey::Cookie(name.as_str().into())),
            Some(Sticky::Header(name)) => Some(StickyKey::Header(header(name)?)),
            Some(Sticky::ApiKey) => Some(StickyKey::ApiKey),
            Some(Sticky::SourceIp) => Some(StickyKey::SourceIp),
        };
        let force = r.force_backend_header.as_deref().map(header).transpose()?;
        Ok(Self { sticky, force })
    }
}

/// A hedging route's counters, resolved once per generation.
pub struct HedgeMetrics {
    /// Hedges sent.
    pub sent: Counter,
    /// Hedges whose response was used.
    pub won: Counter,
    /// Hedges due but refused by the hedge budget.
    pub refused_budget: Counter,
    /// Hedges due with no untried endpoint to send them to.
    pub refused_no_endpoint: Counter,
}

impl HedgeMetrics {
    pub(crate) fn new(metrics: &Metrics, route: &str) -> Self {
        let labels = RouteNameLabels {
            route: route.to_string(),
        };
        let refused = |reason| {
            metrics
                .hedges_refused
                .get_or_create(&RouteReasonLabels {
                    route: route.to_string(),
                    reason,
                })
                .clone()
        };
        Self {
            sent: metrics.hedges.get_or_create(&labels).clone(),
            won: metrics.hedges_won.get_or_create(&labels).clone(),
            refused_budget: refused("budget"),
            refused_no_endpoint: refused("no_endpoint"),
        }
    }
}

/// One target of a route: a pool, and the model name the upstream is asked for.
pub struct RouteTarget {
    pub pool: Arc<PoolEntry>,
    pub weight: u32,
    /// Replaces the request body's `model` (aliases, version splits); `None` keeps it.
    pub model: Option<Arc<str>>,
    /// Labelled with the route and this target's pool; shared with each request's
    /// [`crate::finish::Finish`], which reports there when the exchange ends.
    pub metrics: Arc<RouteMetrics>,
}

/// A route's retry policy and the budget its retries draw from.
#[derive(Clone)]
pub struct RouteRetry {
    pub config: switchyard_config::resilience::RetryConfig,
    pub policy: RetryPolicy,
    pub budget: RetryBudget,
}

impl RouteRetry {
    pub(crate) fn new(c: &switchyard_config::resilience::RetryConfig) -> Self {
        let mut policy = RetryPolicy::new(c.attempts, c.retry_on.iter().copied());
        policy.retriable_status_codes = c.retriable_status_codes.clone();
        policy.per_try_timeout = c.per_try_timeout.as_ref().and_then(PerTryTimeout::fixed);
        policy.backoff = switchyard_resilience::Backoff {
            base: c.backoff.base,
            max: c.backoff.max,
        };
        policy.retry_after_max = c.retry_after_max;
        policy.max_replay_body = c.max_replay_body;
        Self {
            config: c.clone(),
            policy,
            budget: RetryBudget::new(c.budget.ratio, c.budget.min_concurrency),
        }
    }
}

impl RouteEntry {
    /// The retry policy, when it allows more than one attempt.
    pub fn retries(&self) -> Option<&RouteRetry> {
        self.retry.as_ref().filter(|r| r.policy.attempts > 1)
    }

    /// The target for one request, by weight. A single-target route costs nothing here; a
    /// split draws one number from the thread-local generator (no lock, no shared state).
    pub fn pick_target(&self) -> usize {
        if self.targets.len() == 1 {
            return 0;
        }
        let total = self.cumulative_weights.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let draw = fastrand::u64(..total);
        self.cumulative_weights.partition_point(|&c| c <= draw)
    }

    pub fn count_retry(&self, reason: &'static str) {
        self.retries
            .get_or_create(&RouteReasonLabels {
                route: self.name.clone(),
                reason,
            })
            .inc();
    }

    pub fn count_retry_refused(&self, reason: &'static str) {
        self.retries_refused
            .get_or_create(&RouteReasonLabels {
                route: self.name.clone(),
                reason,
            })
            .inc();
    }
}
