//! A simulated model-server fleet behind a real gateway, for the resilience, retry and
//! balancing suites: replicas with injected faults, a one-pool config, and readers of `/pools`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use switchyard_sim::{start_fleet, FaultConfig, Fleet, FleetConfig, ReplicaConfig};

use super::client::{self, send, TestClient};
use super::Gateway;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// `n` simulated replicas serving [`MODEL`].
pub async fn fleet(n: usize) -> Fleet {
    fleet_of(MODEL, n).await
}

/// `n` simulated replicas serving `model`.
pub async fn fleet_of(model: &str, n: usize) -> Fleet {
    start_fleet(FleetConfig {
        model: model.into(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: n,
            speed: 50.0,
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    })
    .await
    .unwrap()
}

/// Make replica `i` answer every request after an extra `ms` milliseconds.
pub fn slow(fleet: &Fleet, i: usize, ms: u64) {
    let faults = FaultConfig {
        added_latency_ms: ms,
        ..FaultConfig::default()
    };
    fleet.set_faults(i, faults).unwrap();
}

/// Make replica `i` answer every request with `status`.
pub fn failing(fleet: &Fleet, i: usize, status: u16) {
    let faults = FaultConfig {
        error_rate: 1.0,
        error_status: status,
        ..FaultConfig::default()
    };
    fleet.set_faults(i, faults).unwrap();
}

/// A gateway (with `pool` settings) over one replica slowed by `ms`, with one request already in
/// flight on it; the handle yields that request's status.
pub async fn busy_gateway(
    ms: u64,
    pool: &str,
) -> (Fleet, std::sync::Arc<Gateway>, tokio::task::JoinHandle<u16>) {
    let fleet = fleet(1).await;
    slow(&fleet, 0, ms);
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { chat(&client::http1(), &gw).await.0 })
    };
    in_flight(&gw, 1).await;
    (fleet, gw, first)
}

/// Wait until the first pool has `n` requests in flight (`/pools`).
pub async fn in_flight(gw: &Gateway, n: u64) {
    super::eventually(&format!("{n} requests in flight"), || {
        pools(gw)["pools"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["in_flight"].as_u64().unwrap())
            .sum::<u64>()
            == n
    })
    .await;
}

pub fn config(endpoints: &[SocketAddr], route_extra: &str, pool_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0, trusted_headers: [priority, debug]}}\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\n{route_extra}pools:\n  - name: p\n    endpoints: [{}]\n{pool_extra}",
        eps.join(", ")
    )
}

pub async fn chat(c: &TestClient, gw: &Gateway) -> (u16, http::HeaderMap) {
    let body = format!(
        r#"{{"model":"{MODEL}","max_tokens":4,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, headers, _) = send(c, req).await;
    (status.as_u16(), headers)
}

pub fn pools(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&gw.admin_get("/pools").1).unwrap()
}

pub fn endpoint(pools: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    pools["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap()
}

/// An address where connections are refused: a socket bound to it but never listening. Keep the
/// socket for the test's length, so no other test's server can be given the port meanwhile.
pub fn dead_address() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// Which replica served each of `n` requests with the given extra header.
pub async fn spread(gw: &Gateway, n: usize, header: Option<(&str, String)>) -> Vec<u64> {
    let c = client::http1();
    for _ in 0..n {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let mut b = http::Request::post(gw.url("/v1/chat/completions"));
        if let Some((k, v)) = &header {
            b = b.header(*k, v.as_str());
        }
        let (status, _, _) = send(&c, b.body(Full::new(Bytes::from(body))).unwrap()).await;
        assert_eq!(status, 200);
    }
    endpoint_requests(gw)
}

/// GET `path` through the gateway on a fresh HTTP/1 connection: status and overflow header.
pub async fn overflow_get(gw: &Gateway, path: &str) -> (u16, Option<String>) {
    let (status, headers, _) = client::get(&client::http1(), &gw.url(path)).await;
    let overflow = headers
        .get("x-switchyard-overflow")
        .map(|v| v.to_str().unwrap().to_string());
    (status.as_u16(), overflow)
}

/// Requests forwarded to each endpoint of the first pool, in config order.
pub fn endpoint_requests(gw: &Gateway) -> Vec<u64> {
    pools(gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .collect()
}

/// A gateway config with one `inference` pool over `fleet`, subscribed to each replica's KV
/// events (`kv_events: {KV}` with `kv` inside the braces), and the debug header trusted.
pub fn kv_events_config(fleet: &Fleet, kv: &str) -> String {
    let endpoints: String = fleet
        .addresses()
        .iter()
        .zip(fleet.kv_event_addresses())
        .map(|(a, (events, replay))| {
            format!(
                "      - {{ address: {a}, kv_events: \"tcp://{events}\", kv_replay: \"tcp://{replay}\" }}\n"
            )
        })
        .collect();
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0, trusted_headers: [debug]}}\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\npools:\n  - name: p\n    endpoints:\n{endpoints}    balancer: {{ kind: inference, scrape_interval: 20ms, kv_events: {{{kv}}} }}\n"
    )
}
