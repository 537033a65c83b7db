//! Retries and hedging end to end, against simulated replicas with injected faults: what is
//! retried, where it goes, and what the retry and hedge budgets allow.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send};
use support::fleet::*;
use support::{eventually, Gateway};
use switchyard_sim::FaultConfig;

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
    // Crash replica 0 once it is serving its share of the load.
    eventually("replica 0 to serve requests", || {
        endpoint(&pools(&gw), eps[0])["requests"].as_u64().unwrap() >= 2
    })
    .await;
    let crash = http::Request::post(format!("http://{}/sim/faults", eps[0]))
        .body(Full::new(Bytes::from_static(b"{\"crash_for_ms\": 30000}")))
        .unwrap();
    let (status, _, _) = send(&client::http1(), crash).await;
    assert!(status.is_success());
    let at_crash: u64 = endpoint_requests(&gw).iter().sum();
    // Load goes on until the crashed replica is ejected and 20 more requests have been sent.
    eventually(
        "replica 0 ejected and 20 requests sent after the crash",
        || {
            let p = pools(&gw);
            let sent: u64 = p["pools"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["requests"].as_u64().unwrap())
                .sum();
            endpoint(&p, eps[0])["ejected"] == true && sent >= at_crash + 20
        },
    )
    .await;
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
    let deadline = Instant::now() + support::WAIT;
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
async fn hedging_races_a_slow_replica() {
    // Replica 0 answers after 20 s: a request answered before that did not wait for it (the
    // margin is for a loaded machine; a hedged request takes milliseconds).
    let fleet = fleet(2).await;
    slow(&fleet, 0, 20_000);
    let route = "    hedge: { delay: 50ms, budget_percent: 100 }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, ""));
    let c = client::http1();
    let start = Instant::now();
    for _ in 0..6 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "a request waited for the slow replica"
    );
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
async fn an_adaptive_per_try_timeout_retries_a_request_stuck_on_a_slow_replica() {
    // No fixed per-try timeout: `auto` reads the pool's recent time to head. Once it is known,
    // replica 0 turns 20 s slow; a request answered before that was retried, not kept waiting
    // (the margin is for a loaded machine: an adaptive timeout here is milliseconds).
    let fleet = fleet(3).await;
    let route = "    retry: { attempts: 2, retry_on: [reset], per_try_timeout: auto }\n";
    let pool = "    balancer: round_robin\n    outlier: { consecutive_5xx: 0, consecutive_gateway_errors: 0, consecutive_refused: 0, latency: false }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let c = client::http1();
    until_head_latency_known(&gw, &c).await;
    slow(&fleet, 0, 20_000);
    let start = Instant::now();
    for _ in 0..6 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "a request waited for the slow replica"
    );
    let retried = gw.metric("switchyard_retries_total{route=\"r\",reason=\"timeout\"}");
    assert!(retried >= 2.0, "timeouts retried: {retried}");
    // Nothing was ejected: the adaptive timeout acted alone.
    assert_eq!(gw.metric("switchyard_endpoints_ejected{pool=\"p\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_timeout_never_fails_a_request_it_cannot_retry() {
    // One attempt only: `auto` has no retry to send, so the slow answer is waited for.
    let fleet = fleet(3).await;
    let route = "    retry: { attempts: 1, per_try_timeout: auto }\n";
    let gw = Gateway::start(&config(
        &fleet.addresses(),
        route,
        "    balancer: round_robin\n",
    ));
    let c = client::http1();
    until_head_latency_known(&gw, &c).await;
    slow(&fleet, 0, 300);
    for _ in 0..3 {
        assert_eq!(chat(&c, &gw).await.0, 200);
    }
    assert_eq!(
        gw.metric("switchyard_upstream_errors_total{pool=\"p\",kind=\"timeout\"}"),
        0.0
    );
}

/// Send requests until the pool's recent time to head is known (`/pools`), so `auto` has a
/// timeout to give.
async fn until_head_latency_known(gw: &Gateway, c: &client::TestClient) {
    while pools(gw)["pools"][0]["head_latency"]["head"]["p99_ms"].is_null() {
        assert_eq!(chat(c, gw).await.0, 200);
    }
}
