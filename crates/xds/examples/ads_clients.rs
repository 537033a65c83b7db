//! Many small ADS clients for the control plane's memory benchmark (bench/xds/memory.py): each
//! acts as one Envoy node on a connection of its own, subscribes to listeners and clusters, then
//! to the routes and endpoints they name, and ACKs every response. Prints `acked N` once every
//! node has ACKed all four types, then holds its streams until stdin closes.
//!
//! `cargo run --release -p switchyard-xds --example ads_clients -- ADDR NODES sotw|delta`

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DiscoveryRequest,
};
use switchyard_xds::resources::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn node(i: usize) -> Option<Node> {
    Some(Node {
        id: format!("bench-{i}"),
        cluster: "bench".into(),
        ..Default::default()
    })
}

async fn sotw(addr: String, i: usize, done: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(addr).await?;
    let (tx, rx) = mpsc::channel(16);
    let req = |kind: Kind, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
        node: node(i),
        type_url: kind.type_url().into(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(req(Kind::Cluster, vec![], String::new(), String::new()))
        .await?;
    tx.send(req(Kind::Listener, vec![], String::new(), String::new()))
        .await?;
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut acked = BTreeSet::new();
    // State of the world: every request repeats the type's whole subscription.
    let mut names: [Vec<String>; 4] = Default::default();
    while let Some(r) = responses.message().await? {
        let kind = Kind::from_type_url(&r.type_url).expect("a known type");
        let subscribed = names[kind.index()].clone();
        tx.send(req(
            kind,
            subscribed,
            r.version_info.clone(),
            r.nonce.clone(),
        ))
        .await?;
        if let Some(next) = kind.completed_by() {
            if names[next.index()].is_empty() {
                names[next.index()] = names_of(&r.resources);
                let subscribed = names[next.index()].clone();
                tx.send(req(next, subscribed, String::new(), String::new()))
                    .await?;
            }
        }
        if acked.insert(kind) && acked.len() == 4 {
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

async fn delta(addr: String, i: usize, done: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(addr).await?;
    let (tx, rx) = mpsc::channel(16);
    let req = |kind: Kind, names: Vec<String>, nonce: String| DeltaDiscoveryRequest {
        node: node(i),
        type_url: kind.type_url().into(),
        resource_names_subscribe: names,
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(req(Kind::Cluster, vec![], String::new())).await?;
    tx.send(req(Kind::Listener, vec![], String::new())).await?;
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut acked = BTreeSet::new();
    while let Some(r) = responses.message().await? {
        let kind = Kind::from_type_url(&r.type_url).expect("a known type");
        tx.send(req(kind, vec![], r.nonce.clone())).await?;
        if let Some(next) = kind.completed_by() {
            if !acked.contains(&next) {
                let names = r.resources.iter().map(|r| r.name.clone()).collect();
                tx.send(req(next, names, String::new())).await?;
            }
        }
        if acked.insert(kind) && acked.len() == 4 {
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// The names of SotW resources: every type here carries its name in field 1.
fn names_of(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    resources
        .iter()
        .filter_map(|a| <Named as prost::Message>::decode(&*a.value).ok())
        .map(|n| n.name)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, nodes, api] = args.as_slice() else {
        anyhow::bail!("usage: ads_clients ADDR NODES sotw|delta");
    };
    let addr = format!("http://{addr}");
    let nodes: usize = nodes.parse()?;
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..nodes {
        let (addr, done) = (addr.clone(), done.clone());
        let delta_api = api == "delta";
        tokio::spawn(async move {
            let r = if delta_api {
                delta(addr, i, done).await
            } else {
                sotw(addr, i, done).await
            };
            if let Err(e) = r {
                eprintln!("node {i}: {e}");
            }
        });
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < nodes {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not every node ACKed within 60s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!("acked {nodes}");
    // Hold the streams until the driver closes stdin.
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    Ok(())
}
