//! Fault injection over the control endpoint: injected errors, crashes with restart on the same
//! port, dropped streams, hangs, slowdowns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use switchyard_sim::{FaultConfig, ReplicaConfig};

fn fast() -> ReplicaConfig {
    ReplicaConfig {
        speed: 50.0,
        ..Default::default()
    }
}

async fn set_faults(addr: std::net::SocketAddr, json: &str) -> Resp {
    request(addr, Method::POST, "/sim/faults", json, &[])
        .await
        .expect("fault request")
}

#[tokio::test(flavor = "current_thread")]
async fn error_rate_one_gives_configured_status() {
    let (fleet, addr) = one(fast()).await;
    let r = set_faults(addr, r#"{"error_rate":1,"error_status":503}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error_rate"], 1.0);
    let r = post(addr, "/v1/chat/completions", &chat("s", "u", 3, false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(get(addr, "/sim/faults").await.json()["error_status"], 503);

    set_faults(addr, r#"{"error_status":429}"#).await;
    assert_eq!(post(addr, "/v1/completions", "{}").await.status, 429);
    set_faults(addr, r#"{"error_status":500}"#).await;
    let r = post(addr, "/v1/completions", "{}").await;
    assert_eq!(r.status, 500);
    assert!(r.headers.get("retry-after").is_none());

    assert_eq!(
        request(addr, Method::DELETE, "/sim/faults", "", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        post(addr, "/v1/chat/completions", &chat("s", "u", 3, false))
            .await
            .status,
        200
    );
    assert_eq!(set_faults(addr, r#"{"error_rate":2}"#).await.status, 400);
    assert_eq!(set_faults(addr, r#"{"bogus":1}"#).await.status, 400);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn crash_closes_the_port_and_it_comes_back() {
    let (fleet, addr) = one(fast()).await;
    // A stream in flight when the replica crashes is cut off.
    let inflight = tokio::spawn(async move {
        post(addr, "/v1/chat/completions", &chat("s", "u", 100_000, true)).await
    });
    // Wait until it is running.
    while metric(&scrape(addr).await, "vllm:num_requests_running") < 1.0 {
        tokio::task::yield_now().await;
    }
    let crashed_at = Instant::now();
    // The answer may or may not get out before the connection dies.
    let _ = request(
        addr,
        Method::POST,
        "/sim/faults",
        r#"{"crash_for_ms":1500}"#,
        &[],
    )
    .await;
    let r = inflight.await.unwrap();
    assert!(r.aborted && !r.body.contains("[DONE]"));
    // Down: connections are refused (seen before the 1.5 s crash is over).
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break true,
            Ok(_) if crashed_at.elapsed() > Duration::from_millis(1500) => break false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    assert!(refused, "port still accepting after crash");
    // Up again on the same port, with fresh state.
    let back = loop {
        if let Ok(r) = request(addr, Method::GET, "/health", "", &[]).await {
            break r;
        }
        assert!(
            crashed_at.elapsed() < Duration::from_secs(30),
            "replica did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(back.status, 200);
    assert!(crashed_at.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        metric(&scrape(addr).await, "vllm:generation_tokens_total"),
        0.0
    );
    assert_eq!(
        post(addr, "/v1/chat/completions", &chat("s", "u", 3, false))
            .await
            .status,
        200
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn stream_is_dropped_after_n_tokens() {
    let (fleet, addr) = one(ReplicaConfig {
        faults: FaultConfig {
            drop_stream_after_tokens: Some(5),
            ..Default::default()
        },
        ..fast()
    })
    .await;
    let r = post(addr, "/v1/chat/completions", &chat("s", "u", 50, true)).await;
    assert!(r.aborted, "stream should end with an error");
    assert!(!r.body.contains("[DONE]"));
    let tokens = r.body.matches("\"delta\":{\"content\":\"").count();
    assert!(tokens <= 5, "{tokens} tokens");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn latency_slowdown_and_hang() {
    let (fleet, addr) = one(fast()).await;
    // The quickest of three: a stall of the machine only ever lengthens a measurement.
    let mut base = Duration::MAX;
    for _ in 0..3 {
        let r = post(addr, "/v1/chat/completions", &chat("s", "u", 20, false)).await;
        base = base.min(r.elapsed);
    }
    set_faults(addr, r#"{"added_latency_ms":100}"#).await;
    let delayed = post(addr, "/v1/chat/completions", &chat("s", "u", 20, false))
        .await
        .elapsed;
    assert!(
        delayed >= Duration::from_millis(100) && delayed > base,
        "{base:?} {delayed:?}"
    );
    set_faults(addr, r#"{"added_latency_ms":0,"slow_factor":20}"#).await;
    let slow = post(addr, "/v1/chat/completions", &chat("s", "u", 20, false))
        .await
        .elapsed;
    assert!(slow > base * 5, "{base:?} {slow:?}");
    set_faults(addr, r#"{"slow_factor":1,"hang":true}"#).await;
    let hung = tokio::time::timeout(
        Duration::from_millis(200),
        post(addr, "/v1/completions", "{}"),
    )
    .await;
    assert!(hung.is_err(), "hang must not answer");
    assert_eq!(
        get(addr, "/health").await.status,
        200,
        "control endpoints still answer"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn fleet_ports_are_distinct_and_faults_settable_in_code() {
    let fleet = switchyard_sim::start_fleet(switchyard_sim::FleetConfig {
        replicas: vec![ReplicaConfig { count: 3, ..fast() }],
        ..switchyard_sim::FleetConfig::uniform(MODEL, 1, "h100")
    })
    .await
    .unwrap();
    let addrs = fleet.addresses();
    assert_eq!(addrs.len(), 3);
    assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2]);
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() != 0));
    fleet
        .set_faults(
            1,
            FaultConfig {
                error_rate: 1.0,
                error_status: 503,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        post(
            addrs[0],
            "/v1/completions",
            &format!(r#"{{"model":"{MODEL}","prompt":"x","max_tokens":1}}"#)
        )
        .await
        .status,
        200
    );
    assert_eq!(post(addrs[1], "/v1/completions", "{}").await.status, 503);
    fleet.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addrs[0]).await.is_err(),
        "shutdown closes listeners"
    );
}
