//! `outlier`: passive outlier detection's settings (consecutive errors, success rate, failure
//! percentage, latency) and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// Passive outlier detection: eject endpoints whose real traffic fails, for a time that grows
/// with each ejection. A detector set to `0` is off; `success_rate` and `failure_percentage` are
/// off unless present (Envoy enables success rate by default; small inference pools make it
/// noisy, so here it is opt-in).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (gateway errors included) that eject an endpoint.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502/503/504, connect failure, reset, timeout) that eject.
    #[serde(default = "default_consecutive_gateway_errors")]
    pub consecutive_gateway_errors: u32,
    /// Consecutive refused connections that eject (default 1: nothing listens on the port, so
    /// the server is down, not slow or unlucky).
    #[serde(default = "default_consecutive_refused")]
    pub consecutive_refused: u32,
    /// Ejection time is `base_ejection × times ejected`, capped by `max_ejection`.
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share of the pool is ejected at once (at least one endpoint always may be).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
    /// How often the statistical detectors run and ejection multipliers decay.
    #[serde(default = "default_outlier_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
    /// Latency outliers: an endpoint slower than `factor` × the pool's median for `intervals`
    /// intervals in a row is ejected like an erroring one. Unset: on with the defaults for pools
    /// of more than two endpoints (see [`OutlierDetection::latency_for`]); `false`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyToggle>,
}

/// `outlier.latency: true | false | { settings }`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum LatencyToggle {
    Enabled(bool),
    Settings(LatencyOutlier),
}

impl<'de> Deserialize<'de> for LatencyToggle {
    // By hand rather than `untagged`, so a mistake inside the settings is reported as itself
    // ("unknown field `facter`") instead of "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LatencyToggle;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or latency outlier settings")
            }
            fn visit_bool<E>(self, v: bool) -> Result<LatencyToggle, E> {
                Ok(LatencyToggle::Enabled(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<LatencyToggle, A::Error> {
                LatencyOutlier::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(LatencyToggle::Settings)
            }
        }
        d.deserialize_any(V)
    }
}

/// Pools with more endpoints than this judge latency outliers unless told not to: with two, a
/// median is one of the two, and ejecting either halves the pool.
pub const LATENCY_DEFAULT_MIN_ENDPOINTS: usize = 3;

/// `outlier.latency`: each endpoint's median time to response head over an `interval`
/// (attempts that finished, at their latency; attempts still waiting, at their age) against the
/// median of those medians. Non-streamed completions that say `max_tokens` are judged apart, per
/// requested token.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyOutlier {
    #[serde(default = "default_latency_factor")]
    pub factor: f64,
    /// Attempts an endpoint needs in an interval (finished or waiting) to be judged in it.
    #[serde(default = "default_latency_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_latency_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Slow intervals in a row before an ejection.
    #[serde(default = "default_latency_intervals")]
    pub intervals: u32,
}

fn default_latency_factor() -> f64 {
    3.0
}

fn default_latency_min_requests() -> u32 {
    5
}

impl Default for LatencyOutlier {
    fn default() -> Self {
        Self {
            factor: default_latency_factor(),
            min_requests: default_latency_min_requests(),
            interval: default_latency_interval(),
            intervals: default_latency_intervals(),
        }
    }
}

/// Short, so a replica that turns slow is out within a second or so (two intervals): under
/// least_request a 10× slow replica still gets a few requests a second until then, and each of
/// them is a request in the p99.9. Half a second of a busy pool still gives every endpoint
/// enough samples; a quiet pool is simply not judged.
fn default_latency_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_latency_intervals() -> u32 {
    2
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: default_consecutive_5xx(),
            consecutive_gateway_errors: default_consecutive_gateway_errors(),
            consecutive_refused: default_consecutive_refused(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
            interval: default_outlier_interval(),
            success_rate: None,
            failure_percentage: None,
            latency: None,
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_consecutive_gateway_errors() -> u32 {
    3
}
fn default_consecutive_refused() -> u32 {
    1
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejected_percent() -> u32 {
    10
}
fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}

/// Envoy's success-rate detector: among endpoints with at least `request_volume` requests in
/// the last interval (and only when at least `minimum_hosts` qualify), eject those whose success
/// rate is below `mean − stdev × stdev_factor / 1000`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SuccessRate {
    #[serde(default = "five")]
    pub minimum_hosts: u32,
    #[serde(default = "default_sr_volume")]
    pub request_volume: u32,
    #[serde(default = "default_stdev_factor")]
    pub stdev_factor: u32,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            minimum_hosts: five(),
            request_volume: default_sr_volume(),
            stdev_factor: default_stdev_factor(),
        }
    }
}

fn five() -> u32 {
    5
}
fn default_sr_volume() -> u32 {
    100
}
fn default_stdev_factor() -> u32 {
    1900
}

/// Envoy's failure-percentage detector: eject endpoints whose failure share in the last
/// interval is at least `threshold` percent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailurePercentage {
    #[serde(default = "default_fp_threshold")]
    pub threshold: u32,
    #[serde(default = "five")]
    pub minimum_hosts: u32,
    #[serde(default = "default_fp_volume")]
    pub request_volume: u32,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        Self {
            threshold: default_fp_threshold(),
            minimum_hosts: five(),
            request_volume: default_fp_volume(),
        }
    }
}

fn default_fp_threshold() -> u32 {
    85
}
fn default_fp_volume() -> u32 {
    50
}

impl OutlierDetection {
    /// What a pool with no `outlier` section gets: latency outliers only, for pools of more
    /// than two endpoints (no consecutive-error detectors: those stay opt-in, as in Envoy).
    pub fn implicit(endpoints: usize) -> Option<OutlierDetection> {
        (endpoints >= LATENCY_DEFAULT_MIN_ENDPOINTS).then(|| OutlierDetection {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 0,
            consecutive_refused: 0,
            latency: Some(LatencyToggle::Enabled(true)),
            ..OutlierDetection::default()
        })
    }

    /// The latency settings in force for a pool of `endpoints`.
    pub fn latency_for(&self, endpoints: usize) -> Option<LatencyOutlier> {
        match &self.latency {
            Some(LatencyToggle::Settings(l)) => Some(l.clone()),
            Some(LatencyToggle::Enabled(true)) => Some(LatencyOutlier::default()),
            Some(LatencyToggle::Enabled(false)) => None,
            None => (endpoints >= LATENCY_DEFAULT_MIN_ENDPOINTS).then(LatencyOutlier::default),
        }
    }

    /// Problems with these settings, as `("outlier.<key>", message)` pairs.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: &str| errors.push((format!("outlier.{key}"), msg.into()));
        if self.base_ejection.is_zero() {
            err("base_ejection", "must be greater than zero");
        }
        if self.max_ejection < self.base_ejection {
            err("max_ejection", "must be at least `base_ejection`");
        }
        if self.max_ejected_percent > 100 {
            err("max_ejected_percent", "is a percentage: 0 to 100");
        }
        if self.interval.is_zero() {
            err("interval", "must be greater than zero");
        }
        if let Some(sr) = &self.success_rate {
            if sr.minimum_hosts == 0 {
                err("success_rate.minimum_hosts", "must be at least 1");
            }
            if sr.request_volume == 0 {
                err("success_rate.request_volume", "must be at least 1");
            }
        }
        if let Some(fp) = &self.failure_percentage {
            if fp.threshold > 100 {
                err("failure_percentage.threshold", "is a percentage: 0 to 100");
            }
            if fp.minimum_hosts == 0 {
                err("failure_percentage.minimum_hosts", "must be at least 1");
            }
            if fp.request_volume == 0 {
                err("failure_percentage.request_volume", "must be at least 1");
            }
        }
        if let Some(LatencyToggle::Settings(l)) = &self.latency {
            if !(l.factor.is_finite() && l.factor > 1.0) {
                err("latency.factor", "must be a number above 1");
            }
            if l.min_requests == 0 {
                err("latency.min_requests", "must be at least 1");
            }
            if l.interval.is_zero() {
                err("latency.interval", "must be positive");
            }
            if l.intervals == 0 {
                err("latency.intervals", "must be at least 1");
            }
        }
        errors
    }
}
