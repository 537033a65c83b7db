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
