//! `xds:`: settings of `switchyard xds`, the control plane that drives Envoy over ADS. The
//! gateway ignores them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    /// How often capacity weights of `inference` and `weighted_least_utilization` pools are
    /// recomputed from scraped load (and pushed, when they changed).
    #[serde(default = "default_weights_interval", with = "humantime_serde")]
    pub weights_interval: Duration,
}

impl Default for Xds {
    fn default() -> Self {
        Self {
            weights_interval: default_weights_interval(),
        }
    }
}

fn default_weights_interval() -> Duration {
    Duration::from_secs(1)
}

/// Shorter intervals only push more EDS updates than scrapes can back.
pub const MIN_WEIGHTS_INTERVAL: Duration = Duration::from_millis(10);

impl Xds {
    /// Problems as (key path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        if self.weights_interval < MIN_WEIGHTS_INTERVAL {
            vec![(
                "xds.weights_interval".into(),
                format!("must be at least {MIN_WEIGHTS_INTERVAL:?}"),
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_interval_is_read_checked_and_unknown_keys_named() {
        let ok = crate::parse("xds: {weights_interval: 250ms}\n", Path::new("c.yaml")).unwrap();
        assert_eq!(
            ok.xds.unwrap().weights_interval,
            std::time::Duration::from_millis(250)
        );
        let short = crate::parse("xds: {weights_interval: 1ms}\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(short.contains("xds.weights_interval"), "{short}");
        let typo = crate::parse("xds: {weight_interval: 1s}\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(typo.contains("weights_interval"), "{typo}");
    }
}
