//! `predictor` of the `inference` balancer: latency predicted per endpoint by an online model,
//! and the SLO-aware pick it drives (docs/inference.md, "Predicted-latency routing").

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `predictor` settings of an `inference` balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Predictor {
    /// SLOs for requests that send no `x-slo-ttft-ms` / `x-slo-tpot-ms`.
    pub slo: DefaultSlo,
    /// Share of SLO picks sent to a random endpoint predicted to meet the SLO (0 to 0.5).
    pub explore: f64,
    /// Quantile of measured/predicted latency used as the SLO margin (0.5 to 0.999): 0.99 for
    /// p99 objectives.
    pub quantile: f64,
    /// Which endpoint among those predicted to meet the SLO.
    pub selection: Selection,
    /// Training samples kept per load bucket (8 buckets; 16 to 4096).
    pub bucket_samples: u32,
    /// Refit the model after this many new samples (1 to 4096).
    pub refit_every: u32,
    /// Samples before predictions are used (16 to 100000).
    pub min_samples: u32,
    /// Hold a request no endpoint is predicted to serve within its SLO at the gateway, rather
    /// than send it where the violation is smallest (off unless set; `queue: {}` for the
    /// defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<SloQueue>,
    /// The engine `priority` (vLLM's and SGLang's request field; lower runs first) given to a
    /// request no endpoint is predicted to serve within its SLO even in the model's typical
    /// case, so the engine runs requests that can still meet theirs first. Unset (the default)
    /// leaves bodies alone: the engines must run priority scheduling (vLLM
    /// `--scheduling-policy priority`), or vLLM refuses a priority other than 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_priority: Option<i64>,
}

/// `predictor.queue`: how long and how many requests the gateway holds for an endpoint
/// predicted to meet their SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloQueue {
    /// Longest a request is held (1ms to 10m); then it goes to the least violating endpoint.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Requests held at once (1 to 100000); one more goes out at once, as without a queue.
    pub max_queued: u32,
}

impl Default for SloQueue {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(1),
            max_queued: 1024,
        }
    }
}

impl Default for Predictor {
    fn default() -> Self {
        Self {
            slo: DefaultSlo::default(),
            explore: 0.02,
            quantile: 0.9,
            selection: Selection::LowestLatency,
            bucket_samples: 128,
            refit_every: 16,
            min_samples: 64,
            queue: None,
            late_priority: None,
        }
    }
}

/// Default latency objectives of a pool (`predictor.slo`) or a route (`slo`); each more than 0
/// and at most 10 minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSlo")]
pub struct DefaultSlo {
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub ttft: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tpot: Option<Duration>,
}

/// `lowest_latency` takes the endpoint furthest from the SLO (the default: it met more SLOs at
/// full load in docs/benchmarks.md); `least_headroom` packs requests onto the one closest to its
/// SLO that still meets it, as llm-d does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    LowestLatency,
    LeastHeadroom,
}

pub(crate) fn slo_unset(s: &DefaultSlo) -> bool {
    s.is_unset()
}

/// [`DefaultSlo`] as written, before its bounds are checked.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSlo {
    #[serde(with = "humantime_serde")]
    ttft: Option<Duration>,
    #[serde(with = "humantime_serde")]
    tpot: Option<Duration>,
}

impl TryFrom<RawSlo> for DefaultSlo {
    type Error = String;
    fn try_from(r: RawSlo) -> Result<Self, String> {
        let slo = DefaultSlo {
            ttft: r.ttft,
            tpot: r.tpot,
        };
        slo.check("slo")?;
        Ok(slo)
    }
}

impl DefaultSlo {
    pub fn is_unset(&self) -> bool {
        self.ttft.is_none() && self.tpot.is_none()
    }

    /// Zero or over 10 minutes is refused, naming the key under `at`.
    pub fn check(&self, at: &str) -> Result<(), String> {
        for (key, d) in [("ttft", self.ttft), ("tpot", self.tpot)] {
            if let Some(d) = d {
                if d.is_zero() || d > Duration::from_secs(600) {
                    return Err(format!("`{at}.{key}` must be more than 0 and at most 10m"));
                }
            }
        }
        Ok(())
    }
}

impl Predictor {
    /// The ranges the field docs state, as a message naming the key.
    pub fn check(&self) -> Result<(), String> {
        let range = |key: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{key}` must be between {lo} and {hi}, not {v}"))
            }
        };
        range("explore", self.explore, 0.0, 0.5)?;
        range("quantile", self.quantile, 0.5, 0.999)?;
        range("bucket_samples", self.bucket_samples.into(), 16.0, 4096.0)?;
        range("refit_every", self.refit_every.into(), 1.0, 4096.0)?;
        range("min_samples", self.min_samples.into(), 16.0, 100_000.0)?;
        if let Some(q) = &self.queue {
            if q.max_wait < Duration::from_millis(1) || q.max_wait > Duration::from_secs(600) {
                return Err("`queue.max_wait` must be at least 1ms and at most 10m".into());
            }
            range("queue.max_queued", q.max_queued.into(), 1.0, 100_000.0)?;
        }
        self.slo.check("slo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Balancer;

    fn parse(yaml: &str) -> Result<Balancer, String> {
        let v: serde_json::Value = serde_json::from_str(yaml).map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn predictor_settings_parse_and_are_checked() {
        let b = parse(
            r#"{"kind":"inference","predictor":{"slo":{"ttft":"500ms"},"quantile":0.99,
                "selection":"least_headroom","late_priority":-3}}"#,
        )
        .unwrap();
        let Balancer::Inference { predictor, .. } = b else {
            panic!("{b:?}")
        };
        let p = predictor.unwrap();
        assert_eq!(p.slo.ttft, Some(Duration::from_millis(500)));
        assert_eq!((p.quantile, p.selection), (0.99, Selection::LeastHeadroom));
        assert_eq!(p.late_priority, Some(-3));
        assert_eq!(p.explore, 0.02);
        assert_eq!(p.queue, None);
        let b =
            parse(r#"{"kind":"inference","predictor":{"queue":{"max_wait":"250ms"}}}"#).unwrap();
        let Balancer::Inference { predictor, .. } = b else {
            panic!("{b:?}")
        };
        let q = predictor.unwrap().queue.unwrap();
        assert_eq!(
            (q.max_wait, q.max_queued),
            (Duration::from_millis(250), 1024)
        );
        // Off unless asked for.
        let Balancer::Inference { predictor, .. } = parse(r#""inference""#).unwrap() else {
            panic!()
        };
        assert!(predictor.is_none());
        for (bad, says) in [
            (r#"{"explore":0.9}"#, "`explore` must be between"),
            (r#"{"quantile":1}"#, "`quantile` must be between"),
            (r#"{"slo":{"ttft":"0s"}}"#, "`slo.ttft` must be more than 0"),
            (r#"{"min_samples":1}"#, "`min_samples`"),
            (r#"{"queue":{"max_wait":"0s"}}"#, "`queue.max_wait` must be"),
            (
                r#"{"queue":{"max_queued":0}}"#,
                "`queue.max_queued` must be",
            ),
            (r#"{"queue":{"max_wiat":"1s"}}"#, "unknown field `max_wiat`"),
            (r#"{"qantile":0.9}"#, "unknown field `qantile`"),
            (r#"{"selection":"fastest"}"#, "unknown variant `fastest`"),
            (r#"{"late_priority":"low"}"#, "invalid type"),
            (r#"{"late_priority":1.5}"#, "invalid type"),
            (
                r#"{"slo":{"tpot":"11m"}}"#,
                "`slo.tpot` must be more than 0",
            ),
        ] {
            let e = parse(&format!(r#"{{"kind":"inference","predictor":{bad}}}"#)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
