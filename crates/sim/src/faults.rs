//! Fault injection, so tests of retries, outlier detection and failover have something to fail.
//!
//! Faults are per replica, set from the fleet config at start and changed at run time through
//! `POST /sim/faults` (merge), `GET /sim/faults` (read) and `DELETE /sim/faults` (clear). They
//! survive a simulated crash, as a misconfigured server would come back just as broken.

use serde::{Deserialize, Serialize};

/// Faults injected into one replica. Every field is off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction of inference requests (0..=1) answered with `error_status` instead.
    pub error_rate: f64,
    /// Status for injected errors: 500, 503 or 429 (503 and 429 carry `Retry-After: 1`).
    pub error_status: u16,
    /// Extra delay before a request reaches the engine, milliseconds.
    pub added_latency_ms: u64,
    /// Multiplies every engine step's duration (1 = normal; 0 is treated as 1).
    pub slow_factor: f64,
    /// Accept inference requests and never answer them.
    pub hang: bool,
    /// Writing this crashes the replica: listener and connections close, and it comes back on
    /// the same port after this many milliseconds. Not retained after the crash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_for_ms: Option<u64>,
    /// Close a streaming response's connection after this many tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_stream_after_tokens: Option<u32>,
}

/// A partial update for [`FaultConfig`], as accepted by `POST /sim/faults`: absent fields keep
/// their current value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPatch {
    error_rate: Option<f64>,
    error_status: Option<u16>,
    added_latency_ms: Option<u64>,
    slow_factor: Option<f64>,
    hang: Option<bool>,
    crash_for_ms: Option<u64>,
    drop_stream_after_tokens: Option<u32>,
}

impl FaultConfig {
    /// Checks ranges; returns a message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be within 0..=1, got {}",
                self.error_rate
            ));
        }
        if self.error_rate > 0.0 && ![500, 503, 429].contains(&self.effective_status()) {
            return Err(format!(
                "error_status must be 500, 503 or 429, got {}",
                self.error_status
            ));
        }
        if self.slow_factor < 0.0 || !self.slow_factor.is_finite() {
            return Err(format!(
                "slow_factor must be >= 0, got {}",
                self.slow_factor
            ));
        }
        Ok(())
    }

    /// The status injected errors use (500 when unset).
    pub fn effective_status(&self) -> u16 {
        if self.error_status == 0 {
            500
        } else {
            self.error_status
        }
    }

    /// The step-time multiplier (unset or 0 means 1).
    pub fn effective_slow_factor(&self) -> f64 {
        if self.slow_factor > 0.0 {
            self.slow_factor
        } else {
            1.0
        }
    }

    /// Whether this request should get an injected error (draws a random number when the rate is
    /// strictly between 0 and 1).
    pub fn should_fail(&self) -> bool {
        self.error_rate >= 1.0 || (self.error_rate > 0.0 && fastrand::f64() < self.error_rate)
    }

    /// Applies `patch` over `self`.
    pub fn apply(&mut self, patch: FaultPatch) {
        if let Some(v) = patch.error_rate {
            self.error_rate = v;
        }
        if let Some(v) = patch.error_status {
            self.error_status = v;
        }
        if let Some(v) = patch.added_latency_ms {
            self.added_latency_ms = v;
        }
        if let Some(v) = patch.slow_factor {
            self.slow_factor = v;
        }
        if let Some(v) = patch.hang {
            self.hang = v;
        }
        if patch.crash_for_ms.is_some() {
            self.crash_for_ms = patch.crash_for_ms;
        }
        if patch.drop_stream_after_tokens.is_some() {
            self.drop_stream_after_tokens = patch.drop_stream_after_tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_merges_and_validates() {
        let mut f = FaultConfig::default();
        assert!(!f.should_fail());
        assert_eq!(f.effective_slow_factor(), 1.0);
        let p: FaultPatch = serde_json::from_str(r#"{"error_rate":1,"error_status":503}"#).unwrap();
        f.apply(p);
        assert!(f.should_fail());
        assert!(f.validate().is_ok());
        f.error_status = 404;
        assert!(f.validate().is_err());
        assert!(serde_json::from_str::<FaultPatch>(r#"{"eror_rate":1}"#).is_err());
    }
}
