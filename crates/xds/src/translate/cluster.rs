//! A pool as an EDS cluster: its balancer as Envoy's nearest `lb_policy`, health checks,
//! outlier detection, circuit breakers (with the retry budget of the routes that send to it),
//! panic threshold, slow start, and its upstream protocol.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget, Thresholds},
    cluster::{
        common_lb_config::ConsistentHashingLbConfig, ClusterDiscoveryType, CommonLbConfig,
        DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig,
        RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check::{self, GrpcHealthCheck, HttpHealthCheck, TcpHealthCheck},
    HealthCheck, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions, RuntimeDouble,
};
use envoy_types::pb::envoy::config::core::v3::{
    proxy_protocol_config, transport_socket, ProxyProtocolConfig, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::{Int64Range, Percent};
use envoy_types::pb::google::protobuf::UInt64Value;
use switchyard_config::resilience::RetryBudgetConfig;
use switchyard_config::{Balancer, Pool, Protocol};

use super::{ads_source, any, duration, u32_value, Report};

pub fn cluster(p: &Pool, budget: Option<&RetryBudgetConfig>, report: &mut Report) -> Cluster {
    let at = format!("pools[{}]", p.name);
    let mut c = Cluster {
        name: p.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration(p.connect_timeout)),
        common_lb_config: Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(p.panic_threshold),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let slow_start = p.slow_start.as_ref().map(|s| SlowStartConfig {
        slow_start_window: Some(duration(s.window)),
        aggression: Some(RuntimeDouble {
            default_value: s.aggression,
            runtime_key: String::new(),
        }),
        min_weight_percent: Some(Percent {
            value: f64::from(s.min_weight_percent),
        }),
    });
    let least_request = |choices: u32| {
        LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
            choice_count: Some(u32_value(choices)),
            slow_start_config: slow_start.clone(),
            ..Default::default()
        })
    };
    let (policy, config) = match &p.balancer {
        Balancer::RoundRobin | Balancer::WeightedRoundRobin => (
            LbPolicy::RoundRobin,
            Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: slow_start.clone(),
            })),
        ),
        Balancer::Random => (LbPolicy::Random, None),
        Balancer::LeastRequest { choices } => {
            (LbPolicy::LeastRequest, Some(least_request(*choices)))
        }
        Balancer::RingHash { min_ring_size, .. } => (
            LbPolicy::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: u64::from(*min_ring_size),
                }),
                ..Default::default()
            })),
        ),
        Balancer::Maglev { table_size, .. } => (
            LbPolicy::Maglev,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value {
                    value: u64::from(*table_size),
                }),
            })),
        ),
        Balancer::PeakEwma { .. } => {
            report.add(
                format!("{at}.balancer"),
                "Envoy has no peak-EWMA balancer; nearest: LEAST_REQUEST with 2 choices",
            );
            (LbPolicy::LeastRequest, Some(least_request(2)))
        }
        Balancer::WeightedLeastUtilization { .. } | Balancer::Inference { .. } => {
            report.add(
                format!("{at}.balancer"),
                "translated as LEAST_REQUEST over endpoint weights the control plane computes from scraped load",
            );
            (LbPolicy::LeastRequest, Some(least_request(2)))
        }
    };
    if p.locality.is_some() {
        report.add(
            format!("{at}.locality"),
            "Envoy's zone-aware routing spills on health only, not on capacity; endpoints keep \
             their zone, region and priority, so set zone_aware_lb_config on the Envoy side",
        );
    }
    for (j, e) in p.endpoints.iter().enumerate() {
        if e.capacity.is_some() {
            report.add(
                format!("{at}.endpoints[{j}].capacity"),
                "Envoy has no per-endpoint capacity; it feeds only Switchyard's own spillover",
            );
        }
    }
    if slow_start.is_some() && !matches!(policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest) {
        report.add(
            format!("{at}.slow_start"),
            "Envoy ramps weights only under ROUND_ROBIN and LEAST_REQUEST",
        );
    }
    if let Some(tls) = &p.tls {
        c.transport_socket = Some(super::upstream_tls::transport_socket(
            tls, p.protocol, &at, report,
        ));
    }
    if p.proxy_protocol.is_some() {
        c.transport_socket = Some(proxy_protocol_v2(c.transport_socket.take()));
    }
    // Both hashing balancers bound each endpoint's load to `load_factor` × the mean, as
    // Envoy's hash_balance_factor does (in percent).
    if let Balancer::RingHash { load_factor, .. } | Balancer::Maglev { load_factor, .. } =
        &p.balancer
    {
        if let Some(common) = c.common_lb_config.as_mut() {
            common.consistent_hashing_lb_config = Some(ConsistentHashingLbConfig {
                hash_balance_factor: Some(u32_value((load_factor * 100.0).round() as u32)),
                ..Default::default()
            });
        }
    }
    c.lb_policy = policy as i32;
    c.lb_config = config;
    match p.protocol {
        Protocol::Http1 => {}
        Protocol::Http2 => {
            let options = HttpProtocolOptions {
                common_http_protocol_options: Some(CoreHttpOptions {
                    idle_timeout: Some(duration(p.idle_timeout)),
                    ..Default::default()
                }),
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                    ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        )),
                    },
                )),
                ..Default::default()
            };
            c.typed_extension_protocol_options = HashMap::from([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                any(&options),
            )]);
        }
        Protocol::Http3 => report.add(
            format!("{at}.protocol"),
            "Envoy's HTTP/3 upstream needs a QUIC transport socket, not translated; Envoy uses HTTP/1.1",
        ),
    }
    if p.protocol != Protocol::Http2 {
        let options = HttpProtocolOptions {
            common_http_protocol_options: Some(CoreHttpOptions {
                idle_timeout: Some(duration(p.idle_timeout)),
                ..Default::default()
            }),
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options = HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            any(&options),
        )]);
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(u32_value(p.limits.max_connections)),
            max_pending_requests: Some(u32_value(p.limits.max_pending)),
            max_requests: Some(u32_value(p.limits.max_requests)),
            max_retries: p.limits.max_retries.map(u32_value),
            retry_budget: budget.map(|b| RetryBudget {
                budget_percent: Some(Percent {
                    value: b.ratio * 100.0,
                }),
                min_retry_concurrency: Some(u32_value(b.min_concurrency)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    if let Some(h) = &p.health {
        let checker = if let Some(http) = &h.http {
            let expected = http
                .expect
                .ranges()
                .unwrap_or_else(|_| vec![(200, 200)])
                .into_iter()
                .map(|(lo, hi)| Int64Range {
                    start: i64::from(lo),
                    end: i64::from(hi) + 1,
                })
                .collect();
            health_check::HealthChecker::HttpHealthCheck(HttpHealthCheck {
                path: http.path.clone(),
                expected_statuses: expected,
                ..Default::default()
            })
        } else if let Some(grpc) = &h.grpc {
            health_check::HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: grpc.service.clone(),
                ..Default::default()
            })
        } else {
            health_check::HealthChecker::TcpHealthCheck(TcpHealthCheck::default())
        };
        c.health_checks = vec![HealthCheck {
            timeout: Some(duration(h.timeout)),
            interval: Some(duration(h.interval)),
            interval_jitter: h.jitter.map(duration),
            healthy_threshold: Some(u32_value(h.healthy)),
            unhealthy_threshold: Some(u32_value(h.unhealthy)),
            health_checker: Some(checker),
            ..Default::default()
        }];
    }
    if let Some(o) = &p.outlier {
        let defaults = switchyard_config::health::OutlierDetection::default();
        if o.consecutive_refused != defaults.consecutive_refused {
            report.add(
                format!("{at}.outlier.consecutive_refused"),
                "Envoy counts refused connections among local-origin failures only when split",
            );
        }
        if o.latency.is_some() {
            report.add(
                format!("{at}.outlier.latency"),
                "Envoy has no latency outlier detection",
            );
        }
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: Some(u32_value(o.consecutive_5xx)),
            consecutive_gateway_failure: Some(u32_value(o.consecutive_gateway_errors)),
            enforcing_consecutive_gateway_failure: Some(u32_value(100)),
            interval: Some(duration(o.interval)),
            base_ejection_time: Some(duration(o.base_ejection)),
            max_ejection_time: Some(duration(o.max_ejection)),
            max_ejection_percent: Some(u32_value(o.max_ejected_percent)),
            enforcing_success_rate: Some(u32_value(if o.success_rate.is_some() { 100 } else { 0 })),
            success_rate_minimum_hosts: o.success_rate.as_ref().map(|s| u32_value(s.minimum_hosts)),
            success_rate_request_volume: o
                .success_rate
                .as_ref()
                .map(|s| u32_value(s.request_volume)),
            success_rate_stdev_factor: o.success_rate.as_ref().map(|s| u32_value(s.stdev_factor)),
            enforcing_failure_percentage: Some(u32_value(if o.failure_percentage.is_some() {
                100
            } else {
                0
            })),
            failure_percentage_threshold: o
                .failure_percentage
                .as_ref()
                .map(|f| u32_value(f.threshold)),
            failure_percentage_minimum_hosts: o
                .failure_percentage
                .as_ref()
                .map(|f| u32_value(f.minimum_hosts)),
            failure_percentage_request_volume: o
                .failure_percentage
                .as_ref()
                .map(|f| u32_value(f.request_volume)),
            ..Default::default()
        });
    }
    for (field, set, reason) in [
        (
            "concurrency",
            p.concurrency.is_some(),
            "Envoy's adaptive concurrency is an HTTP filter, not a cluster setting; not translated",
        ),
        (
            "fairness",
            p.fairness.is_some(),
            "tenant-fair queueing is the gateway's own",
        ),
    ] {
        if set {
            report.add(format!("{at}.{field}"), reason);
        }
    }
    c
}

/// The PROXY v2 header ahead of the connection's bytes (or its TLS), as the gateway sends it.
fn proxy_protocol_v2(inner: Option<TransportSocket>) -> TransportSocket {
    let inner = inner.unwrap_or_else(|| TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer::default(),
        ))),
    });
    let outer = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: proxy_protocol_config::Version::V2 as i32,
            ..Default::default()
        }),
        transport_socket: Some(inner),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&outer))),
    }
}
