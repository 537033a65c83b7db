//! A canary rollout on a route (`routes[].rollout`): the gateway moves traffic from `baseline`
//! to `canary` step by step, judging the canary against the baseline over the same interval,
//! and promotes it or rolls it back by itself. The shape follows Argo Rollouts and Flagger
//! (steps, interval, failure limit), minus the glue: the measurements are the gateway's own.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Route;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The pool of the route's backend that serves today.
    pub baseline: String,
    /// The pool of the route's backend being rolled out.
    pub canary: String,
    /// Canary percentages, increasing; reaching 100 is promotion.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// One analysis per interval.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Requests each arm needs in an interval before it is judged (else: inconclusive, hold).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Canary against baseline over the same interval.
    #[serde(default = "default_checks")]
    pub checks: Vec<Check>,
    /// Consecutive failed analyses that roll the canary back to 0%.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    #[serde(default)]
    pub on_success: OnSuccess,
}

/// One comparison of canary and baseline.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub metric: CheckMetric,
    /// `error_rate`: the canary's rate may exceed the baseline's by at most this (0.01 = one
    /// point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
    /// Latencies: the canary's percentile may be at most this multiple of the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckMetric {
    /// Share of responses that are 5xx or gateway errors.
    ErrorRate,
    /// 99th percentile of request duration (to the response's last byte).
    LatencyP99,
    /// 99th percentile of time to the first body chunk of streamed responses.
    TtftP99,
    /// 99th percentile of time per output token after the first, of streamed responses whose
    /// model the gateway read (routes to `inference` pools).
    TpotP99,
}

impl CheckMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrorRate => "error_rate",
            Self::LatencyP99 => "latency_p99",
            Self::TtftP99 => "ttft_p99",
            Self::TpotP99 => "tpot_p99",
        }
    }
}

/// What happens when the last step below 100% passes.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnSuccess {
    /// The canary takes 100%.
    #[default]
    Promote,
    /// Hold at the last step until promoted by the admin API.
    Pause,
}

fn default_steps() -> Vec<u32> {
    vec![5, 25, 50, 100]
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_min_requests() -> u64 {
    50
}

fn default_failure_limit() -> u32 {
    2
}

fn default_checks() -> Vec<Check> {
    vec![
        Check {
            metric: CheckMetric::ErrorRate,
            max_increase: Some(0.01),
            max_ratio: None,
        },
        Check {
            metric: CheckMetric::LatencyP99,
            max_increase: None,
            max_ratio: Some(1.2),
        },
    ]
}

/// Problems with a route's rollout, as (key path below the route, message).
pub(crate) fn validate(route: &Route) -> Vec<(String, String)> {
    let Some(r) = &route.rollout else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut err = |k: &str, m: String| out.push((format!("rollout.{k}"), m));
    let pools: Vec<&str> = route
        .backends
        .iter()
        .flatten()
        .map(|b| b.pool.as_str())
        .collect();
    if pools.len() != 2 {
        err(
            "baseline",
            "a rollout needs `backends` of exactly two pools: its baseline and its canary".into(),
        );
    }
    for (key, pool) in [("baseline", &r.baseline), ("canary", &r.canary)] {
        if !pools.contains(&pool.as_str()) {
            err(key, format!("`{pool}` is not one of the route's backends"));
        }
    }
    if r.baseline == r.canary {
        err("canary", "must differ from `baseline`".into());
    }
    if r.steps.is_empty()
        || r.steps.windows(2).any(|w| w[0] >= w[1])
        || r.steps.iter().any(|s| !(1..=100).contains(s))
    {
        err(
            "steps",
            "must be increasing percentages between 1 and 100".into(),
        );
    }
    if r.interval.is_zero() {
        err("interval", "must be positive".into());
    }
    if r.failure_limit == 0 {
        err("failure_limit", "must be at least 1".into());
    }
    for (i, c) in r.checks.iter().enumerate() {
        let (need, have, other) = match c.metric {
            CheckMetric::ErrorRate => ("max_increase", c.max_increase, c.max_ratio),
            _ => ("max_ratio", c.max_ratio, c.max_increase),
        };
        match have {
            None => err(
                &format!("checks[{i}]"),
                format!("`{}` needs `{need}`", c.metric.as_str()),
            ),
            Some(v) if !v.is_finite() || v < 0.0 => {
                err(
                    &format!("checks[{i}].{need}"),
                    format!("{v} must be a non-negative number"),
                );
            }
            Some(_) => {}
        }
        if other.is_some() {
            err(
                &format!("checks[{i}]"),
                format!("`{}` takes only `{need}`", c.metric.as_str()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use std::path::Path;

    const POOLS: &str = "pools: [{name: v1}, {name: v2}, {name: v3}]\n";

    fn errors(route: &str) -> String {
        match parse(
            &format!("{POOLS}routes:\n  - name: r\n{route}"),
            Path::new("c.yaml"),
        ) {
            Ok(_) => String::new(),
            Err(e) => {
                e.0.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    }

    #[test]
    fn defaults_and_mistakes() {
        let split = "    backends: [{pool: v1}, {pool: v2}]\n";
        let ok = parse(
            &format!(
                "{POOLS}routes:\n  - name: r\n{split}    rollout: {{baseline: v1, canary: v2}}\n"
            ),
            Path::new("c.yaml"),
        )
        .unwrap();
        let r = ok.routes[0].rollout.as_ref().unwrap();
        assert_eq!(r.steps, [5, 25, 50, 100]);
        assert_eq!(r.interval, std::time::Duration::from_secs(10));
        assert_eq!(
            (r.min_requests, r.failure_limit, r.checks.len()),
            (50, 2, 2)
        );
        let all = errors(&format!(
            "{split}    rollout: {{baseline: v1, canary: v3, steps: [50, 20], interval: 0s, failure_limit: 0, checks: [{{metric: error_rate}}, {{metric: ttft_p99, max_ratio: 1.5, max_increase: 1}}]}}\n"
        ));
        for want in [
            "routes[0].rollout.canary: `v3` is not one of the route's backends",
            "routes[0].rollout.steps: must be increasing percentages",
            "routes[0].rollout.interval: must be positive",
            "routes[0].rollout.failure_limit: must be at least 1",
            "routes[0].rollout.checks[0]: `error_rate` needs `max_increase`",
            "routes[0].rollout.checks[1]: `ttft_p99` takes only `max_ratio`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        let three = errors(
            "    backends: [{pool: v1}, {pool: v2}, {pool: v3}]\n    rollout: {baseline: v1, canary: v2}\n",
        );
        assert!(three.contains("exactly two pools"), "{three}");
    }
}
