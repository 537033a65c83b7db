//! The configuration schema. Field names here are a public contract: users' YAML files and outside
//! tests depend on them, so keys are only ever added, never renamed.
//!
//! Every struct denies unknown keys; a typo is an error that names the nearest valid key, never a
//! silently ignored setting.

use crate::predictor::{slo_unset, DefaultSlo};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::balancer::Balancer;

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
    /// Named rate limits, applied by the routes that list them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::rate_limit::RateLimit>,
    /// The Redis that `store: redis` limits share across gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::rate_limit::Redis>,
    /// OpenTelemetry tracing; absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::trace::Tracing>,
    /// Settings of `switchyard xds` (the Envoy control plane); the gateway ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<crate::xds::Xds>,
}

/// The admin listener: metrics, readiness, and state for operators. Loopback by default because
/// it exposes the effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// A client that has not sent a complete request head within this time is disconnected.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once; past it the admin listener stops accepting until one closes.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Finished requests kept for `/debug/requests/{id}` (0 keeps none). Read at start.
    #[serde(default = "default_recent_requests")]
    pub recent_requests: usize,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_admin_max_connections(),
            recent_requests: default_recent_requests(),
        }
    }
}

fn default_recent_requests() -> usize {
    1024
}

fn default_admin_max_connections() -> usize {
    64
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
    /// Where state that must survive a restart is kept (a rollout's phase and step); none when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Where this gateway runs, for pools with `locality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<crate::locality::Locality>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: None,
            drain_timeout: default_drain_timeout(),
            watch_config: true,
            state_dir: None,
            locality: None,
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
    /// A connection with no request in flight for this long is closed (HTTP/2 with GOAWAY).
    /// `0s` disables it.
    #[serde(default = "default_connection_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2: PING the client after this long without a frame from it; `0s` disables pings.
    #[serde(default = "default_http2_keepalive_interval", with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: close the connection when a PING is not acknowledged within this time.
    #[serde(default = "default_http2_keepalive_timeout", with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Write one JSON line per request to stdout.
    #[serde(default)]
    pub access_log: bool,
    /// Gateway control headers honoured from this listener's clients. By default a client may
    /// only lower its own priority (`x-switchyard-priority` at or below the route's) and cannot
    /// ask for pick explanations; list a header here for listeners whose clients are trusted
    /// (an internal gateway tier, a sidecar).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_headers: Vec<TrustedHeader>,
    /// How request paths are normalized before routing (and forwarded normalized).
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// Also serve HTTP/3 over QUIC on the same port (UDP); needs `tls`. TCP responses advertise
    /// it with `Alt-Svc`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http3: bool,
    /// QUIC transport settings, for `http3: true`.
    #[serde(default, skip_serializing_if = "is_default_quic")]
    pub quic: crate::quic::Quic,
    /// What happens to `x-forwarded-client-cert`: stripped (`sanitize`, the default), set from
    /// this connection's client certificate (`sanitize_set`), or appended to (`append_forward`).
    #[serde(default)]
    pub forward_client_cert: crate::tls::ForwardClientCert,
    /// `http` (the default) or `tcp`: bytes forwarded to a pool unparsed (see [`crate::l4`]).
    #[serde(default, skip_serializing_if = "crate::l4::ListenerProtocol::is_http")]
    pub protocol: crate::l4::ListenerProtocol,
    /// tcp: where connections go when no `sni_routes` entry matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// tcp: TLS passthrough, the pool chosen by the ClientHello's server name (first match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<crate::l4::SniRoute>,
    /// tcp: connections proxied at once; past it the listener stops accepting until one closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// tcp: connects tried on other endpoints after a failed one.
    #[serde(
        default = "default_connect_retries",
        skip_serializing_if = "is_default_connect_retries"
    )]
    pub connect_retries: u32,
}

fn is_default_quic(q: &crate::quic::Quic) -> bool {
    *q == crate::quic::Quic::default()
}

fn default_connect_retries() -> u32 {
    1
}

// Serialized only when set, so that an HTTP listener's effective config reads back valid.
fn is_default_connect_retries(n: &u32) -> bool {
    *n == default_connect_retries()
}

/// Request path normalization (RFC 3986 §6.2.2), applied before routing; the upstream gets the
/// normalized path, so what a route matched is what the backend sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathNormalization {
    /// Decode escaped unreserved characters and remove `.` and `..` segments.
    pub normalize: bool,
    /// Merge repeated slashes (`//v1///chat` → `/v1/chat`).
    pub merge_slashes: bool,
    /// What an encoded slash or backslash (`%2F`, `%5C`, or a raw `\`) in a path does.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Encoded path separators: a backend that decodes them after routing could be steered
/// elsewhere than the route allowed, so they are refused (400) unless kept or decoded on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    Reject,
    Keep,
    Unescape,
}

/// A control header a listener may trust its clients with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustedHeader {
    /// `x-switchyard-priority` may raise a request above its route's priority (escape
    /// shedding, jump the queue).
    Priority,
    /// `x-switchyard-debug: 1` returns the `inference` pick's scores (`x-switchyard-pick`).
    Debug,
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
fn default_connection_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_http2_keepalive_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_http2_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

/// TLS termination settings: PEM certificate chain and private key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted; unset asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Refuse the handshake of a client without a certificate signed by `client_ca`. `false`
    /// (Envoy's default) asks for one and verifies it when sent, but lets clients without one in;
    /// routes tell them apart with `match.client_cert`.
    #[serde(default)]
    pub require_client_cert: bool,
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
    /// Keep each user on one backend of the split (by cookie, header, API key or client IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::backends::Sticky>,
    /// A request header naming the backend's pool sends the request there (for testers); off
    /// unless set, as the header would let any client choose its variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_backend_header: Option<String>,
    /// Pools that get a copy of some of the route's requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<crate::backends::Mirror>,
    /// Rate limits (by name, from `rate_limits`) this route applies, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<String>,
    /// Header changes, URL rewrites, redirects and direct responses, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<crate::filters::Filter>,
    /// A canary rollout between two of the route's backends, judged and driven by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Rollout>,
    /// Bounds the wait for the upstream's response headers.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Bounds the silence between two body chunks of a streamed response.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes. Larger → 413.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
    /// Bounds reading a request body the gateway reads whole (to route on, rewrite, or replay)
    /// before anything else happens. Longer → 408, so a client trickling its upload holds a
    /// connection and its bounded buffer, never an admission slot.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Retry policy and retry budget; unset means no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::resilience::RetryConfig>,
    /// Hedged requests; unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<crate::resilience::HedgeConfig>,
    /// Default priority of the route's requests; header `x-switchyard-priority` overrides it.
    #[serde(default)]
    pub priority: Priority,
    /// SLOs for requests without `x-slo-*` headers (over the pool's `predictor.slo`).
    #[serde(default, skip_serializing_if = "slo_unset")]
    pub slo: DefaultSlo,
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
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
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
    /// The connection's verified client certificate (listeners with `tls.client_ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<crate::tls::ClientCertMatch>,
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
    /// TLS (and client certificates) towards the endpoints, health checks included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::UpstreamTls>,
    /// PROXY protocol header ahead of a tcp listener's bytes (opt-in: the endpoint must expect it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<crate::l4::ProxyProtocol>,
    /// Prefer endpoints near the gateway (`runtime.locality`), spilling on capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<crate::locality::PoolLocality>,
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
    /// HTTP/2 with prior knowledge (cleartext), or over TLS with ALPN `h2` when the pool has
    /// `tls`; required for gRPC.
    Http2,
    /// HTTP/3 over QUIC (UDP) with ALPN `h3`; needs `tls`.
    Http3,
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
    /// Failover order: lower levels take all traffic while they have room.
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Concurrent requests this endpoint serves well, for `locality`'s spill decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// This endpoint's KV-event PUB and replay sockets (`crate::kv_events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_replay: Option<SocketAddr>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default, deserialize_with = "crate::kv_events::endpoint_socket")]
    kv_events: Option<SocketAddr>,
    #[serde(default, deserialize_with = "crate::kv_events::endpoint_socket")]
    kv_replay: Option<SocketAddr>,
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
                    "an `IP:PORT` string or a map with `address`, `weight`, `zone`, `region`, \
                     `priority`, `capacity`, `kv_events`, `kv_replay`",
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
                    priority: 0,
                    capacity: None,
                    kv_events: None,
                    kv_replay: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let m = EndpointMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    address: m.address,
                    weight: m.weight,
                    zone: m.zone,
                    region: m.region,
                    priority: m.priority,
                    capacity: m.capacity,
                    kv_events: m.kv_events,
                    kv_replay: m.kv_replay,
                })
            }
        }
        d.deserialize_any(V)
    }
}
