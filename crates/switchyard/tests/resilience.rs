//! Resilience end to end: the real gateway in front of real simulated model servers whose
//! faults (crashes, refusals, slowness) are injected while traffic flows: outlier ejection,
//! active health checks, circuit breakers, concurrency limits, panic mode, slow start and
//! connection limits.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send};
use support::fleet::*;
use support::{eventually, Gateway};
use switchyard_sim::FaultConfig;

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
    let (status, headers) = chat(&client::http1(), &gw).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-switchyard-overflow"], "concurrency");
    // Refused by the queue's timeout, not at once for want of a place.
    assert_eq!(
        gw.metric(r#"switchyard_admission_queued_total{pool="p",priority="standard"}"#),
        1.0,
        "did not queue first"
    );
    assert_eq!(
        gw.metric(
            r#"switchyard_admission_rejected_total{pool="p",priority="standard",reason="queue_timeout"}"#
        ),
        1.0
    );
    assert_eq!(first.await.unwrap(), 200);
    assert!(gw
        .admin_get("/metrics")
        .1
        .contains("switchyard_concurrency_limit{pool=\"p\"} 1"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pools_enforce_max_pending_and_max_connections() {
    // One stream per connection: a second request has to wait for the first one's stream.
    let origin = support::origin::Origin::start_h2_streams(1);
    let pool = "    protocol: http2\n    limits: { max_connections: 1, max_pending: 1 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&[origin.addr], "", pool)));
    let spawn_get = |path: &'static str| {
        let gw = gw.clone();
        tokio::spawn(async move { overflow_get(&gw, path).await })
    };
    // The first holds the one stream until the steps below are done.
    let first = spawn_get("/gate");
    eventually("the first request at the origin", || origin.hits() == 1).await;
    // The second waits for a stream, holding the one pending place.
    let second = spawn_get("/slow?ms=10");
    in_flight(&gw, 2).await;
    // The third overflows.
    let (status, overflow) = overflow_get(&gw, "/slow?ms=10").await;
    assert_eq!((status, overflow.as_deref()), (503, Some("pending")));
    assert_eq!(
        origin.hits(),
        1,
        "the second request did not wait for the first one's stream"
    );
    origin.open_gate(1);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
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
        let (status, overflow) = overflow_get(&gw, "/").await;
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

/// Send chat requests from `clients` concurrent clients through a gateway over four replicas
/// (replica `slow_one` slowed by `ms`, `pool` settings) until that replica is ejected; then
/// check that it alone was, for latency.
async fn load_until_latency_ejection(slow_one: usize, ms: u64, pool: &str, clients: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let fleet = fleet(4).await;
    let eps = fleet.addresses();
    slow(&fleet, slow_one, ms);
    let gw = Arc::new(Gateway::start(&config(&eps, "", pool)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client::http1();
                for _ in 0..5000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    assert_eq!(chat(&c, &gw).await.0, 200);
                }
            })
        })
        .collect();
    eventually("the slow replica ejected", || {
        endpoint(&pools(&gw), eps[slow_one])["ejected"] == true
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let p = pools(&gw);
    for (i, e) in eps.iter().enumerate() {
        assert_eq!(endpoint(&p, *e)["ejected"], i == slow_one, "{p}");
    }
    assert_eq!(
        gw.metric("switchyard_outlier_ejections_total{pool=\"p\",reason=\"latency\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_is_ejected_as_a_latency_outlier() {
    let pool = "    balancer: round_robin\n    outlier: { max_ejected_percent: 25, base_ejection: 30s, latency: { factor: 3, min_requests: 3, interval: 300ms, intervals: 2 } }\n";
    load_until_latency_ejection(2, 200, pool, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_outliers_are_ejected_by_default_in_pools_of_more_than_two() {
    // The config an operator first writes: least_request, no `outlier` section. The slow
    // replica gets few requests under least_request and finishes fewer; the age of what it
    // holds is the evidence.
    load_until_latency_ejection(1, 400, "    balancer: least_request\n", 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_and_latency_false_judge_no_latency() {
    // Two endpoints: no default. Explicitly off: none either. Both slowed pools keep serving
    // from every endpoint.
    let fleet = fleet(3).await;
    let eps = fleet.addresses();
    slow(&fleet, 0, 300);
    for (endpoints, pool) in [
        (&eps[..2], "    balancer: round_robin\n"),
        (
            &eps[..],
            "    balancer: round_robin\n    outlier: { latency: false }\n",
        ),
    ] {
        let gw = Gateway::start(&config(endpoints, "", pool));
        let c = client::http1();
        // Enough intervals for a judgement, if there were one to make.
        let mut requests = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) || requests < 12 {
            assert_eq!(chat(&c, &gw).await.0, 200);
            requests += 1;
        }
        let p = pools(&gw);
        assert_eq!(endpoint(&p, eps[0])["ejected"], false, "{p}");
        assert!(!gw.admin_get("/metrics").1.contains("reason=\"latency\""));
    }
}
