//! A route's `hedge`: when to send a second copy of a slow request, and how many hedges the
//! route can afford.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;

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
