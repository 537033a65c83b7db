//! The `balancer` key of a pool: which picker spreads its requests, with that picker's own
//! settings. Written as a bare name or as a map whose `kind` decides which settings are allowed
//! (a [`crate::kind_map`]). [`Balancer::KINDS`] is the registry: one row per picker with its
//! name, its keys and how it is built from them; `switchyard_balance::build` turns the result
//! into the picker.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::inference_policy::{InferenceWeights, PrefixStickiness, Saturation};
use crate::kind_map::{self, HumanDuration, Kind, KindMap};

/// Which picker spreads requests over a pool's endpoints. Written as a bare name
/// (`round_robin`) or as a map with `kind` and the picker's own settings; every setting has a
/// default, so each bare name is valid on its own.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
// `Inference` is the large one; a pool holds one balancer, built once per config load.
#[allow(clippy::large_enum_variant)]
pub enum Balancer {
    #[default]
    RoundRobin,
    Random,
    /// Round robin in proportion to endpoint `weight`.
    WeightedRoundRobin,
    /// Power of `choices` random choices on in-flight requests per unit of weight.
    LeastRequest {
        choices: u32,
    },
    /// Two random choices on peak-EWMA latency × (in-flight + 1).
    PeakEwma {
        /// Time constant of the latency average.
        #[serde(with = "humantime_serde")]
        decay: Duration,
        /// Latency assumed for an endpoint with no samples yet.
        #[serde(with = "humantime_serde")]
        default_rtt: Duration,
    },
    /// Consistent hashing on a ring of virtual nodes, with bounded load.
    RingHash {
        key: HashKey,
        min_ring_size: u32,
        load_factor: f64,
    },
    /// Consistent hashing with a Maglev lookup table (`table_size` must be prime), with bounded
    /// load.
    Maglev {
        key: HashKey,
        table_size: u32,
        load_factor: f64,
    },
    /// Weighted round robin over weights derived from ORCA load reports (gRFC A58).
    WeightedLeastUtilization {
        #[serde(with = "humantime_serde")]
        blackout: Duration,
        #[serde(with = "humantime_serde")]
        expiration: Duration,
        error_penalty: f64,
    },
    /// Inference-aware scoring from each model server's scraped metrics (queue, KV cache,
    /// in-flight tokens, prefix-cache affinity, LoRA adapters); see docs/inference.md.
    Inference {
        /// Metric name set to scrape: `vllm`, `sglang`, `tgi`, `triton` or `llamacpp`.
        metrics: String,
        /// Scrape period; each scrape waits a random 1–2× this.
        #[serde(with = "humantime_serde")]
        scrape_interval: Duration,
        /// Scraped signals older than this count as unknown.
        #[serde(with = "humantime_serde")]
        stale_after: Duration,
        weights: InferenceWeights,
        /// Keep a request on the replica holding most of its prefix unless moving it pays.
        stickiness: PrefixStickiness,
        /// When an endpoint is left out of the pick, and when the pool sheds.
        saturation: Saturation,
        /// Ask each request's upstream for an ORCA load report and use its queue and KV
        /// figures when they are newer than the last scrape.
        orca: bool,
        /// Precise prefix routing from the servers' KV-cache events (`crate::kv_events`).
        #[serde(skip_serializing_if = "Option::is_none")]
        kv_events: Option<crate::KvEvents>,
        /// Predicted-latency routing and request SLOs (`crate::predictor`).
        #[serde(skip_serializing_if = "Option::is_none")]
        predictor: Option<Box<crate::Predictor>>,
    },
}

impl Balancer {
    /// The `kind` name, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastRequest { .. } => "least_request",
            Self::PeakEwma { .. } => "peak_ewma",
            Self::RingHash { .. } => "ring_hash",
            Self::Maglev { .. } => "maglev",
            Self::WeightedLeastUtilization { .. } => "weighted_least_utilization",
            Self::Inference { .. } => "inference",
        }
    }
}

const INFERENCE_METRICS: &[&str] = &["vllm", "sglang", "tgi", "triton", "llamacpp"];

/// Where a hashing balancer takes each request's key from: `{header: NAME}`, `{cookie: NAME}`
/// or `source_ip`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    #[default]
    SourceIp,
}

/// Load bound of the two hashing balancers: no endpoint takes more than 1.25 × the mean.
const DEFAULT_LOAD_FACTOR: f64 = 1.25;
const MAX_RING_SIZE: u32 = 8 * 1024 * 1024;

impl Balancer {
    /// Every `kind` name, in registry order.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        Self::kind_names()
    }

    /// Where this balancer takes each request's hash key from, if it hashes at all. The proxy
    /// hashes that header value, cookie value or source IP with `balance::hash_key`.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::RingHash { key, .. } | Balancer::Maglev { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl KindMap for Balancer {
    const EXPECTING: &'static str = "a balancer name or a map with `kind`";
    type Settings = Settings;

    /// The registry of pickers: a new picker is one row here (and its file in `crates/balance`).
    const KINDS: &'static [Kind<Self>] = &[
        Kind {
            name: "round_robin",
            keys: &[],
            build: |_| Ok(Balancer::RoundRobin),
        },
        Kind {
            name: "random",
            keys: &[],
            build: |_| Ok(Balancer::Random),
        },
        Kind {
            name: "weighted_round_robin",
            keys: &[],
            build: |_| Ok(Balancer::WeightedRoundRobin),
        },
        Kind {
            name: "least_request",
            keys: &["choices"],
            build: |s| {
                Ok(Balancer::LeastRequest {
                    choices: s.choices.unwrap_or(2),
                })
            },
        },
        Kind {
            name: "peak_ewma",
            keys: &["decay", "default_rtt"],
            build: |s| {
                Ok(Balancer::PeakEwma {
                    decay: s.decay.unwrap_or(Duration::from_secs(10)),
                    default_rtt: s.default_rtt.unwrap_or(Duration::from_millis(5)),
                })
            },
        },
        Kind {
            name: "ring_hash",
            keys: &["key", "min_ring_size", "load_factor"],
            build: |s| {
                Ok(Balancer::RingHash {
                    key: s.key.unwrap_or_default(),
                    min_ring_size: s.min_ring_size.unwrap_or(1024),
                    load_factor: s.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR),
                })
            },
        },
        Kind {
            name: "maglev",
            keys: &["key", "table_size", "load_factor"],
            build: |s| {
                Ok(Balancer::Maglev {
                    key: s.key.unwrap_or_default(),
                    table_size: s.table_size.unwrap_or(65537),
                    load_factor: s.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR),
                })
            },
        },
        Kind {
            name: "weighted_least_utilization",
            keys: &["blackout", "expiration", "error_penalty"],
            build: |s| {
                Ok(Balancer::WeightedLeastUtilization {
                    blackout: s.blackout.unwrap_or(Duration::from_secs(10)),
                    expiration: s.expiration.unwrap_or(Duration::from_secs(180)),
                    error_penalty: s.error_penalty.unwrap_or(1.0),
                })
            },
        },
        Kind {
            name: "inference",
            keys: &[
                "metrics",
                "scrape_interval",
                "stale_after",
                "weights",
                "stickiness",
                "saturation",
                "orca",
                "kv_events",
                "predictor",
            ],
            build: |s| {
                Ok(Balancer::Inference {
                    metrics: s.metrics.unwrap_or_else(|| "vllm".to_string()),
                    scrape_interval: s.scrape_interval.unwrap_or(Duration::from_millis(50)),
                    stale_after: s.stale_after.unwrap_or(Duration::from_millis(500)),
                    weights: s.weights.unwrap_or_default(),
                    stickiness: s.stickiness.unwrap_or_default(),
                    saturation: s.saturation.unwrap_or_default(),
                    orca: s.orca.unwrap_or(true),
                    kv_events: s.kv_events,
                    predictor: s.predictor,
                })
            },
        },
    ];

    fn read_setting<'de, A: MapAccess<'de>>(
        map: &mut A,
        key: &str,
        s: &mut Settings,
    ) -> Result<(), A::Error> {
        read_setting(map, key, s)
    }
}

/// The settings of a balancer map, before `kind` decides which of them are allowed.
#[derive(Default)]
pub(crate) struct Settings {
    metrics: Option<String>,
    scrape_interval: Option<Duration>,
    stale_after: Option<Duration>,
    weights: Option<InferenceWeights>,
    stickiness: Option<PrefixStickiness>,
    saturation: Option<Saturation>,
    orca: Option<bool>,
    kv_events: Option<crate::KvEvents>,
    predictor: Option<Box<crate::Predictor>>,
    choices: Option<u32>,
    decay: Option<Duration>,
    default_rtt: Option<Duration>,
    key: Option<HashKey>,
    min_ring_size: Option<u32>,
    load_factor: Option<f64>,
    table_size: Option<u32>,
    blackout: Option<Duration>,
    expiration: Option<Duration>,
    error_penalty: Option<f64>,
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n / d * d != n)
}

fn read_setting<'de, A: MapAccess<'de>>(
    map: &mut A,
    key: &str,
    s: &mut Settings,
) -> Result<(), A::Error> {
    fn positive<E: de::Error>(key: &str, d: Duration) -> Result<Duration, E> {
        if d.is_zero() {
            return Err(E::custom(format!("`{key}` must be greater than zero")));
        }
        Ok(d)
    }
    match key {
        "choices" => {
            let c: u32 = map.next_value()?;
            if c == 0 {
                return Err(de::Error::custom("`choices` must be at least 1"));
            }
            s.choices = Some(c);
        }
        "decay" => s.decay = Some(positive(key, map.next_value::<HumanDuration>()?.0)?),
        "default_rtt" => s.default_rtt = Some(positive(key, map.next_value::<HumanDuration>()?.0)?),
        "key" => s.key = Some(map.next_value()?),
        "min_ring_size" => {
            let n: u32 = map.next_value()?;
            if n == 0 || n > MAX_RING_SIZE {
                return Err(de::Error::custom(format!(
                    "`min_ring_size` must be between 1 and {MAX_RING_SIZE}"
                )));
            }
            s.min_ring_size = Some(n);
        }
        "load_factor" => {
            let c: f64 = map.next_value()?;
            if !(c.is_finite() && c >= 1.0) {
                return Err(de::Error::custom("`load_factor` must be a number >= 1.0"));
            }
            s.load_factor = Some(c);
        }
        "table_size" => {
            let n: u32 = map.next_value()?;
            if !is_prime(n) {
                return Err(de::Error::custom(format!(
                    "`table_size` must be a prime number (such as 65537), not {n}"
                )));
            }
            s.table_size = Some(n);
        }
        "blackout" => s.blackout = Some(map.next_value::<HumanDuration>()?.0),
        "expiration" => s.expiration = Some(positive(key, map.next_value::<HumanDuration>()?.0)?),
        "error_penalty" => {
            let p: f64 = map.next_value()?;
            if !(p.is_finite() && p >= 0.0) {
                return Err(de::Error::custom("`error_penalty` must be a number >= 0"));
            }
            s.error_penalty = Some(p);
        }
        "metrics" => {
            let m: String = map.next_value()?;
            if !INFERENCE_METRICS.contains(&m.as_str()) {
                return Err(de::Error::unknown_variant(&m, INFERENCE_METRICS));
            }
            s.metrics = Some(m);
        }
        "scrape_interval" => {
            s.scrape_interval = Some(positive(key, map.next_value::<HumanDuration>()?.0)?);
        }
        "stale_after" => s.stale_after = Some(positive(key, map.next_value::<HumanDuration>()?.0)?),
        "weights" => {
            let w: InferenceWeights = map.next_value()?;
            w.check().map_err(de::Error::custom)?;
            s.weights = Some(w);
        }
        "stickiness" => {
            let st: PrefixStickiness = map.next_value()?;
            st.check().map_err(de::Error::custom)?;
            s.stickiness = Some(st);
        }
        "saturation" => {
            let sat: Saturation = map.next_value()?;
            sat.check().map_err(de::Error::custom)?;
            s.saturation = Some(sat);
        }
        "orca" => s.orca = Some(map.next_value()?),
        "kv_events" => s.kv_events = Some(map.next_value()?),
        "predictor" => {
            let p: crate::Predictor = map.next_value()?;
            p.check().map_err(de::Error::custom)?;
            s.predictor = Some(Box::new(p));
        }
        // `kind_map` only passes keys of some row of `Balancer::KINDS`.
        other => return Err(de::Error::custom(format!("no reader for `{other}`"))),
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Balancer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        kind_map::deserialize(d)
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            HashKey::SourceIp => s.serialize_str("source_ip"),
            HashKey::Header(name) | HashKey::Cookie(name) => {
                let tag = if matches!(self, HashKey::Header(_)) {
                    "header"
                } else {
                    "cookie"
                };
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(tag, name)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FORMS: &[&str] = &["source_ip"];
        const SOURCES: &[&str] = &["header", "cookie"];
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HashKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`source_ip`, `{header: NAME}` or `{cookie: NAME}`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HashKey, E> {
                match s {
                    "source_ip" => Ok(HashKey::SourceIp),
                    other => Err(E::unknown_variant(other, FORMS)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HashKey, A::Error> {
                let key = map
                    .next_key::<String>()?
                    .ok_or_else(|| de::Error::custom("expected `header` or `cookie`"))?;
                let name: String = match key.as_str() {
                    "header" | "cookie" => map.next_value()?,
                    other => return Err(de::Error::unknown_field(other, SOURCES)),
                };
                if name.is_empty() {
                    return Err(de::Error::custom(format!("`{key}` name must not be empty")));
                }
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`key` takes one source, found `{key}` and `{extra}`"
                    )));
                }
                Ok(if key == "header" {
                    HashKey::Header(name.to_ascii_lowercase())
                } else {
                    HashKey::Cookie(name)
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_row_builds_its_own_kind_from_defaults() {
        let names: Vec<&str> = Balancer::kinds().collect();
        for (i, kind) in Balancer::KINDS.iter().enumerate() {
            assert!(!names[..i].contains(&kind.name), "{} twice", kind.name);
            let b = (kind.build)(Settings::default()).unwrap();
            assert_eq!(b.kind(), kind.name);
            let bare: Balancer = serde_json::from_value(serde_json::json!(kind.name)).unwrap();
            assert_eq!(bare, b);
        }
    }
}
