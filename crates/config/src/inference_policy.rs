//! The `inference` balancer's policy settings: scorer weights, prefix stickiness and the
//! saturation thresholds, read by `switchyard_inference`'s picker.

use serde::{Deserialize, Serialize};

/// Scorer weights of the `inference` balancer, as written under `weights:` and as the scorers
/// read them (`switchyard_inference::scorer::scorers`). The defaults follow llm-d's profile
/// (queue : KV : prefix = 2 : 2 : 3) and add LoRA affinity and in-flight tokens at 1 each;
/// latency is off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceWeights {
    pub queue: f64,
    pub kv_cache: f64,
    pub prefix: f64,
    pub lora: f64,
    pub in_flight: f64,
    pub latency: f64,
    /// How far behind the best score (as a share of a full prefix hit's) a new prefix's
    /// rendezvous owner may be and still take it, so that gateway replicas place it alike
    /// (`switchyard_inference::prefix_owner`); 0 turns owners off. Unset, it is
    /// [`InferenceWeights::OWNER_BAND_EVENTS`] with a KV-event index and
    /// [`InferenceWeights::OWNER_BAND_APPROXIMATE`] without one.
    pub prefix_owner: Option<f64>,
}

impl InferenceWeights {
    /// With KV events every gateway replica holds the same index, so "no candidate holds it"
    /// means new to the fleet, and replicas disagree only when one new prefix reaches several
    /// at once: a narrow band, placing new prefixes by load (docs/benchmarks.md, session 17).
    pub const OWNER_BAND_EVENTS: f64 = 0.15;
    /// Without them, off: a single gateway's approximate index records its own picks, so an
    /// owner only ever decides a prompt's first placement, and any band wider than the ties
    /// places some by hash rather than load. Session 17's wide default (0.5, for several
    /// replicas without events, whose indexes each know only their own picks) measured
    /// 4–9× the TTFT p99 of owners off for one gateway on a shared-prefix workload, and 3–7
    /// points less SLO attainment on prompts that share nothing (docs/benchmarks.md, session
    /// 18). Several replicas without events set `prefix_owner: 0.5` (docs/fleet.md).
    pub const OWNER_BAND_APPROXIMATE: f64 = 0.0;

    /// The band, when set, is a share of a hit: 0 (owners off) to 1.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.prefix_owner {
            Some(b) if !(0.0..=1.0).contains(&b) => Err(format!(
                "`weights.prefix_owner` must be a number from 0 to 1, not {b}"
            )),
            _ => Ok(()),
        }
    }

    /// The owner's band for a pool with (`events`) or without a KV-event index.
    pub fn owner_band(&self, events: bool) -> f64 {
        self.prefix_owner.unwrap_or(if events {
            Self::OWNER_BAND_EVENTS
        } else {
            Self::OWNER_BAND_APPROXIMATE
        })
    }
}

impl Default for InferenceWeights {
    fn default() -> Self {
        Self {
            queue: 2.0,
            kv_cache: 2.0,
            prefix: 3.0,
            lora: 1.0,
            in_flight: 1.0,
            latency: 0.0,
            prefix_owner: None,
        }
    }
}

/// Cost-based prefix stickiness of the `inference` balancer (`stickiness:`), read by
/// `switchyard_inference::stickiness`. A weighted sum moves a prefix off the replica holding it
/// as soon as that replica's load terms are a little worse; on a fleet at its limit each move is
/// a prefill elsewhere and an eviction there, and enough of them tip the fleet into a state
/// where few prefixes are found at all (docs/benchmarks.md, issue 18). A request leaves its
/// holder only when the holder's queue is `min_imbalance` requests over the least-loaded
/// candidate's (or its KV usage `min_kv_imbalance` over the least-used one's) *and* the
/// queueing it saves outweighs the prefill it adds. Off by default: it did not lower TTFT p99
/// on the simulated fleets (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixStickiness {
    pub enabled: bool,
    /// Waiting requests by which the holder must exceed the least-loaded candidate before the
    /// request may leave it (smg's absolute balance threshold, in queue rather than in-flight
    /// requests).
    pub min_imbalance: f64,
    /// Prefill tokens one waiting request is worth, for comparing the queueing a move saves with
    /// the prefill it adds (unused when a warm latency predictor compares the two instead).
    pub queue_tokens: f64,
    /// KV-cache usage (0..1) by which the holder may exceed the least-used candidate and still
    /// be kept: past it the holder would evict cached blocks or preempt to take the request.
    pub min_kv_imbalance: f64,
}

impl Default for PrefixStickiness {
    fn default() -> Self {
        Self {
            enabled: false,
            min_imbalance: 4.0,
            queue_tokens: 1024.0,
            min_kv_imbalance: 0.15,
        }
    }
}

impl PrefixStickiness {
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(self.min_imbalance.is_finite() && self.min_imbalance >= 0.0) {
            return Err("`stickiness.min_imbalance` must be a number >= 0".into());
        }
        if !(self.queue_tokens.is_finite() && self.queue_tokens > 0.0) {
            return Err("`stickiness.queue_tokens` must be a number > 0".into());
        }
        if !(self.min_kv_imbalance.is_finite() && self.min_kv_imbalance >= 0.0) {
            return Err("`stickiness.min_kv_imbalance` must be a number >= 0".into());
        }
        Ok(())
    }
}

/// When an endpoint of an `inference` pool counts as saturated (`saturation:`): the picker
/// leaves it out while any endpoint is not, and a pool whose endpoints all are sheds its
/// sheddable requests (llm-d's saturation detector, with the same two signals).
///
/// Leaving a replica out moves the requests whose prefix it holds: each such move is a
/// prefill elsewhere. `switchyard_inference_prefix_picks_total{reason="holder_saturated"}`
/// counts them, so an operator can see what the thresholds cost in cache hits.
///
/// KV usage is not a threshold by default (`max_kv_usage: 1`). A replica whose running batch
/// fills its cache queues the next request, which `max_waiting` and the queue and KV scorers
/// already weigh; leaving it out at 90% moved the conversations it held on a busy fleet, each
/// move a prefill that filled another replica's cache, until few prefixes were found anywhere
/// (docs/benchmarks.md, issue 18: at 100% load the hit rate fell from ~82% to 36–63% in some
/// runs on both simulated fleets, and never with the threshold off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Saturation {
    /// Waiting requests (the engine's queue) over which an endpoint is saturated.
    pub max_waiting: f64,
    /// KV-cache usage (0..1) over which an endpoint is saturated; 1 never counts KV usage.
    pub max_kv_usage: f64,
}

impl Default for Saturation {
    fn default() -> Self {
        Self {
            max_waiting: 128.0,
            max_kv_usage: 1.0,
        }
    }
}

impl Saturation {
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(self.max_waiting.is_finite() && self.max_waiting >= 0.0) {
            return Err("`saturation.max_waiting` must be a number >= 0".into());
        }
        if !(self.max_kv_usage > 0.0 && self.max_kv_usage <= 1.0) {
            return Err("`saturation.max_kv_usage` must be a number in (0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Balancer;

    #[test]
    fn stickiness_reads_its_keys_and_refuses_nonsense() {
        let parse = |v| serde_json::from_value::<Balancer>(v);
        let Balancer::Inference { stickiness, .. } = parse(serde_json::json!({
            "kind": "inference", "stickiness": {"enabled": true, "min_imbalance": 2}
        }))
        .unwrap() else {
            panic!("not inference")
        };
        assert_eq!(
            stickiness,
            PrefixStickiness {
                enabled: true,
                min_imbalance: 2.0,
                ..PrefixStickiness::default()
            }
        );
        for bad in [
            serde_json::json!({"min_imbalance": -1}),
            serde_json::json!({"queue_tokens": 0}),
            serde_json::json!({"enable": true}),
        ] {
            let v = serde_json::json!({"kind": "inference", "stickiness": bad});
            assert!(parse(v).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unset_owner_band_is_narrow_with_kv_events_and_off_without() {
        let parse = |v| serde_json::from_value::<Balancer>(v).unwrap();
        let Balancer::Inference { weights, .. } = parse(serde_json::json!({"kind": "inference"}))
        else {
            panic!("not inference")
        };
        assert_eq!(
            weights.owner_band(true),
            InferenceWeights::OWNER_BAND_EVENTS
        );
        assert_eq!(weights.owner_band(false), 0.0);
        for band in [0.0, 0.5] {
            let Balancer::Inference { weights, .. } = parse(serde_json::json!({
                "kind": "inference", "weights": {"prefix_owner": band}
            })) else {
                panic!("not inference")
            };
            assert_eq!(
                (weights.owner_band(true), weights.owner_band(false)),
                (band, band)
            );
        }
        assert_eq!(weights.prefix, InferenceWeights::default().prefix);
        for bad in [-0.1, 1.5] {
            let v = serde_json::json!({"kind": "inference", "weights": {"prefix_owner": bad}});
            let e = serde_json::from_value::<Balancer>(v)
                .unwrap_err()
                .to_string();
            assert!(e.contains("weights.prefix_owner"), "{e}");
        }
    }

    #[test]
    fn saturation_reads_its_keys_and_refuses_nonsense() {
        let parse = |v| serde_json::from_value::<Balancer>(v);
        let Balancer::Inference { saturation, .. } = parse(serde_json::json!({
            "kind": "inference", "saturation": {"max_kv_usage": 1}
        }))
        .unwrap() else {
            panic!("not inference")
        };
        assert_eq!(saturation.max_kv_usage, 1.0);
        assert_eq!(saturation.max_waiting, Saturation::default().max_waiting);
        for bad in [
            serde_json::json!({"max_kv_usage": 0}),
            serde_json::json!({"max_kv_usage": 1.5}),
            serde_json::json!({"max_waiting": -1}),
            serde_json::json!({"max_queue": 4}),
        ] {
            let v = serde_json::json!({"kind": "inference", "saturation": bad});
            assert!(parse(v).is_err(), "{bad}");
        }
    }
}
