//! Pool-level endpoint health settings: active checks (`health`), passive outlier detection
//! (`outlier`), panic mode (`panic_threshold`) and slow start (`slow_start`).
//!
//! The keys follow Envoy's outlier detection and health checking docs, shortened, because
//! operators arrive knowing those; the defaults are Envoy's except where noted on the field.
//! Every struct denies unknown keys, and each has a `validate` that returns `(key path, message)`
//! pairs relative to the pool (`outlier.max_ejected_percent`), so the loader can point at the
//! offending line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod outlier;

pub use outlier::{
    FailurePercentage, LatencyOutlier, LatencyToggle, OutlierDetection, SuccessRate,
    LATENCY_DEFAULT_MIN_ENDPOINTS,
};

/// One validation problem: the key path relative to the pool, and what is wrong with it.
pub type FieldError = (String, String);

/// Active health checking: probe every endpoint of the pool on a timer. Exactly one of `http`,
/// `grpc` or `tcp` must be set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Time between two probes of one endpoint.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A probe that has not passed within this time fails.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Each wait is `interval ± jitter`, spreading probes of many gateways over time. Unset means
    /// 10% of `interval`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// Consecutive passing probes that turn an unhealthy endpoint healthy.
    #[serde(default = "default_threshold")]
    pub healthy: u32,
    /// Consecutive failing probes that turn a healthy endpoint unhealthy.
    #[serde(default = "default_threshold")]
    pub unhealthy: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threshold() -> u32 {
    2
}

/// `GET path` over HTTP/1.1; the probe passes when the status matches `expect`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub expect: ExpectStatus,
}

fn default_path() -> String {
    "/health".to_string()
}

/// The statuses an HTTP probe accepts: `200`, `[200, 204]` or `"200-299"` (inclusive).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ExpectStatus {
    Code(u16),
    Codes(Vec<u16>),
    Range(String),
}

impl Default for ExpectStatus {
    fn default() -> Self {
        ExpectStatus::Code(200)
    }
}

impl ExpectStatus {
    /// The accepted statuses as inclusive ranges, or a message saying why they are invalid.
    pub fn ranges(&self) -> Result<Vec<(u16, u16)>, String> {
        let check = |code: u16| {
            if (100..=599).contains(&code) {
                Ok(code)
            } else {
                Err(format!("{code} is not an HTTP status (100-599)"))
            }
        };
        match self {
            ExpectStatus::Code(code) => Ok(vec![(check(*code)?, *code)]),
            ExpectStatus::Codes(codes) if codes.is_empty() => {
                Err("the list of statuses is empty".to_string())
            }
            ExpectStatus::Codes(codes) => codes
                .iter()
                .map(|&code| check(code).map(|c| (c, c)))
                .collect(),
            ExpectStatus::Range(text) => {
                let bad = || format!("`{text}` is not a status range like \"200-299\"");
                let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(format!("range `{text}` is empty: {lo} > {hi}"));
                }
                Ok(vec![(check(lo)?, check(hi)?)])
            }
        }
    }
}

/// The gRPC health protocol (`grpc.health.v1.Health/Check`) over h2c; passes on `SERVING`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcCheck {
    /// The service to ask about; empty asks about the server as a whole.
    #[serde(default)]
    pub service: String,
}

/// A TCP connect; passes when the connection opens.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {}

impl HealthCheck {
    /// Problems with these settings, as `("health.<key>", message)` pairs.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| {
            let path = if key.is_empty() {
                "health".to_string()
            } else {
                format!("health.{key}")
            };
            errors.push((path, msg));
        };
        let kinds = [self.http.is_some(), self.grpc.is_some(), self.tcp.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => err("", "set one of `http`, `grpc` or `tcp`".to_string()),
            _ => err("", "set only one of `http`, `grpc` or `tcp`".to_string()),
        }
        if let Some(http) = &self.http {
            if !http.path.starts_with('/') {
                err("http.path", format!("`{}` must start with `/`", http.path));
            }
            if let Err(msg) = http.expect.ranges() {
                err("http.expect", msg);
            }
        }
        if self.interval.is_zero() {
            err("interval", "must be greater than zero".to_string());
        }
        if self.timeout.is_zero() {
            err("timeout", "must be greater than zero".to_string());
        }
        if let Some(jitter) = self.jitter {
            if jitter >= self.interval {
                err("jitter", "must be less than `interval`".to_string());
            }
        }
        if self.healthy == 0 {
            err("healthy", "must be at least 1".to_string());
        }
        if self.unhealthy == 0 {
            err("unhealthy", "must be at least 1".to_string());
        }
        errors
    }
}

/// The default `panic_threshold` (percent): below this share of available endpoints the pool
/// routes to all of them.
pub fn default_panic_threshold() -> u32 {
    50
}

/// Problems with a pool's `panic_threshold`, as `("panic_threshold", message)` pairs.
pub fn validate_panic_threshold(threshold: u32) -> Vec<FieldError> {
    if threshold > 100 {
        vec![(
            "panic_threshold".to_string(),
            "is a percentage: 0 (off) to 100".to_string(),
        )]
    } else {
        Vec::new()
    }
}

/// Slow start: a new or returning endpoint's weight ramps up over `window` (`0s` = off).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlowStart {
    #[serde(default, with = "humantime_serde")]
    pub window: Duration,
    /// Shape of the ramp: weight × (elapsed / window)^(1 / aggression); 1.0 is linear, larger
    /// values ramp faster early on.
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// The weight never starts below this share of the configured weight.
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: u32,
}

impl Default for SlowStart {
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            aggression: default_aggression(),
            min_weight_percent: default_min_weight_percent(),
        }
    }
}

fn default_aggression() -> f64 {
    1.0
}
fn default_min_weight_percent() -> u32 {
    10
}

impl SlowStart {
    /// Problems with these settings, as `("slow_start.<key>", message)` pairs.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            errors.push((
                "slow_start.aggression".to_string(),
                "must be a positive number".to_string(),
            ));
        }
        if self.min_weight_percent > 100 {
            errors.push((
                "slow_start.min_weight_percent".to_string(),
                "is a percentage: 0 to 100".to_string(),
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn the_documented_yaml_parses() {
        let health: HealthCheck = crate::yaml::from_str(
            "{ http: { path: /health, expect: 200 }, interval: 1s, timeout: 500ms, healthy: 2, unhealthy: 2 }",
        )
        .unwrap();
        assert_eq!(
            health.http.as_ref().unwrap().expect,
            ExpectStatus::Code(200)
        );
        assert_eq!(health.timeout, Duration::from_millis(500));
        assert_eq!(health.jitter, None);
        assert!(health.validate().is_empty());

        let grpc: HealthCheck =
            crate::yaml::from_str("{ grpc: { service: \"\" }, jitter: 100ms }").unwrap();
        assert_eq!(grpc.grpc, Some(GrpcCheck::default()));
        assert_eq!(grpc.jitter, Some(Duration::from_millis(100)));
        let tcp: HealthCheck = crate::yaml::from_str("tcp: {}").unwrap();
        assert!(tcp.validate().is_empty());

        let outlier: OutlierDetection = crate::yaml::from_str(
            "{ consecutive_5xx: 5, consecutive_gateway_errors: 3, base_ejection: 30s, max_ejection: 300s, \
             max_ejected_percent: 50, interval: 10s, \
             success_rate: { minimum_hosts: 5, request_volume: 100, stdev_factor: 1900 }, \
             failure_percentage: { threshold: 85, minimum_hosts: 5, request_volume: 50 } }",
        )
        .unwrap();
        assert_eq!(outlier.max_ejected_percent, 50);
        assert_eq!(outlier.success_rate, Some(SuccessRate::default()));
        assert_eq!(
            outlier.failure_percentage,
            Some(FailurePercentage::default())
        );
        assert!(outlier.validate().is_empty());

        let slow: SlowStart =
            crate::yaml::from_str("{ window: 30s, aggression: 1.0, min_weight_percent: 10 }")
                .unwrap();
        assert_eq!(slow.window, Duration::from_secs(30));
        assert!(slow.validate().is_empty());
    }

    #[test]
    fn defaults_follow_envoy_and_the_brief() {
        let outlier: OutlierDetection = crate::yaml::from_str("{}").unwrap();
        assert_eq!(outlier, OutlierDetection::default());
        assert_eq!(outlier.max_ejected_percent, 10);
        assert_eq!(outlier.max_ejection, Duration::from_secs(300));
        assert_eq!(outlier.consecutive_refused, 1);
        let off: OutlierDetection = crate::yaml::from_str("{ consecutive_refused: 0 }").unwrap();
        assert_eq!(off.consecutive_refused, 0);
        let slow: SlowStart = crate::yaml::from_str("{}").unwrap();
        assert_eq!(slow, SlowStart::default());
        let health: HealthCheck = crate::yaml::from_str("http: {}").unwrap();
        assert_eq!(health.http.as_ref().unwrap().path, "/health");
        assert_eq!((health.healthy, health.unhealthy), (2, 2));
        assert_eq!(default_panic_threshold(), 50);
    }

    #[test]
    fn latency_outliers_are_on_by_default_above_two_endpoints() {
        let o: OutlierDetection = crate::yaml::from_str("{}").unwrap();
        assert_eq!(o.latency_for(2), None);
        assert_eq!(o.latency_for(3), Some(LatencyOutlier::default()));
        let off: OutlierDetection = crate::yaml::from_str("{ latency: false }").unwrap();
        assert_eq!(off.latency_for(8), None);
        let on: OutlierDetection = crate::yaml::from_str("{ latency: true }").unwrap();
        assert_eq!(on.latency_for(2), Some(LatencyOutlier::default()));
        let set: OutlierDetection =
            crate::yaml::from_str("{ latency: { factor: 4, min_requests: 20 } }").unwrap();
        let l = set.latency_for(1).unwrap();
        assert_eq!((l.factor, l.min_requests, l.intervals), (4.0, 20, 2));
        assert!(set.validate().is_empty());
        let e = crate::yaml::from_str::<OutlierDetection>("{ latency: { facter: 4 } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("facter"), "{e}");
        let bad: OutlierDetection = crate::yaml::from_str("{ latency: { factor: 0.5 } }").unwrap();
        assert_eq!(keys(&bad.validate()), ["outlier.latency.factor"]);
        // No `outlier` section: latency outliers only, and only above two endpoints.
        assert_eq!(OutlierDetection::implicit(2), None);
        let implicit = OutlierDetection::implicit(3).unwrap();
        assert_eq!(implicit.consecutive_gateway_errors, 0);
        assert_eq!(implicit.consecutive_refused, 0);
        assert!(implicit.latency_for(3).is_some());
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(
            crate::yaml::from_str::<OutlierDetection>(&json).unwrap(),
            set
        );
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        assert!(crate::yaml::from_str::<HealthCheck>("{ tcp: {}, intervall: 1s }").is_err());
        assert!(crate::yaml::from_str::<HealthCheck>("http: { pth: / }").is_err());
        assert!(crate::yaml::from_str::<HealthCheck>("tcp: { port: 1 }").is_err());
        assert!(crate::yaml::from_str::<OutlierDetection>("success_rate: { factor: 1 }").is_err());
        assert!(crate::yaml::from_str::<SlowStart>("windw: 1s").is_err());
    }

    #[test]
    fn expect_accepts_code_list_and_range() {
        let parse = |y: &str| {
            crate::yaml::from_str::<HttpCheck>(y)
                .unwrap()
                .expect
                .ranges()
        };
        assert_eq!(parse("expect: 204"), Ok(vec![(204, 204)]));
        assert_eq!(
            parse("expect: [200, 204]"),
            Ok(vec![(200, 200), (204, 204)])
        );
        assert_eq!(parse("expect: \"200-299\""), Ok(vec![(200, 299)]));
        assert!(parse("expect: \"299-200\"").is_err());
        assert!(parse("expect: 42").is_err());
        assert!(parse("expect: []").is_err());
        assert!(parse("expect: ok").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let health: HealthCheck = crate::yaml::from_str(
            "{ http: { path: health }, tcp: {}, interval: 0s, healthy: 0, jitter: 10s }",
        )
        .unwrap();
        assert_eq!(
            keys(&health.validate()),
            [
                "health",
                "health.http.path",
                "health.interval",
                "health.jitter",
                "health.healthy"
            ]
        );
        let none: HealthCheck = crate::yaml::from_str("{}").unwrap();
        assert_eq!(keys(&none.validate()), ["health"]);

        let outlier: OutlierDetection = crate::yaml::from_str(
            "{ base_ejection: 60s, max_ejection: 30s, max_ejected_percent: 101, \
             failure_percentage: { threshold: 200 } }",
        )
        .unwrap();
        assert_eq!(
            keys(&outlier.validate()),
            [
                "outlier.max_ejection",
                "outlier.max_ejected_percent",
                "outlier.failure_percentage.threshold"
            ]
        );
        let slow: SlowStart =
            crate::yaml::from_str("{ aggression: 0, min_weight_percent: 120 }").unwrap();
        assert_eq!(
            keys(&slow.validate()),
            ["slow_start.aggression", "slow_start.min_weight_percent"]
        );
        assert_eq!(keys(&validate_panic_threshold(101)), ["panic_threshold"]);
        assert!(validate_panic_threshold(0).is_empty());
    }

    #[test]
    fn round_trips_through_yaml() {
        let health = HealthCheck {
            http: Some(HttpCheck {
                path: "/ready".into(),
                expect: ExpectStatus::Range("200-299".into()),
            }),
            grpc: None,
            tcp: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(250),
            jitter: Some(Duration::from_millis(50)),
            healthy: 3,
            unhealthy: 1,
        };
        let yaml = serde_json::to_string(&health).unwrap();
        assert_eq!(crate::yaml::from_str::<HealthCheck>(&yaml).unwrap(), health);
    }
}
