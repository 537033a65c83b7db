//! Resilience end to end: the real gateway in front of real simulated model servers whose
//! faults (errors, crashes, slowness) are injected while traffic flows.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, get, send, TestClient};
use support::Gateway;
use switchyard_sim::{start_fleet, FaultConfig, Fleet, FleetConfig, ReplicaConfig};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn fleet(n: usize) -> Fleet {
    start_fleet(FleetConfig {
        model: MODEL.into(),
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
fn slow(fleet: &Fleet, i: usize, ms: u64) {
    let faults = FaultConfig {
        added_latency_ms: ms,
        ..FaultConfig::default()
    };
    fleet.set_faults(i, faults).unwrap();
}

/// Make replica `i` answer every request with `status`.
fn failing(fleet: &Fleet, i: usize, status: u16) {
    let faults = FaultConfig {
        error_rate: 1.0,
        error_status: status,
        ..FaultConfig::default()
    };
    fleet.set_faults(i, faults).unwrap();
}

/// A gateway (with `pool` settings) over one replica slowed by `ms`, with one request already in
/// flight on it; the handle yields that request's status.
async fn busy_gateway(
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    (fleet, gw, first)
}

fn config(endpoints: &[SocketAddr], route_extra: &str, pool_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\n{route_extra}pools:\n  - name: p\n    endpoints: [{}]\n{pool_extra}",
        eps.join(", ")
    )
}

async fn chat(c: &TestClient, gw: &Gateway) -> (u16, http::HeaderMap) {
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

fn pools(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&gw.admin_get("/pools").1).unwrap()
}

fn endpoint(pools: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    pools["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap()
}

/// An address where connections are refused: a socket bound to it but never listening. Keep the
/// socket for the test's length, so no other test's server can be given the port meanwhile.
fn dead_address() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_failing_replica_and_are_counted() {
    let fleet = fleet(3).await;
    failing(&fleet, 0, 503);
    let route = "    retry: { attempts: 3, retry_on: [503, connect-failure], budget: { ratio: 1.0, min_concurrency: 10 } }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, ""));
    let c = client::http1();
    for _ in 0..30 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    let retried = gw.metric("switchyard_retries_total{route=\"r\",reason=\"5xx\"}");
    assert!(retried >= 5.0, "retries counted: {retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_without_a_policy_and_budget_limits_retries() {
    let fleet = fleet(2).await;
    for i in 0..2 {
        failing(&fleet, i, 503);
    }
    // A budget of 0% with no floor allows no retry at all.
    let route =
        "    retry: { attempts: 3, retry_on: [503], budget: { ratio: 0.0, min_concurrency: 0 } }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, ""));
    let c = client::http1();
    for _ in 0..5 {
        assert_eq!(chat(&c, &gw).await.0, 503);
    }
    assert_eq!(
        gw.metric("switchyard_retries_total{route=\"r\",reason=\"5xx\"}"),
        0.0
    );
    assert_eq!(
        gw.metric("switchyard_retries_refused_total{route=\"r\",reason=\"budget\"}"),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_dead_endpoint() {
    let fleet = fleet(3).await;
    let (dead, _dead) = dead_address();
    let mut eps = fleet.addresses();
    eps.push(dead);
    let route = "    retry: { attempts: 3, retry_on: [connect-failure] }\n";
    let pool = "    outlier: { consecutive_gateway_errors: 2, base_ejection: 30s, max_ejected_percent: 50, interval: 100ms }\n";
    let gw = Gateway::start(&config(&eps, route, pool));
    let c = client::http1();
    for _ in 0..40 {
        assert_eq!(chat(&c, &gw).await.0, 200, "a replayable request failed");
    }
    let p = pools(&gw);
    let d = endpoint(&p, dead);
    assert_eq!(d["ejected"], true, "{p}");
    assert!(
        d["requests"].as_u64().unwrap() <= 3,
        "ejected endpoint kept getting traffic: {d}"
    );
    assert!(
        gw.metric(
            "switchyard_outlier_ejections_total{pool=\"p\",reason=\"consecutive_gateway_errors\"}"
        ) >= 1.0
            || gw
                .admin_get("/metrics")
                .1
                .contains("switchyard_outlier_ejections_total{pool=\"p\"")
    );
    assert_eq!(gw.metric("switchyard_endpoints_ejected{pool=\"p\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_ejects_the_endpoint_at_once_and_no_request_fails() {
    let fleet = fleet(3).await;
    let (dead, _dead) = dead_address();
    let mut eps = fleet.addresses();
    eps.push(dead);
    let route = "    retry: { attempts: 3, retry_on: [connect-failure] }\n";
    // Three gateway errors in a row would be needed without the refused-connection detector.
    let pool = "    outlier: { consecutive_gateway_errors: 3, base_ejection: 30s, max_ejected_percent: 50 }\n";
    let gw = Gateway::start(&config(&eps, route, pool));
    let c = client::http1();
    // Until a request happens to pick the dead endpoint, nothing is known about it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint(&pools(&gw), dead)["requests"] == 0 {
        assert_eq!(chat(&c, &gw).await.0, 200, "a replayable request failed");
        assert!(
            Instant::now() < deadline,
            "the dead endpoint was never picked"
        );
    }
    for _ in 0..30 {
        assert_eq!(chat(&c, &gw).await.0, 200, "a replayable request failed");
    }
    let p = pools(&gw);
    let d = endpoint(&p, dead);
    assert_eq!(d["ejected"], true, "{p}");
    assert_eq!(d["requests"], 1, "one refusal is enough: {d}");
    assert_eq!(
        gw.metric("switchyard_outlier_ejections_total{pool=\"p\",reason=\"connect_refused\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("switchyard_retries_total{route=\"r\",reason=\"connect-failure\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_crashing_under_load_fails_no_replayable_request() {
    let fleet = fleet(4).await;
    let eps = fleet.addresses();
    let route = "    retry: { attempts: 3, retry_on: [connect-failure, reset, gateway-error], per_try_timeout: 2s }\n";
    let pool = "    outlier: { consecutive_gateway_errors: 3, base_ejection: 30s, max_ejected_percent: 50 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&eps, route, pool)));
    // Three clients in a paced loop of whole (non-streamed) completions, each replayable
    // (paced so the test does not take the machine from tests running beside it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client::http1();
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.push(chat(&c, &gw).await.0);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crash = http::Request::post(format!("http://{}/sim/faults", eps[0]))
        .body(Full::new(Bytes::from_static(b"{\"crash_for_ms\": 5000}")))
        .unwrap();
    let (status, _, _) = send(&client::http1(), crash).await;
    assert!(status.is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let statuses = c.await.unwrap();
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(total > 20, "only {total} requests");
    let p = pools(&gw);
    assert_eq!(endpoint(&p, eps[0])["ejected"], true, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_avoid_a_replica_whose_last_attempt_failed() {
    // Replicas 0 and 1 answer 503; only replica 2 works. Two attempts per request: a retry
    // sent to the other failing replica would fail the request.
    let fleet = fleet(3).await;
    failing(&fleet, 0, 503);
    failing(&fleet, 1, 503);
    let eps = fleet.addresses();
    let route = "    retry: { attempts: 2, retry_on: [503], budget: { ratio: 1.0, min_concurrency: 10 } }\n";
    let gw = Gateway::start(&config(&eps, route, ""));
    let c = client::http1();
    // Until both failing replicas have failed once, a retry may still land on one of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = pools(&gw);
        if [0, 1]
            .iter()
            .all(|&i| endpoint(&p, eps[i])["requests"] != 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a failing replica was never tried"
        );
        chat(&c, &gw).await;
    }
    for i in 0..30 {
        assert_eq!(chat(&c, &gw).await.0, 200, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_not_a_fixed_breaker_bounds_concurrent_retries() {
    // Replica 0 fails fast; replica 1 answers slowly, so retries pile up in flight. A 100%
    // budget allows them all; Envoy's old `max_retries: 3` default would refuse most.
    let fleet = fleet(2).await;
    failing(&fleet, 0, 503);
    slow(&fleet, 1, 400);
    let route =
        "    retry: { attempts: 2, retry_on: [503], budget: { ratio: 1.0, min_concurrency: 1 } }\n";
    for (pool, want_refused) in [("", false), ("    limits: { max_retries: 1 }\n", true)] {
        let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), route, pool)));
        let requests: Vec<_> = (0..12)
            .map(|_| {
                let gw = gw.clone();
                tokio::spawn(async move { chat(&client::http1(), &gw).await.0 })
            })
            .collect();
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.unwrap());
        }
        let refused = gw.metric("switchyard_retries_refused_total{route=\"r\",reason=\"breaker\"}");
        if want_refused {
            assert!(
                refused >= 1.0,
                "max_retries: 1 refused nothing: {statuses:?}"
            );
        } else {
            assert_eq!(refused, 0.0);
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_start_do_not_hide_a_crawling_replica_from_outlier_detection() {
    // One replica, slowed so much that a whole reply misses the 300 ms per-try timeout while a
    // stream's headers still come at once. Streams and whole replies alternate: if a stream's
    // headers counted as a success, the gateway-error streak would never pass one.
    let fleet = fleet(1).await;
    let faults = FaultConfig {
        slow_factor: 3000.0,
        ..FaultConfig::default()
    };
    fleet.set_faults(0, faults).unwrap();
    let route = "    retry: { attempts: 2, retry_on: [gateway-error], per_try_timeout: 300ms }\n";
    let pool = "    outlier: { consecutive_gateway_errors: 3, base_ejection: 30s }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let c = client::http1();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":50,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let req = http::Request::post(gw.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // Headers arrive; the body crawls on (held open until the test ends).
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
        assert_eq!(chat(&c, &gw).await.0, 504, "a whole reply should time out");
    }
    let p = pools(&gw);
    assert_eq!(endpoint(&p, fleet.addresses()[0])["ejected"], true, "{p}");
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_count_toward_the_retry_budget_until_they_end() {
    // A crawling replica and a dead address, keyed by user: streams go to the replica and stay
    // open; whole requests go to the dead address and must be retried on the replica.
    let fleet = fleet(1).await;
    let faults = FaultConfig {
        slow_factor: 300.0,
        ..FaultConfig::default()
    };
    fleet.set_faults(0, faults).unwrap();
    let live = fleet.addresses()[0];
    let (dead, _dead) = dead_address();
    let route = "    retry: { attempts: 2, retry_on: [connect-failure], budget: { ratio: 0.3, min_concurrency: 1 } }\n";
    // A load factor high enough that no key spills over to the other endpoint.
    let pool = "    balancer: { kind: ring_hash, key: { header: x-user }, load_factor: 100 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&[live, dead], route, pool)));
    let request = |user: &str, stream: bool, tokens: u32| {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":{tokens},"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        http::Request::post(gw.url("/v1/chat/completions"))
            .header("x-user", user)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    // Find a user the ring puts on the live replica and one it puts on the dead address.
    let c = client::http1();
    let (mut to_live, mut to_dead) = (None, None);
    for i in 0..64 {
        let user = format!("user-{i}");
        let before = endpoint(&pools(&gw), dead)["requests"].as_u64().unwrap();
        assert_eq!(send(&c, request(&user, false, 1)).await.0, 200);
        let after = endpoint(&pools(&gw), dead)["requests"].as_u64().unwrap();
        let slot = if after > before {
            &mut to_dead
        } else {
            &mut to_live
        };
        slot.get_or_insert(user);
        if to_live.is_some() && to_dead.is_some() {
            break;
        }
    }
    let (to_live, to_dead) = (to_live.unwrap(), to_dead.unwrap());
    // Ten streams open on the live replica: ten active requests once their headers are out.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let resp = c.request(request(&to_live, true, 500)).await.unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    // Three whole requests need a retry each, at once: 30% of 13 active requests allows three.
    // Counted only to their headers, the streams would leave three active and allow one.
    let whole: Vec<_> = (0..3)
        .map(|_| {
            let req = request(&to_dead, false, 4);
            tokio::spawn(async move { send(&client::http1(), req).await.0 })
        })
        .collect();
    for w in whole {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert_eq!(
        gw.metric("switchyard_retries_refused_total{route=\"r\",reason=\"budget\"}"),
        0.0
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_follow_a_crash_and_restart() {
    let fleet = fleet(2).await;
    let eps = fleet.addresses();
    let pool = "    health: { http: { path: /health, expect: 200 }, interval: 100ms, timeout: 200ms, healthy: 1, unhealthy: 1 }\n";
    let route = "    retry: { attempts: 2, retry_on: [connect-failure, reset] }\n";
    let gw = Gateway::start(&config(&eps, route, pool));
    // Crash replica 0 for 2 s through the simulator's control API.
    let crash = http::Request::post(format!("http://{}/sim/faults", eps[0]))
        .body(Full::new(Bytes::from_static(b"{\"crash_for_ms\": 2000}")))
        .unwrap();
    let (status, _, _) = send(&client::http1(), crash).await;
    assert!(status.is_success());
    let wait_for = |healthy: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if endpoint(&pools(&gw), eps[0])["healthy"] == healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "endpoint never became healthy={healthy}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(false);
    let c = client::http1();
    for _ in 0..10 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    wait_for(true);
    assert!(gw
        .admin_get("/metrics")
        .1
        .contains("switchyard_health_transitions_total{pool=\"p\",reason=\"unhealthy\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_is_503_with_header() {
    let (_fleet, gw, slow) = busy_gateway(800, "    limits: { max_requests: 1 }\n").await;
    let (status, headers) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-switchyard-overflow"], "requests");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        gw.metric("switchyard_overflow_total{pool=\"p\",reason=\"requests\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_times_out() {
    let (_fleet, gw, first) = busy_gateway(
        1500,
        "    concurrency: { kind: fixed, limit: 1, max_queue: 4, queue_timeout: 300ms }\n",
    )
    .await;
    let start = Instant::now();
    let (status, headers) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-switchyard-overflow"], "concurrency");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "did not queue first"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert!(gw
        .admin_get("/metrics")
        .1
        .contains("switchyard_concurrency_limit{pool=\"p\"} 1"));
}

/// Which replica served each of `n` requests with the given extra header.
async fn spread(gw: &Gateway, n: usize, header: Option<(&str, String)>) -> Vec<u64> {
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
    pools(gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_user_on_one_replica() {
    let fleet = fleet(4).await;
    let pool = "    balancer: { kind: ring_hash, key: { header: x-user } }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 20, Some(("x-user", "alice".into()))).await;
    assert_eq!(counts.iter().filter(|c| **c > 0).count(), 1, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_less_to_a_slow_replica() {
    let fleet = fleet(3).await;
    slow(&fleet, 0, 150);
    let pool = "    balancer: { kind: peak_ewma, decay: 10s }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 60, None).await;
    assert!(
        counts[0] * 4 < counts[1] + counts[2],
        "slow replica got {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_least_utilization_reads_orca_reports_from_responses() {
    let fleet = fleet(2).await;
    let pool = "    balancer: { kind: weighted_least_utilization, blackout: 100ms }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 20, None).await;
    assert_eq!(counts.iter().sum::<u64>(), 20);
    // The simulator only sends `endpoint-load-metrics` when asked, so reports arriving means
    // the gateway asked and parsed them: every endpoint now has a reported load.
    let p = pools(&gw);
    for e in p["pools"][0]["endpoints"].as_array().unwrap() {
        assert!(e["load_report"].is_object(), "no ORCA report recorded: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_races_a_slow_replica() {
    let fleet = fleet(2).await;
    slow(&fleet, 0, 2000);
    let route = "    hedge: { delay: 50ms, budget_percent: 100 }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, ""));
    let c = client::http1();
    for i in 0..6 {
        let start = Instant::now();
        assert_eq!(chat(&c, &gw).await.0, 200);
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "request {i} waited for the slow replica"
        );
    }
    // Hedges are their own series, not retries.
    let sent = gw.metric("switchyard_hedges_total{route=\"r\"}");
    let won = gw.metric("switchyard_hedges_won_total{route=\"r\"}");
    assert!(sent >= 2.0, "hedges sent: {sent}");
    assert!(won >= 2.0 && won <= sent, "hedges won: {won} of {sent}");
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        !metrics.contains("switchyard_retries_total{"),
        "a hedge was counted as a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_over_budget_are_refused_and_counted() {
    let fleet = fleet(2).await;
    slow(&fleet, 0, 300);
    slow(&fleet, 1, 300);
    // 1% of requests may hedge: a handful of requests earn none.
    let route = "    hedge: { delay: 20ms, budget_percent: 1 }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, ""));
    let c = client::http1();
    for _ in 0..4 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    assert_eq!(
        gw.metric("switchyard_hedges_refused_total{route=\"r\",reason=\"budget\"}"),
        4.0
    );
    assert_eq!(gw.metric("switchyard_hedges_total{route=\"r\"}"), 0.0);
    assert_eq!(gw.metric("switchyard_hedges_won_total{route=\"r\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_routes_to_all_when_too_few_are_available() {
    let fleet = fleet(2).await;
    let mut eps = fleet.addresses();
    let (dead, _dead) = dead_address();
    eps.push(dead);
    let route = "    retry: { attempts: 3, retry_on: [connect-failure] }\n";
    // Any ejection leaves fewer than 100% available: the pool panics and ignores ejections.
    let pool = "    outlier: { consecutive_gateway_errors: 1, base_ejection: 30s, max_ejected_percent: 50 }\n    panic_threshold: 100\n";
    let gw = Gateway::start(&config(&eps, route, pool));
    let c = client::http1();
    for _ in 0..30 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    assert_eq!(gw.metric("switchyard_panic_mode{pool=\"p\"}"), 1.0);
    let p = pools(&gw);
    let dead = &p["pools"][0]["endpoints"][2];
    assert_eq!(dead["ejected"], true);
    assert!(
        dead["requests"].as_u64().unwrap() > 1,
        "panic mode should still try it: {dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_endpoint_in() {
    let fleet = fleet(3).await;
    let eps = fleet.addresses();
    let pool = "    slow_start: { window: 30s, min_weight_percent: 10 }\n";
    let gw = Gateway::start(&config(&eps[..2], "", pool));
    gw.reload(&config(&eps, "", pool));
    let counts = spread(&gw, 60, None).await;
    assert_eq!(counts.len(), 3);
    assert!(
        counts[2] < 10,
        "new endpoint got {} of 60 right after joining: {counts:?}",
        counts[2]
    );
    assert!(counts[2] > 0 || counts[0] + counts[1] == 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_upstream_connections() {
    let (_fleet, gw, slow) = busy_gateway(800, "    limits: { max_connections: 1 }\n").await;
    let (status, headers) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-switchyard-overflow"], "connections");
    assert_eq!(slow.await.unwrap(), 200);
    // The one connection is pooled again and reused.
    assert_eq!(chat(&client::http1(), &gw).await.0, 200);
}

/// GET `path` through the gateway on a fresh HTTP/1 connection: status, overflow header, time.
async fn timed_get(gw: &Gateway, path: &str) -> (u16, Option<String>, Duration) {
    let start = Instant::now();
    let (status, headers, _) = client::get(&client::http1(), &gw.url(path)).await;
    let overflow = headers
        .get("x-switchyard-overflow")
        .map(|v| v.to_str().unwrap().to_string());
    (status.as_u16(), overflow, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pools_enforce_max_pending_and_max_connections() {
    // One stream per connection: a second request has to wait for the first one's stream.
    let origin = support::origin::Origin::start_h2_streams(1);
    let pool = "    protocol: http2\n    limits: { max_connections: 1, max_pending: 1 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&[origin.addr], "", pool)));
    let spawn_get = |path: &'static str| {
        let gw = gw.clone();
        tokio::spawn(async move { timed_get(&gw, path).await })
    };
    let first = spawn_get("/slow?ms=800");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = spawn_get("/slow?ms=10");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first holds the stream, the second the one pending place: the third overflows.
    let (status, overflow, took) = timed_get(&gw, "/slow?ms=10").await;
    assert_eq!((status, overflow.as_deref()), (503, Some("pending")));
    assert!(took < Duration::from_millis(300), "overflow took {took:?}");
    assert_eq!(first.await.unwrap().0, 200);
    let (status, _, waited) = second.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(400),
        "the second request did not wait for a stream: {waited:?}"
    );
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        gw.metric("switchyard_overflow_total{pool=\"p\",reason=\"pending\"}"),
        1.0
    );

    // Two endpoints, one connection allowed in all: while the first endpoint's connection is
    // open, a request for the second cannot open another.
    let (a, b) = (
        support::origin::Origin::start(),
        support::origin::Origin::start(),
    );
    let pool =
        "    protocol: http2\n    balancer: round_robin\n    limits: { max_connections: 1 }\n";
    let gw = Gateway::start(&config(&[a.addr, b.addr], "", pool));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (status, overflow, _) = timed_get(&gw, "/").await;
        seen.push((status, overflow));
    }
    seen.sort();
    assert_eq!(
        seen,
        [(200, None), (503, Some("connections".to_string()))],
        "one endpoint served, the other had no connection to use"
    );
    let total = a.connections.load(std::sync::atomic::Ordering::SeqCst)
        + b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_balancer_keeps_a_prefix_together_and_explains_picks() {
    let fleet = fleet(4).await;
    let pool = "    balancer: { kind: inference, scrape_interval: 20ms }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let c = client::http1();
    let system = "You are a careful assistant for a railway operations team. ".repeat(40);
    for i in 0..12 {
        let body = serde_json::json!({
            "model": MODEL,
            "max_tokens": 2,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("question {i}")}
            ]
        });
        let req = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let (status, headers, _) = send(&c, req).await;
        assert_eq!(status, 200);
        assert!(
            headers.contains_key("x-switchyard-pick"),
            "no pick explanation"
        );
    }
    let counts: Vec<u64> = pools(&gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .collect();
    assert!(
        counts.iter().any(|c| *c >= 10),
        "shared prefix was not kept together: {counts:?}"
    );

    // A malformed body gets an OpenAI-style 400 and is not forwarded.
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"model\": ")))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let total: u64 = pools(&gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_an_adapter_as_model_go_where_it_is_loaded() {
    // Two replicas serving two LoRA adapters with one adapter slot each. A long request keeps
    // `sql-lora` running on replica 0 and `chat-lora` on replica 1, so each replica's only slot
    // is taken: an adapter is either loaded there or must wait there.
    let fleet = start_fleet(FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: 2,
            lora_adapters: vec!["sql-lora".into(), "chat-lora".into()],
            max_loras: 1,
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let addrs = fleet.addresses();
    let hold = |addr: SocketAddr, model: &'static str| {
        let body = format!(r#"{{"model":"{model}","prompt":"hold the slot","max_tokens":4000}}"#);
        let req = http::Request::post(format!("http://{addr}/v1/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        tokio::spawn(async move { send(&client::http1(), req).await })
    };
    let holds = [hold(addrs[0], "sql-lora"), hold(addrs[1], "chat-lora")];
    // Each replica runs its hold before the gateway first looks: a probe routed before the
    // scrapes saw the adapters could land where its adapter must wait behind a hold, and wait
    // there for the whole hold.
    for (addr, adapter) in [(addrs[0], "sql-lora"), (addrs[1], "chat-lora")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, body) = get(&client::http1(), &format!("http://{addr}/metrics")).await;
            let text = String::from_utf8_lossy(&body);
            if text.lines().any(|l| {
                l.starts_with("vllm:lora_requests_info")
                    && l.contains(&format!("running_lora_adapters=\"{adapter}\""))
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{adapter} never ran on {addr}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let pool = "    balancer: { kind: inference, scrape_interval: 20ms }\n";
    let gw = Gateway::start(&config(&addrs, "", pool));
    // The scraper's first round is not tied to readiness: give it a few intervals (20 ms each)
    // before the first probe, which the loop below then checks was explained by the scrape.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client::http1();
    // The scrapes have seen both adapters running once a request for one is explained so.
    let ask = |model: &'static str, i: usize| {
        let body = serde_json::json!({
            "model": model,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": format!("question {i} for {model}")}]
        });
        http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, headers, _) = send(&c, ask("sql-lora", 0)).await;
        let pick = headers["x-switchyard-pick"].to_str().unwrap().to_string();
        if pick.contains("lora=1.00") && pick.contains("lora=0.00") {
            break;
        }
        assert!(Instant::now() < deadline, "adapters never seen: {pick}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = endpoint_requests(&gw);
    for i in 1..=8 {
        for model in ["sql-lora", "chat-lora"] {
            let (status, headers, body) = send(&c, ask(model, i)).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["model"], model);
            let pick = headers["x-switchyard-pick"].to_str().unwrap();
            let chosen = if model == "sql-lora" { 0 } else { 1 };
            assert!(
                pick.starts_with(&format!("{chosen}=")) && pick.contains("lora=1.00"),
                "{model}: {pick}"
            );
        }
    }
    let after = endpoint_requests(&gw);
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [8, 8],
        "each adapter's requests went to the replica running it"
    );
    for h in holds {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_reports_on_responses_stand_in_for_a_stale_scrape() {
    // The pool scrapes once at start, then not for an hour: after 300 ms the scrape is stale
    // and the picker knows no KV usage (the kv_cache scorer says 0.50), unless responses
    // bring ORCA load reports (the simulator answers `endpoint-load-metrics-format`).
    let fleet = fleet(1).await;
    for orca in [true, false] {
        let pool = format!(
            "    balancer: {{ kind: inference, scrape_interval: 1h, stale_after: 300ms, orca: {orca} }}\n"
        );
        let gw = Gateway::start(&config(&fleet.addresses(), "", &pool));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = client::http1();
        let mut picks = Vec::new();
        for _ in 0..2 {
            let body = format!(
                r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
            );
            let req = http::Request::post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-switchyard-debug", "1")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (status, headers, _) = send(&c, req).await;
            assert_eq!(status, 200);
            assert_eq!(headers.contains_key("endpoint-load-metrics"), orca);
            picks.push(headers["x-switchyard-pick"].to_str().unwrap().to_string());
        }
        assert!(
            picks[0].contains("kv_cache=0.50"),
            "stale scrape: {}",
            picks[0]
        );
        assert_eq!(
            !picks[1].contains("kv_cache=0.50"),
            orca,
            "after a reported response (orca: {orca}): {}",
            picks[1]
        );
    }
}

/// Requests forwarded to each endpoint of the first pool, in config order.
fn endpoint_requests(gw: &Gateway) -> Vec<u64> {
    pools(gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_are_refused_when_the_pool_is_full_critical_ones_wait() {
    let fleet = fleet(1).await;
    slow(&fleet, 0, 400);
    let pool = "    concurrency: { kind: fixed, limit: 1, max_queue: 8, queue_timeout: 5s }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { chat(&client::http1(), &gw).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let with_priority = |p: &'static str| {
        let gw = gw.clone();
        async move {
            let body = format!(
                r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
            );
            let req = http::Request::post(gw.url("/v1/chat/completions"))
                .header("x-switchyard-priority", p)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            send(&client::http1(), req).await
        }
    };
    let start = Instant::now();
    let (status, headers, body) = with_priority("sheddable").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "sheddable request queued"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "shed");
    let (status, _, _) = with_priority("critical").await;
    assert_eq!(status, 200, "critical request should wait for a permit");
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_a_light_one() {
    // One slot, each request takes 200 ms upstream. The flooder (known by its API key) fires
    // 30 requests at once; the light tenant (known by header) sends one at a time.
    let fleet = fleet(1).await;
    slow(&fleet, 0, 200);
    let pool = "    concurrency: { kind: fixed, limit: 1, max_queue: 32, queue_timeout: 20s }\n    fairness: { tenant_header: x-tenant, max_queued_per_tenant: 8 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let request = |header: &'static str, value: &'static str| {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        http::Request::post(gw.url("/v1/chat/completions"))
            .header(header, value)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let req = request("authorization", "Bearer sk-flood-secret");
            tokio::spawn(async move { send(&client::http1(), req).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client::http1();
    for i in 0..3 {
        let asked = Instant::now();
        let (status, _, _) = send(&c, request("x-tenant", "light")).await;
        let took = asked.elapsed();
        assert_eq!(status, 200, "light request {i}");
        // Its turn comes after at most one flood request (~200 ms) plus its own 200 ms; behind
        // the flooder's 8 queued requests (FIFO) it would take 1.8 s.
        assert!(
            took < Duration::from_millis(1000),
            "light request {i} took {took:?}"
        );
    }
    let mut ok = 0;
    let mut refused = 0;
    for f in flood {
        let (status, headers, body) = f.await.unwrap();
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(headers["retry-after"], "1");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["type"], "tenant_queue_full");
            }
            other => panic!("flood request answered {other}"),
        }
    }
    // One in flight plus its 8 places in the queue; the rest refused at once.
    assert_eq!((ok, refused), (9, 21));
    let m = |s: &str| gw.metric(s);
    assert_eq!(
        m(
            r#"switchyard_admission_rejected_total{pool="p",priority="standard",reason="tenant_queue_full"}"#
        ),
        21.0
    );
    assert_eq!(
        m(r#"switchyard_admission_admitted_total{pool="p",priority="standard"}"#),
        12.0
    );
    assert!(m(r#"switchyard_admission_queued_total{pool="p",priority="standard"}"#) >= 10.0);
    // Identity is hashed: the key is nowhere in what the gateway exports.
    let (_, metrics) = gw.admin_get("/metrics");
    let (_, pools) = gw.admin_get("/pools");
    assert!(!metrics.contains("sk-flood") && !pools.contains("sk-flood"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pools_answer_gateway_errors_in_openai_shape() {
    let fleet = fleet(1).await;
    let route = "    max_request_body: 200\n";
    let pool = "    balancer: inference\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let big = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(500)
    );
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let (status, headers, body) = send(&client::http1(), req).await;
    assert_eq!(status, 413);
    assert!(headers.contains_key("x-request-id"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");
    assert!(v["error"]["message"].is_string());
}
