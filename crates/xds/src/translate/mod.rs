//! From one Switchyard config to Envoy's resources, names one to one: listener `gw` becomes the
//! Envoy listener `gw` and its route configuration `gw` (every HTTP listener serves the config's
//! routes, as the gateway does), pool `llama` becomes cluster `llama` and its endpoints.
//!
//! What Envoy cannot express is never dropped quietly: each such field is an [`Untranslated`]
//! with its key path and the reason, served at `GET /xds/report` and logged once at load. A field
//! with its default value is not reported: nothing is lost by leaving it out.

mod cluster;
mod endpoint;
mod listener;
mod route;
mod tcp_listener;
#[cfg(test)]
mod tests;
mod upstream_tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::google::protobuf::{self as pb, Any};
use prost::{Message, Name};
use serde::Serialize;
use switchyard_config::l4::ListenerProtocol;
use switchyard_config::resilience::RetryBudgetConfig;
use switchyard_config::Config;

use crate::resources::{Kind, Resource, Snapshot};
pub use endpoint::{EndpointHealth, EndpointWeights};

/// A config field Envoy is not given, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct Untranslated {
    /// Key path in the config file (`routes[chat].rate_limits`).
    pub field: String,
    pub reason: String,
}

/// What a translation left out, in config order.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Report {
    pub untranslated: Vec<Untranslated>,
}

impl Report {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.untranslated.push(Untranslated {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// The resources for `config`, with capacity weights and health per pool where the control
/// plane computes them (`weights`; a pool without an entry gets its configured weights).
pub fn translate(
    config: &Config,
    weights: &HashMap<String, EndpointWeights>,
) -> (Snapshot, Report) {
    let mut report = Report::default();
    let mut resources = Vec::new();
    report_global(config, &mut report);
    let routes = route::route_configuration_parts(config, &mut report);
    for l in &config.listeners {
        if l.protocol == ListenerProtocol::Tcp {
            let listener = tcp_listener::listener(l, &mut report);
            resources.push((
                Kind::Listener,
                Resource::new(Kind::Listener, &l.name, &listener),
            ));
            continue;
        }
        let listener = listener::listener(l, &mut report);
        resources.push((
            Kind::Listener,
            Resource::new(Kind::Listener, &l.name, &listener),
        ));
        let rc = route::route_configuration(&l.name, &routes);
        resources.push((Kind::Route, Resource::new(Kind::Route, &l.name, &rc)));
    }
    let budgets = retry_budgets(config, &mut report);
    for p in &config.pools {
        let c = cluster::cluster(p, budgets.get(p.name.as_str()).copied(), &mut report);
        resources.push((Kind::Cluster, Resource::new(Kind::Cluster, &p.name, &c)));
        let cla = endpoint::load_assignment(p, weights.get(&p.name));
        resources.push((Kind::Endpoint, Resource::new(Kind::Endpoint, &p.name, &cla)));
    }
    (Snapshot::new(resources), report)
}

/// Envoy keeps a retry budget per cluster, Switchyard per route: each pool's cluster gets the
/// budget of the routes with retries that send to it, when they agree.
fn retry_budgets<'a>(
    config: &'a Config,
    report: &mut Report,
) -> HashMap<&'a str, &'a RetryBudgetConfig> {
    let mut budgets: HashMap<&str, &RetryBudgetConfig> = HashMap::new();
    for r in &config.routes {
        let Some(retry) = &r.retry else { continue };
        for target in r.targets() {
            match budgets.get(target.pool) {
                Some(b) if **b != retry.budget => report.add(
                    format!("routes[{}].retry.budget", r.name),
                    format!(
                        "Envoy's retry budget is per cluster and pool `{}` already has another route's",
                        target.pool
                    ),
                ),
                Some(_) => {}
                None => {
                    budgets.insert(target.pool, &retry.budget);
                }
            }
        }
    }
    budgets
}

fn report_global(config: &Config, report: &mut Report) {
    if !config.rate_limits.is_empty() {
        report.add(
            "rate_limits",
            "Envoy's local rate limit has no per-key token windows; use its global rate limit service",
        );
    }
    if config.redis.is_some() {
        report.add("redis", "shared rate limits are the gateway's own");
    }
    if config.tracing.is_some() {
        report.add(
            "tracing",
            "Envoy's tracer is set in its bootstrap, not per listener by this control plane",
        );
    }
}

/// Routes, clusters and listeners refer to each other through ADS.
pub(crate) fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub(crate) fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

pub(crate) fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn u32_value(v: u32) -> pb::UInt32Value {
    pb::UInt32Value { value: v }
}

pub(crate) fn bool_value(v: bool) -> pb::BoolValue {
    pb::BoolValue { value: v }
}

pub(crate) fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}
