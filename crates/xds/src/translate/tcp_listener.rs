//! A `protocol: tcp` listener as an Envoy listener of `tcp_proxy` filter chains: one per SNI
//! route (matched on the ClientHello's server name by the TLS inspector, not terminated), and
//! the listener's `pool` as the default chain.
//!
//! Envoy picks the most specific server name (`api.example.com` before `*.example.com`), the
//! gateway the first route that matches; the two agree unless a wildcard route is listed before
//! a more specific one, which is reported.

use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use switchyard_config::Listener as Config;

use super::{any, duration, socket_address, u32_value, Report};

pub fn listener(l: &Config, report: &mut Report) -> Listener {
    let at = format!("listeners[{}]", l.name);
    let proxy = |pool: &str| FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&TcpProxy {
                stat_prefix: l.name.clone(),
                cluster_specifier: Some(ClusterSpecifier::Cluster(pool.to_string())),
                idle_timeout: Some(duration(l.idle_timeout)),
                max_connect_attempts: Some(u32_value(l.connect_retries.saturating_add(1))),
                ..Default::default()
            }))),
        }],
        ..Default::default()
    };
    let mut chains = Vec::new();
    for (i, r) in l.sni_routes.iter().enumerate() {
        let wildcard_first = r.matcher.sni.starts_with("*.")
            && l.sni_routes[i + 1..].iter().any(|later| {
                let suffix = &r.matcher.sni[1..];
                later
                    .matcher
                    .sni
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
            });
        if wildcard_first {
            report.add(
                format!("{at}.sni_routes[{i}]"),
                "Envoy matches the most specific name first; a later, narrower route wins there",
            );
        }
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![r.matcher.sni.to_ascii_lowercase()],
                ..Default::default()
            }),
            ..proxy(&r.pool)
        });
    }
    if l.max_connections.is_some() {
        report.add(
            format!("{at}.max_connections"),
            "Envoy bounds a listener's connections with its overload manager, not per listener here",
        );
    }
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(l.address)),
        listener_filters: if l.sni_routes.is_empty() {
            Vec::new()
        } else {
            vec![ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        },
        filter_chains: chains,
        default_filter_chain: l.pool.as_deref().map(proxy),
        ..Default::default()
    }
}
