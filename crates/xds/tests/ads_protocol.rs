//! The ADS protocol rules, checked on the wire: the control plane's real gRPC server on a
//! loopback port and a tonic ADS client playing Envoy, message by message. Real Envoys are in
//! crates/switchyard/tests/xds.rs; this covers what Envoy does not provoke on purpose (stale
//! nonces, a resume with versions, NACK without a resend).
//!
//! "Nothing was sent" is shown without waiting: the stream's requests are handled in order, so
//! the client asks for another type, and the next response must be that type's.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use switchyard_xds::resources::Kind;
use switchyard_xds::ControlPlane;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

fn config(pools: &[&str]) -> switchyard_config::Config {
    let mut yaml = String::from("listeners: [{name: gw, address: 127.0.0.1:8080}]\npools:\n");
    for (i, p) in pools.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: {p}, endpoints: [127.0.0.1:{}]}}\n",
            9000 + i
        ));
    }
    switchyard_config::parse(&yaml, Path::new("t.yaml")).unwrap()
}

async fn start(pools: &[&str]) -> (std::sync::Arc<ControlPlane>, String) {
    let plane = ControlPlane::new(config(pools));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(switchyard_xds::server::serve(listener, plane.clone()));
    (plane, addr)
}

fn node() -> Option<Node> {
    Some(Node {
        id: "test-node".into(),
        ..Default::default()
    })
}

async fn next<T: prost::Message + Default>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn sotw_acks_nacks_and_stale_nonces() {
    let (plane, addr) = start(&["a", "b"]).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(addr)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let cds = |version: &str, nonce: &str, error: Option<&str>| DiscoveryRequest {
        node: node(),
        type_url: Kind::Cluster.type_url().into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| Status {
            message: m.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(cds("", "", None)).await.unwrap();
    let mut rsp: Streaming<DiscoveryResponse> = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut rsp).await;
    assert_eq!(first.resources.len(), 2);
    assert_eq!(first.version_info, plane.snapshot().version(Kind::Cluster));

    // A config change while the first response is unacknowledged waits for the ACK.
    let other = |kind: Kind, names: &[&str]| DiscoveryRequest {
        node: node(),
        type_url: kind.type_url().into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    plane.reload(config(&["a", "b", "c"]));
    tx.send(other(Kind::Listener, &[])).await.unwrap();
    assert_eq!(next(&mut rsp).await.type_url, Kind::Listener.type_url());
    // A stale nonce is ignored; the ACK of the current one releases the next push, whole.
    tx.send(cds("", "999", None)).await.unwrap();
    tx.send(other(Kind::Route, &["gw"])).await.unwrap();
    assert_eq!(next(&mut rsp).await.type_url, Kind::Route.type_url());
    tx.send(cds(&first.version_info, &first.nonce, None))
        .await
        .unwrap();
    let second = next(&mut rsp).await;
    assert_eq!(second.resources.len(), 3);
    assert_ne!(second.nonce, first.nonce);

    // A NACK is recorded, the node keeps its ACKed version, and the version is not resent.
    tx.send(cds(&first.version_info, &second.nonce, Some("bad cluster")))
        .await
        .unwrap();
    tx.send(other(Kind::Endpoint, &["a"])).await.unwrap();
    assert_eq!(next(&mut rsp).await.type_url, Kind::Endpoint.type_url());
    let nodes = plane.nodes.view();
    let n = &nodes["test-node"];
    assert_eq!(n.acked["cds"], first.version_info);
    assert_eq!(n.nacks, 1);
    assert_eq!(n.last_nack.as_ref().unwrap().detail, "bad cluster");
    assert_eq!(n.last_nack.as_ref().unwrap().version, second.version_info);
    // The next change is pushed as usual.
    plane.reload(config(&["a"]));
    let third = next(&mut rsp).await;
    assert_eq!(third.resources.len(), 1);
}

#[tokio::test]
async fn delta_resumes_from_versions_and_names_removed_resources() {
    let (plane, addr) = start(&["a", "b"]).await;
    let snapshot = plane.snapshot();
    let mut client = AggregatedDiscoveryServiceClient::connect(addr)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    // A client resuming with what it has: `a` current, `b` outdated.
    let initial = [
        (
            "a",
            snapshot.get(Kind::Cluster, "a").unwrap().version.clone(),
        ),
        ("b", "old".to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: Kind::Cluster.type_url().into(),
        initial_resource_versions: initial,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut rsp: Streaming<DeltaDiscoveryResponse> = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut rsp).await;
    let names: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b"], "only what differs");
    let ack = |nonce: &str| DeltaDiscoveryRequest {
        node: node(),
        type_url: Kind::Cluster.type_url().into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let subscribe = |kind: Kind, names: &[&str]| DeltaDiscoveryRequest {
        node: node(),
        type_url: kind.type_url().into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    tx.send(ack(&first.nonce)).await.unwrap();
    tx.send(subscribe(Kind::Endpoint, &["a"])).await.unwrap();
    assert_eq!(next(&mut rsp).await.type_url, Kind::Endpoint.type_url());

    plane.reload(config(&["a"]));
    let second = next(&mut rsp).await;
    assert!(second.resources.is_empty());
    assert_eq!(second.removed_resources, ["b"]);
    tx.send(ack(&second.nonce)).await.unwrap();
    tx.send(subscribe(Kind::Route, &["gw"])).await.unwrap();
    assert_eq!(next(&mut rsp).await.type_url, Kind::Route.type_url());
    assert_eq!(
        plane.nodes.view()["test-node"].acked["cds"],
        plane.snapshot().version(Kind::Cluster)
    );
}
