//! A pool's `limits`: circuit-breaker thresholds on connections, pending and active requests,
//! and retries in flight.

use serde::{Deserialize, Serialize};

use super::Problems;

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
