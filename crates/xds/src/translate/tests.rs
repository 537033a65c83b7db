use std::collections::HashMap;
use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::LbPolicy, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action, RouteConfiguration};
use prost::Message;

use super::{translate, EndpointHealth};
use crate::resources::Kind;

fn config(yaml: &str) -> switchyard_config::Config {
    switchyard_config::parse(yaml, Path::new("t.yaml")).expect("valid config")
}

const YAML: &str = r#"
listeners:
  - name: gw
    address: 127.0.0.1:8080
routes:
  - name: chat
    match: {path_prefix: /v1, method: POST}
    backends: [{pool: llama, weight: 3}, {pool: qwen, weight: 1}]
    retry: {attempts: 3, retry_on: [connect-failure, "503"]}
  - name: sticky
    match: {path: /s}
    pool: ring
    rate_limits: []
pools:
  - name: llama
    balancer: {kind: inference}
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
  - name: qwen
    endpoints: [127.0.0.1:9003]
  - name: ring
    balancer: {kind: ring_hash, key: {header: x-user}}
    endpoints: [127.0.0.1:9004]
"#;

#[test]
fn names_map_one_to_one_and_splits_retries_and_hashing_carry_over() {
    let (snapshot, report) = translate(&config(YAML), &HashMap::new());
    let names = |k| snapshot.resources(k).keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(Kind::Listener), ["gw"]);
    assert_eq!(names(Kind::Route), ["gw"]);
    assert_eq!(names(Kind::Cluster), ["llama", "qwen", "ring"]);
    assert_eq!(names(Kind::Endpoint), ["llama", "qwen", "ring"]);

    let rc =
        RouteConfiguration::decode(&*snapshot.get(Kind::Route, "gw").unwrap().body.value).unwrap();
    let routes = &rc.virtual_hosts[0].routes;
    let Some(Action::Route(chat)) = &routes[0].action else {
        panic!()
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &chat.cluster_specifier else {
        panic!("{chat:?}")
    };
    let split: Vec<_> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(split, [("llama", 3), ("qwen", 1)]);
    let retry = chat.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "connect-failure,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.num_retries.unwrap().value, 2);
    let Some(Action::Route(sticky)) = &routes[1].action else {
        panic!()
    };
    assert_eq!(sticky.hash_policy.len(), 1, "{sticky:?}");

    let ring = Cluster::decode(&*snapshot.get(Kind::Cluster, "ring").unwrap().body.value).unwrap();
    assert_eq!(ring.lb_policy, LbPolicy::RingHash as i32);
    let llama =
        Cluster::decode(&*snapshot.get(Kind::Cluster, "llama").unwrap().body.value).unwrap();
    assert_eq!(llama.lb_policy, LbPolicy::LeastRequest as i32);
    // The inference balancer's stand-in is reported, not silent.
    assert!(report
        .untranslated
        .iter()
        .any(|u| u.field == "pools[llama].balancer"));
}

#[test]
fn weights_change_only_the_endpoints_they_touch() {
    let c = config(YAML);
    let (before, _) = translate(&c, &HashMap::new());
    let (again, _) = translate(&c, &HashMap::new());
    for kind in Kind::ALL {
        assert_eq!(
            before.version(kind),
            again.version(kind),
            "translation is deterministic"
        );
    }
    let weights = HashMap::from([(
        "llama".to_string(),
        HashMap::from([(
            "127.0.0.1:9002".parse().unwrap(),
            EndpointHealth {
                weight: 40,
                healthy: false,
            },
        )]),
    )]);
    let (after, _) = translate(&c, &weights);
    for kind in [Kind::Cluster, Kind::Listener, Kind::Route] {
        assert_eq!(before.version(kind), after.version(kind));
    }
    let version =
        |s: &crate::resources::Snapshot, n: &str| s.get(Kind::Endpoint, n).unwrap().version.clone();
    assert_eq!(version(&before, "qwen"), version(&after, "qwen"));
    assert_ne!(version(&before, "llama"), version(&after, "llama"));
    let cla =
        ClusterLoadAssignment::decode(&*after.get(Kind::Endpoint, "llama").unwrap().body.value)
            .unwrap();
    let e = &cla.endpoints[0].lb_endpoints[1];
    assert_eq!(e.load_balancing_weight.unwrap().value, 40);
    assert_eq!(e.health_status, 2, "UNHEALTHY");
}
