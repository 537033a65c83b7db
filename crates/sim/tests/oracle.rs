//! `/sim/oracle/cached`: the fleet's true cache state as a benchmark's oracle router reads it,
//! following stores, evictions, a cleared cache and a restart.

mod common;

use std::net::SocketAddr;

use common::{post, MODEL};
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};

fn completion(prompt: &str) -> String {
    serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2}).to_string()
}

/// Blocks per replica address, as answered by the oracle on `ask`.
async fn cached(ask: SocketAddr, body: &str) -> Vec<(SocketAddr, usize)> {
    let r = post(ask, "/sim/oracle/cached", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .split(',')
        .map(|p| {
            let (a, n) = p.split_once('=').expect("ADDRESS=BLOCKS");
            (a.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn oracle_reports_each_replicas_true_cache() {
    let fleet = start_fleet(FleetConfig {
        replicas: vec![ReplicaConfig {
            count: 2,
            speed: 100.0,
            num_gpu_blocks: Some(40),
            ..Default::default()
        }],
        ..FleetConfig::uniform(MODEL, 2, "h100")
    })
    .await
    .unwrap();
    let addrs = fleet.addresses();
    let prompt = (0..200)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let body = completion(&prompt);
    let tokens = switchyard_sim::tokenizer::tokenize(&prompt).len();
    assert!(tokens >= 64, "{tokens} tokens");
    // Nothing cached anywhere; the answer names every replica, in fleet order, from either.
    assert_eq!(
        cached(addrs[1], &body).await,
        [(addrs[0], 0), (addrs[1], 0)]
    );

    // Served on replica 0: every full block of the prompt is cached there, none on replica 1.
    let r = post(addrs[0], "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let full = tokens / 16;
    assert_eq!(
        cached(addrs[1], &body).await,
        [(addrs[0], full), (addrs[1], 0)]
    );
    // A prompt that shares the first half matches that far.
    let half = (0..100)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
        + " other words";
    let shared = cached(addrs[0], &completion(&half)).await[0].1;
    assert!(shared > 0 && shared < full, "{shared} of {full}");

    // Other prompts fill the 40-block cache: the first one is evicted.
    for k in 0..4 {
        let other = (0..200)
            .map(|i| format!("x{k}y{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            post(addrs[0], "/v1/completions", &completion(&other))
                .await
                .status,
            200
        );
    }
    assert!(cached(addrs[0], &body).await[0].1 < full);
    let metrics = common::request(addrs[0], http::Method::GET, "/metrics", "", &[])
        .await
        .unwrap();
    let evicted: f64 = metrics
        .body
        .lines()
        .find(|l| l.starts_with("switchyard_sim_kv_evicted_blocks_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("eviction counter");
    assert!(evicted > 0.0, "{evicted}");

    // A cleared cache, and a restarted replica, hold nothing.
    assert_eq!(post(addrs[1], "/v1/completions", &body).await.status, 200);
    assert_eq!(cached(addrs[0], &body).await[1].1, full);
    assert_eq!(post(addrs[1], "/reset_prefix_cache", "").await.status, 200);
    // The reset is applied before the engine's next step: a request through it waits for that.
    assert_eq!(
        post(addrs[1], "/v1/completions", &completion("x"))
            .await
            .status,
        200
    );
    assert_eq!(cached(addrs[0], &body).await[1].1, 0);
    assert_eq!(post(addrs[0], "/v1/completions", &body).await.status, 200);
    assert_eq!(cached(addrs[1], &body).await[0].1, full);
    let crash = post(addrs[0], "/sim/faults", r#"{"crash_for_ms": 100}"#).await;
    assert_eq!(crash.status, 200, "{}", crash.body);
    // The crash takes effect once the supervisor has stopped the engine: wait for that state.
    let mut polls = 0;
    while cached(addrs[1], &body).await[0].1 != 0 {
        polls += 1;
        assert!(polls < 10_000, "replica 0's cache outlived its crash");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }

    let bad = post(addrs[1], "/sim/oracle/cached", "{").await;
    assert_eq!(bad.status, 400);
    fleet.shutdown().await;
}
