//! The configuration schema. Field names here are a public contract: users' YAML files and outside
//! tests depend on them, so keys are only ever added, never renamed.
//!
//! Every struct denies unknown keys; a typo is an error that names the nearest valid key, never a
//! silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The whole gateway configuration, as read from one YAML file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// OpenTelemetry tracing; absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::trace::Tracing>,
}

/// The admin listener: metrics, readiness, and state for operators. Loopback by default because
/// it exposes the effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Process-wide settings. These are read once at start; a reload that changes them logs that a
/// restart is needed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Tokio worker threads; `None` means one per core. `1` runs a single-threaded runtime, the
    /// fastest shape for a proxy pinned to one core.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Watch the config file and reload when it changes (SIGHUP always reloads).
    #[serde(default = "yes")]
    pub watch_config: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: None,
            drain_timeout: default_drain_timeout(),
            watch_config: true,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

/// A downstream listener. HTTP/1.1 and HTTP/2 (prior knowledge) share the port; with `tls` the
/// protocol is negotiated by ALPN.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Upper bound on the request head (request line plus headers), in bytes. Larger → 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Upper bound on the number of request headers. More → 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// A client that has not sent a complete request head within this time is disconnected
    /// (slowloris protection). Also bounds how long an idle keep-alive connection is kept.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// HTTP/2: streams one connection may have open at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Write one JSON line per request to stdout.
    #[serde(default)]
    pub access_log: bool,
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrent_streams() -> u32 {
    100
}

/// TLS termination settings: PEM certificate chain and private key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A route: the first route whose `match` fits a request sends it to `pool`, or to one of its
/// weighted `backends` (exactly one of the two is set).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: Match,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Weighted targets, picked per request (version splits, canaries); instead of `pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<crate::backends::Backend>>,
    /// Request rewrites for every target (a backend's own `model` overrides `rewrite.model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<crate::backends::Rewrite>,
    /// Bounds the wait for the upstream's response headers.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Bounds the silence between two body chunks of a streamed response.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes. Larger → 413.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
    /// Retry policy and retry budget; unset means no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::resilience::RetryConfig>,
    /// Hedged requests; unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<crate::resilience::HedgeConfig>,
    /// Default priority of the route's requests; header `x-switchyard-priority` overrides it.
    #[serde(default)]
    pub priority: Priority,
}

/// How a request fares when its pool is saturated: `sheddable` ones are refused at once (429
/// with `Retry-After`), `standard` and `critical` ones wait in the pool's bounded queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Sheddable,
    #[default]
    Standard,
    Critical,
}

impl Priority {
    /// From a header value: a name, or an integer (negative sheddable, 0 standard, positive
    /// critical), as the Gateway API Inference Extension's criticality levels map.
    pub fn parse(v: &str) -> Option<Self> {
        match v.trim().to_ascii_lowercase().as_str() {
            "sheddable" => Some(Self::Sheddable),
            "standard" => Some(Self::Standard),
            "critical" => Some(Self::Critical),
            n => n.parse::<i64>().ok().map(|n| match n {
                n if n < 0 => Self::Sheddable,
                0 => Self::Standard,
                _ => Self::Critical,
            }),
        }
    }
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_request_body() -> u64 {
    16 * 1024 * 1024
}

/// Request predicates; all that are set must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Must match the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Compared without the port, case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header name → exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameter name → exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// The `model` of an OpenAI-style JSON body (header `x-model` when the body has none):
    /// exact, or a prefix with a trailing `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A set of interchangeable upstream endpoints and how to spread load over them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub balancer: Balancer,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Pooled idle upstream connections are closed after this long.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Circuit breakers: overflow gets 503 with `x-switchyard-overflow`.
    #[serde(default)]
    pub limits: crate::resilience::CircuitLimits,
    /// Concurrency limit in front of the pool (`adaptive` or a number); unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::resilience::Concurrency>,
    /// Tenants share the concurrency queue fairly (needs `concurrency`); unset means one line
    /// per priority, first come first served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<crate::resilience::Fairness>,
    /// Active health checks; unset means endpoints are taken as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthCheck>,
    /// Passive outlier detection; unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<crate::health::OutlierDetection>,
    /// Below this percentage of available endpoints, route to all of them (panic mode).
    #[serde(default = "crate::health::default_panic_threshold")]
    pub panic_threshold: u32,
    /// Ramp a new or returning endpoint's weight up over a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<crate::health::SlowStart>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge; required for gRPC.
    Http2,
}

/// One upstream endpoint: either a bare `IP:PORT` string or a map with weight and locality.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointMap {
    address: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an `IP:PORT` string or a map with `address`, `weight`, `zone`, `region`",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EndpointSpec, E> {
                let address = s.parse().map_err(|_| {
                    E::custom(format!("invalid endpoint address `{s}`: expected IP:PORT"))
                })?;
                Ok(EndpointSpec {
                    address,
                    weight: 1,
                    zone: None,
                    region: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let m = EndpointMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    address: m.address,
                    weight: m.weight,
                    zone: m.zone,
                    region: m.region,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Which picker spreads requests over a pool's endpoints. Written as a bare name
/// (`round_robin`) or as a map with `kind` and the picker's own settings; every setting has a
/// default, so each bare name is valid on its own.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
        /// Metric name set to scrape: `vllm`, `sglang`, `tgi` or `triton`.
        metrics: String,
        /// Scrape period; each scrape waits a random 1–2× this.
        #[serde(with = "humantime_serde")]
        scrape_interval: Duration,
        /// Scraped signals older than this count as unknown.
        #[serde(with = "humantime_serde")]
        stale_after: Duration,
        weights: InferenceWeights,
        /// Ask each request's upstream for an ORCA load report and use its queue and KV
        /// figures when they are newer than the last scrape.
        orca: bool,
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

/// Scorer weights of the `inference` balancer; the defaults follow llm-d's queue:kv:prefix =
/// 2:2:3, plus LoRA affinity and in-flight tokens at 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceWeights {
    pub queue: f64,
    pub kv_cache: f64,
    pub prefix: f64,
    pub lora: f64,
    pub in_flight: f64,
    pub latency: f64,
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
        }
    }
}

const INFERENCE_METRICS: &[&str] = &["vllm", "sglang", "tgi", "triton"];

/// Where a hashing balancer takes each request's key from: `{header: NAME}`, `{cookie: NAME}`
/// or `source_ip`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    #[default]
    SourceIp,
}

const BALANCER_KINDS: &[&str] = &[
    "round_robin",
    "random",
    "weighted_round_robin",
    "least_request",
    "peak_ewma",
    "ring_hash",
    "maglev",
    "weighted_least_utilization",
    "inference",
];

/// Every key any balancer map accepts; used when a key comes before `kind`.
const BALANCER_KEYS: &[&str] = &[
    "kind",
    "choices",
    "decay",
    "default_rtt",
    "key",
    "min_ring_size",
    "load_factor",
    "table_size",
    "blackout",
    "expiration",
    "error_penalty",
    "metrics",
    "scrape_interval",
    "stale_after",
    "weights",
    "orca",
];

/// Default settings, shared by the bare-name form and the map form.
const DEFAULT_CHOICES: u32 = 2;
const DEFAULT_DECAY: Duration = Duration::from_secs(10);
const DEFAULT_RTT: Duration = Duration::from_millis(5);
const DEFAULT_MIN_RING_SIZE: u32 = 1024;
const MAX_RING_SIZE: u32 = 8 * 1024 * 1024;
const DEFAULT_LOAD_FACTOR: f64 = 1.25;
const DEFAULT_TABLE_SIZE: u32 = 65537;
const DEFAULT_BLACKOUT: Duration = Duration::from_secs(10);
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(180);
const DEFAULT_ERROR_PENALTY: f64 = 1.0;

impl Balancer {
    /// The keys a map of this `kind` accepts (besides `kind`).
    fn keys(kind: &str) -> &'static [&'static str] {
        match kind {
            "least_request" => &["kind", "choices"],
            "peak_ewma" => &["kind", "decay", "default_rtt"],
            "ring_hash" => &["kind", "key", "min_ring_size", "load_factor"],
            "maglev" => &["kind", "key", "table_size", "load_factor"],
            "weighted_least_utilization" => &["kind", "blackout", "expiration", "error_penalty"],
            "inference" => &[
                "kind",
                "metrics",
                "scrape_interval",
                "stale_after",
                "weights",
                "orca",
            ],
            _ => &["kind"],
        }
    }

    /// Where this balancer takes each request's hash key from, if it hashes at all. The proxy
    /// hashes that header value, cookie value or source IP with `balance::hash_key`.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::RingHash { key, .. } | Balancer::Maglev { key, .. } => Some(key),
            _ => None,
        }
    }

    fn from_settings<E: de::Error>(kind: &str, s: Settings) -> Result<Self, E> {
        let load_factor = s.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR);
        Ok(match kind {
            "round_robin" => Balancer::RoundRobin,
            "random" => Balancer::Random,
            "weighted_round_robin" => Balancer::WeightedRoundRobin,
            "least_request" => Balancer::LeastRequest {
                choices: s.choices.unwrap_or(DEFAULT_CHOICES),
            },
            "peak_ewma" => Balancer::PeakEwma {
                decay: s.decay.unwrap_or(DEFAULT_DECAY),
                default_rtt: s.default_rtt.unwrap_or(DEFAULT_RTT),
            },
            "ring_hash" => Balancer::RingHash {
                key: s.key.unwrap_or_default(),
                min_ring_size: s.min_ring_size.unwrap_or(DEFAULT_MIN_RING_SIZE),
                load_factor,
            },
            "maglev" => Balancer::Maglev {
                key: s.key.unwrap_or_default(),
                table_size: s.table_size.unwrap_or(DEFAULT_TABLE_SIZE),
                load_factor,
            },
            "weighted_least_utilization" => Balancer::WeightedLeastUtilization {
                blackout: s.blackout.unwrap_or(DEFAULT_BLACKOUT),
                expiration: s.expiration.unwrap_or(DEFAULT_EXPIRATION),
                error_penalty: s.error_penalty.unwrap_or(DEFAULT_ERROR_PENALTY),
            },
            "inference" => Balancer::Inference {
                metrics: s.metrics.unwrap_or_else(|| "vllm".to_string()),
                scrape_interval: s.scrape_interval.unwrap_or(Duration::from_millis(50)),
                stale_after: s.stale_after.unwrap_or(Duration::from_millis(500)),
                weights: s.weights.unwrap_or_default(),
                orca: s.orca.unwrap_or(true),
            },
            other => return Err(E::unknown_variant(other, BALANCER_KINDS)),
        })
    }
}

/// The settings of a balancer map, before `kind` decides which of them are allowed.
#[derive(Default)]
struct Settings {
    metrics: Option<String>,
    scrape_interval: Option<Duration>,
    stale_after: Option<Duration>,
    weights: Option<InferenceWeights>,
    orca: Option<bool>,
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

/// A map key that must be one of a list. Checking it while the key itself is deserialized (not
/// after) lets the YAML error carry the key's own line and column.
struct KeyIn(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for KeyIn {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIn {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a balancer setting name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.0.contains(&key) {
            Ok(key.to_string())
        } else {
            Err(E::unknown_field(key, self.0))
        }
    }
}

/// A humantime duration (`10s`, `3m`) as a map value.
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
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
            s.scrape_interval = Some(positive(key, map.next_value::<HumanDuration>()?.0)?)
        }
        "stale_after" => s.stale_after = Some(positive(key, map.next_value::<HumanDuration>()?.0)?),
        "weights" => s.weights = Some(map.next_value()?),
        "orca" => s.orca = Some(map.next_value()?),
        other => return Err(de::Error::unknown_field(other, BALANCER_KEYS)),
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Balancer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Balancer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a balancer name or a map with `kind`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Balancer, E> {
                Balancer::from_settings(s, Settings::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Balancer, A::Error> {
                let mut kind: Option<String> = None;
                let mut seen: Vec<String> = Vec::new();
                let mut settings = Settings::default();
                loop {
                    let allowed = match &kind {
                        Some(k) => Balancer::keys(k),
                        None => BALANCER_KEYS,
                    };
                    let Some(key) = map.next_key_seed(KeyIn(allowed))? else {
                        break;
                    };
                    if key == "kind" {
                        let k: String = map.next_value()?;
                        if !BALANCER_KINDS.contains(&k.as_str()) {
                            return Err(de::Error::unknown_variant(&k, BALANCER_KINDS));
                        }
                        kind = Some(k);
                    } else {
                        read_setting(&mut map, &key, &mut settings)?;
                        seen.push(key);
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                // Keys read before `kind` are checked now.
                let allowed = Balancer::keys(&kind);
                if let Some(bad) = seen.iter().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(de::Error::unknown_field(bad, allowed));
                }
                Balancer::from_settings(&kind, settings)
            }
        }
        d.deserialize_any(V)
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
