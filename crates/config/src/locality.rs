//! Where a gateway runs and how a pool prefers endpoints near it.
//!
//! Envoy's zone-aware routing spills out of the local zone by health only: its overprovisioning
//! factor (1.4) keeps all traffic local until fewer than ~71% of the local hosts are healthy, so
//! a healthy but saturated zone queues while the next one idles. A pool's `locality` here spills
//! on capacity: traffic stays local while the local endpoints have room below `spill_at` of
//! their capacity, and only the overflow goes to the next zone, then the next region, then the
//! next `priority` level.

use serde::{Deserialize, Serialize};

/// The gateway's own place (`runtime.locality`); `switchyard run --zone/--region` override it,
/// since a fleet sharing one config runs in several zones.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// A pool's `locality`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolLocality {
    #[serde(default)]
    pub mode: LocalityMode,
    /// The share of an endpoint's capacity (its `capacity` in concurrent requests, or its ORCA
    /// utilization) past which it counts as full; traffic spills to the next tier only when
    /// every available endpoint of the nearer one is full.
    #[serde(default = "default_spill_at")]
    pub spill_at: f64,
}

impl Default for PoolLocality {
    fn default() -> Self {
        Self {
            mode: LocalityMode::default(),
            spill_at: default_spill_at(),
        }
    }
}

fn default_spill_at() -> f64 {
    0.8
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LocalityMode {
    /// Same zone, then same region, then anywhere; within each `priority` level in order.
    #[default]
    PreferLocal,
    /// Ignore zones and regions; `priority` levels still order failover.
    Priority,
}

impl PoolLocality {
    /// Problems as (key path relative to the pool, message).
    pub fn validate(&self, pool: &crate::model::Pool) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.spill_at > 0.0 && self.spill_at <= 1.0) {
            problems.push((
                "locality.spill_at".into(),
                format!("must be in (0, 1], not {}", self.spill_at),
            ));
        }
        // These pickers hold per-endpoint tables built for the whole pool (a hash ring, the
        // scraped signals and prefix index); they cannot pick within a tier.
        let kind = pool.balancer.kind();
        if matches!(kind, "ring_hash" | "maglev" | "inference") {
            problems.push((
                "locality".into(),
                format!(
                    "not supported with the `{kind}` balancer yet; use `priority` levels \
                     through another balancer, or route zones to separate pools"
                ),
            ));
        }
        for (j, e) in pool.endpoints.iter().enumerate() {
            if e.capacity == Some(0) {
                problems.push((
                    format!("endpoints[{j}].capacity"),
                    "must be at least 1".into(),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(pool_extra: &str) -> String {
        let yaml = format!(
            "pools:\n  - name: p\n    endpoints:\n      - {{address: 127.0.0.1:1, zone: a, capacity: 0}}\n{pool_extra}"
        );
        crate::parse(&yaml, Path::new("c.yaml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn checks_spill_at_capacity_and_balancer() {
        let e = errors("    locality: {spill_at: 1.5}\n");
        assert!(
            e.contains("pools[0].locality.spill_at: must be in (0, 1]"),
            "{e}"
        );
        assert!(
            e.contains("pools[0].endpoints[0].capacity: must be at least 1"),
            "{e}"
        );
        let e = errors("    balancer: ring_hash\n    locality: {}\n");
        assert!(
            e.contains("not supported with the `ring_hash` balancer"),
            "{e}"
        );
        let e = errors("    locality: {mode: nearest}\n");
        assert!(e.contains("prefer_local"), "{e}");
    }
}
