//! Conversions from the YAML settings in `switchyard_config::health`. The config types are
//! validated before conversion (`validate()`), so these never fail on a loaded config; an
//! unvalidated `expect` that does not parse falls back to `200`.

use switchyard_config::health::{HealthCheck, LatencyOutlier, OutlierDetection, SlowStart};

use crate::{
    ActiveCheck, FailurePercentageSettings, OutlierSettings, Probe, SlowStartSettings,
    SuccessRateSettings,
};

impl From<&HealthCheck> for ActiveCheck {
    fn from(c: &HealthCheck) -> Self {
        let probe = if let Some(http) = &c.http {
            Probe::Http {
                path: http.path.clone(),
                expect: http.expect.ranges().unwrap_or_else(|_| vec![(200, 200)]),
            }
        } else if let Some(grpc) = &c.grpc {
            Probe::Grpc {
                service: grpc.service.clone(),
            }
        } else {
            Probe::Tcp
        };
        ActiveCheck {
            probe,
            interval: c.interval,
            timeout: c.timeout,
            jitter: c.jitter,
            healthy: c.healthy,
            unhealthy: c.unhealthy,
            tls: None,
        }
    }
}

impl From<&OutlierDetection> for OutlierSettings {
    fn from(o: &OutlierDetection) -> Self {
        OutlierSettings {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            consecutive_refused: o.consecutive_refused,
            base_ejection: o.base_ejection,
            max_ejection: o.max_ejection,
            max_ejected_percent: o.max_ejected_percent,
            interval: o.interval,
            success_rate: o.success_rate.as_ref().map(|s| SuccessRateSettings {
                minimum_hosts: s.minimum_hosts,
                request_volume: s.request_volume,
                stdev_factor: s.stdev_factor,
            }),
            failure_percentage: o
                .failure_percentage
                .as_ref()
                .map(|f| FailurePercentageSettings {
                    threshold: f.threshold,
                    minimum_hosts: f.minimum_hosts,
                    request_volume: f.request_volume,
                }),
            // Explicit settings only: the default for larger pools is `for_pool`'s.
            latency: o.latency_for(0).map(latency_settings),
        }
    }
}

impl OutlierSettings {
    /// The settings for a pool of `endpoints`: latency outliers are judged by default in pools
    /// of more than two.
    pub fn for_pool(o: &OutlierDetection, endpoints: usize) -> Self {
        OutlierSettings {
            latency: o.latency_for(endpoints).map(latency_settings),
            ..OutlierSettings::from(o)
        }
    }
}

fn latency_settings(l: LatencyOutlier) -> crate::outlier::LatencySettings {
    crate::outlier::LatencySettings {
        factor: l.factor,
        min_requests: l.min_requests,
        interval: l.interval,
        intervals: l.intervals,
    }
}

impl From<&SlowStart> for SlowStartSettings {
    fn from(s: &SlowStart) -> Self {
        SlowStartSettings {
            window: s.window,
            aggression: s.aggression,
            min_weight_percent: s.min_weight_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_agree_between_config_and_runtime() {
        assert_eq!(
            OutlierSettings::from(&OutlierDetection::default()),
            OutlierSettings::default()
        );
        assert_eq!(
            SlowStartSettings::from(&SlowStart::default()),
            SlowStartSettings::default()
        );
        let check: HealthCheck = switchyard_config::yaml::from_str(
            "{ http: { path: /ready, expect: \"200-299\" }, interval: 1s }",
        )
        .unwrap();
        let active = ActiveCheck::from(&check);
        assert_eq!(
            active.probe,
            Probe::Http {
                path: "/ready".into(),
                expect: vec![(200, 299)]
            }
        );
        assert_eq!((active.healthy, active.unhealthy), (2, 2));
    }
}
