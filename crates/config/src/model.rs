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

/// A route: the first route whose `match` fits a request sends it to `pool`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: Match,
    pub pool: String,
    /// Bounds the wait for the upstream's response headers.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Bounds the silence between two body chunks of a streamed response.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes. Larger → 413.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
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
/// (`round_robin`) or as a map with `kind` and the picker's own settings.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Balancer {
    #[default]
    RoundRobin,
    Random,
}

const BALANCER_KINDS: &[&str] = &["round_robin", "random"];

impl Balancer {
    fn from_kind<E: de::Error>(kind: &str) -> Result<Self, E> {
        match kind {
            "round_robin" => Ok(Balancer::RoundRobin),
            "random" => Ok(Balancer::Random),
            other => Err(E::unknown_variant(other, BALANCER_KINDS)),
        }
    }
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
                Balancer::from_kind(s)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Balancer, A::Error> {
                let mut kind: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kind" => kind = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["kind"])),
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                Balancer::from_kind(&kind)
            }
        }
        d.deserialize_any(V)
    }
}
