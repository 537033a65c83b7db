//! A pool's `concurrency`: a fixed limit or Envoy's adaptive (gradient) controller, with the
//! queue in front of it. Written as `adaptive`, a number (`64`, a fixed limit), or a
//! [`crate::kind_map`] with `kind: fixed` or `kind: adaptive`.

use std::time::Duration;

use serde::de::{self, MapAccess};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Problems;
use crate::kind_map::{self, HumanDuration, Kind, KindMap};

/// A pool's concurrency limit: `adaptive`, a fixed number (`64`), or a map with `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Concurrency {
    Fixed(FixedConcurrency),
    Adaptive(AdaptiveConcurrency),
}

/// A fixed limit, with the queue in front of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedConcurrency {
    pub limit: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

/// Envoy's gradient controller bounds and timing, with the queue in front of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConcurrency {
    pub min_limit: u32,
    pub max_limit: u32,
    pub sample_window: Duration,
    pub min_rtt_interval: Duration,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

const DEFAULT_MAX_QUEUE: u32 = 128;
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

impl FixedConcurrency {
    pub fn new(limit: u32) -> FixedConcurrency {
        FixedConcurrency {
            limit,
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        AdaptiveConcurrency {
            min_limit: 3,
            max_limit: 1000,
            sample_window: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(60),
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

const QUEUE_KEYS: [&str; 2] = ["max_queue", "queue_timeout"];

impl Concurrency {
    /// Requests that may wait for a slot.
    pub fn max_queue(&self) -> u32 {
        match self {
            Concurrency::Fixed(f) => f.max_queue,
            Concurrency::Adaptive(a) => a.max_queue,
        }
    }

    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        let (max_queue, queue_timeout) = match self {
            Concurrency::Fixed(f) => {
                if f.limit == 0 {
                    p.push(("limit".into(), "must be at least 1".into()));
                }
                (f.max_queue, f.queue_timeout)
            }
            Concurrency::Adaptive(a) => {
                if a.min_limit == 0 {
                    p.push(("min_limit".into(), "must be at least 1".into()));
                }
                if a.max_limit < a.min_limit {
                    p.push(("max_limit".into(), "must be at least `min_limit`".into()));
                }
                if a.sample_window.is_zero() {
                    p.push(("sample_window".into(), "must be greater than zero".into()));
                }
                if a.min_rtt_interval <= a.sample_window {
                    p.push((
                        "min_rtt_interval".into(),
                        "must be longer than `sample_window`".into(),
                    ));
                }
                (a.max_queue, a.queue_timeout)
            }
        };
        if max_queue > 0 && queue_timeout.is_zero() {
            p.push((
                "queue_timeout".into(),
                "must be greater than zero when `max_queue` is above 0".into(),
            ));
        }
        p
    }
}

/// The settings of a concurrency map, before `kind` decides which are allowed.
#[derive(Default)]
pub(crate) struct Settings {
    limit: Option<u32>,
    min_limit: Option<u32>,
    max_limit: Option<u32>,
    sample_window: Option<Duration>,
    min_rtt_interval: Option<Duration>,
    max_queue: Option<u32>,
    queue_timeout: Option<Duration>,
}

impl KindMap for Concurrency {
    const EXPECTING: &'static str = "`adaptive`, a fixed limit such as 64, or a map with `kind`";
    type Settings = Settings;

    const KINDS: &'static [Kind<Self>] = &[
        Kind {
            name: "fixed",
            keys: &["limit", QUEUE_KEYS[0], QUEUE_KEYS[1]],
            build: |s| {
                Ok(Concurrency::Fixed(FixedConcurrency {
                    limit: s.limit.ok_or("missing field `limit`")?,
                    max_queue: s.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
                    queue_timeout: s.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT),
                }))
            },
        },
        Kind {
            name: "adaptive",
            keys: &[
                "min_limit",
                "max_limit",
                "sample_window",
                "min_rtt_interval",
                QUEUE_KEYS[0],
                QUEUE_KEYS[1],
            ],
            build: |s| {
                let d = AdaptiveConcurrency::default();
                Ok(Concurrency::Adaptive(AdaptiveConcurrency {
                    min_limit: s.min_limit.unwrap_or(d.min_limit),
                    max_limit: s.max_limit.unwrap_or(d.max_limit),
                    sample_window: s.sample_window.unwrap_or(d.sample_window),
                    min_rtt_interval: s.min_rtt_interval.unwrap_or(d.min_rtt_interval),
                    max_queue: s.max_queue.unwrap_or(d.max_queue),
                    queue_timeout: s.queue_timeout.unwrap_or(d.queue_timeout),
                }))
            },
        },
    ];

    fn read_setting<'de, A: MapAccess<'de>>(
        map: &mut A,
        key: &str,
        s: &mut Settings,
    ) -> Result<(), A::Error> {
        let duration = |map: &mut A| map.next_value::<HumanDuration>().map(|d| Some(d.0));
        match key {
            "limit" => s.limit = Some(map.next_value()?),
            "min_limit" => s.min_limit = Some(map.next_value()?),
            "max_limit" => s.max_limit = Some(map.next_value()?),
            "max_queue" => s.max_queue = Some(map.next_value()?),
            "sample_window" => s.sample_window = duration(map)?,
            "min_rtt_interval" => s.min_rtt_interval = duration(map)?,
            "queue_timeout" => s.queue_timeout = duration(map)?,
            // `kind_map` only passes keys of some row of `KINDS`.
            other => return Err(de::Error::custom(format!("no reader for `{other}`"))),
        }
        Ok(())
    }

    /// Only `adaptive` stands alone: a fixed limit is written as its number.
    fn from_name<E: de::Error>(name: &str) -> Result<Self, E> {
        match name {
            "adaptive" => Ok(Concurrency::Adaptive(AdaptiveConcurrency::default())),
            other => Err(E::unknown_variant(other, &["adaptive"])),
        }
    }

    fn from_number<E: de::Error>(n: i64) -> Result<Self, E> {
        if n < 0 {
            return Err(E::custom(format!("concurrency must be positive, not {n}")));
        }
        match u32::try_from(n) {
            Ok(n) if n > 0 => Ok(Concurrency::Fixed(FixedConcurrency::new(n))),
            _ => Err(E::custom(format!(
                "a fixed concurrency must be between 1 and {}, not {n}",
                u32::MAX
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        kind_map::deserialize(d)
    }
}

impl Serialize for Concurrency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let queue = |m: &mut S::SerializeMap, max_queue: u32, timeout: Duration| {
            m.serialize_entry(QUEUE_KEYS[0], &max_queue)?;
            m.serialize_entry(
                QUEUE_KEYS[1],
                &humantime::format_duration(timeout).to_string(),
            )
        };
        match self {
            Concurrency::Fixed(f) if *f == FixedConcurrency::new(f.limit) => {
                s.serialize_u32(f.limit)
            }
            Concurrency::Adaptive(a) if *a == AdaptiveConcurrency::default() => {
                s.serialize_str("adaptive")
            }
            Concurrency::Fixed(f) => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("kind", "fixed")?;
                m.serialize_entry("limit", &f.limit)?;
                queue(&mut m, f.max_queue, f.queue_timeout)?;
                m.end()
            }
            Concurrency::Adaptive(a) => {
                let human = |d: Duration| humantime::format_duration(d).to_string();
                let mut m = s.serialize_map(Some(7))?;
                m.serialize_entry("kind", "adaptive")?;
                m.serialize_entry("min_limit", &a.min_limit)?;
                m.serialize_entry("max_limit", &a.max_limit)?;
                m.serialize_entry("sample_window", &human(a.sample_window))?;
                m.serialize_entry("min_rtt_interval", &human(a.min_rtt_interval))?;
                queue(&mut m, a.max_queue, a.queue_timeout)?;
                m.end()
            }
        }
    }
}
