//! Predicted-latency routing end to end: a gateway with `predictor:` over simulated replicas
//! learns their TTFT from its own streamed responses, exports its prediction error, sheds a
//! sheddable request whose SLO no replica can meet (429 `slo_unattainable`), sends a standard
//! one anyway, and ignores a malformed SLO header; a route's `slo` applies to requests that send
//! none; with `predictor.queue`, such a standard request is held (bounded in time and number)
//! instead.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send, TestClient};
use support::fleet::{config, MODEL};
use support::{eventually, Gateway};
use switchyard_sim::{start_fleet, FaultConfig, Fleet, FleetConfig, ReplicaConfig};

async fn fleet() -> Fleet {
    start_fleet(FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![
            ReplicaConfig {
                count: 2,
                ..ReplicaConfig::default()
            },
            ReplicaConfig {
                count: 1,
                speed: 0.5,
                ..ReplicaConfig::default()
            },
        ],
        ..FleetConfig::default()
    })
    .await
    .unwrap()
}

/// A streamed chat request with extra `headers`; returns status, the pick explanation and body.
async fn stream(c: &TestClient, gw: &Gateway, headers: &[(&str, &str)]) -> (u16, String, String) {
    let body = serde_json::json!({
        "model": MODEL, "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Which platform does the 7:15 to York leave from?"}],
    });
    let mut req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-switchyard-debug", "1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let (status, headers, body) = send(c, req).await;
    let pick = headers
        .get("x-switchyard-pick")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status.as_u16(), pick, String::from_utf8_lossy(&body).into())
}

/// Send plain streamed requests (each must succeed) until a pick's explanation contains
/// `marker`; whether one did within 400.
async fn train_until(c: &TestClient, gw: &Gateway, marker: &str) -> bool {
    for _ in 0..400 {
        let (status, pick, body) = stream(c, gw, &[]).await;
        assert_eq!(status, 200, "{body}");
        if pick.contains(marker) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_exports_its_error_and_sheds_infeasible_slos() {
    let fleet = fleet().await;
    let pool = "    balancer: {kind: inference, scrape_interval: 20ms, predictor: {min_samples: 16, refit_every: 4, explore: 0}}\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let c = client::http1();

    // Train until picks carry a prediction (the model is warm), then until the rolling error
    // has enough scored predictions to be exported.
    let mut warm = false;
    for _ in 0..400 {
        let (status, pick, body) = stream(&c, &gw, &[]).await;
        assert_eq!(status, 200, "{body}");
        warm |= pick.contains("predicted(ttft_ms=");
        if warm && gw.metric("switchyard_predictor_ttft_mape{pool=\"p\"}") > 0.0 {
            break;
        }
    }
    assert!(warm, "the predictor never warmed up");
    eventually("the TTFT error exported", || {
        gw.metric("switchyard_predictor_ttft_error_ratio_count{pool=\"p\"}") >= 16.0
            && gw.metric("switchyard_predictor_ttft_mape{pool=\"p\"}") > 0.0
    })
    .await;
    assert!(gw.metric("switchyard_predictor_samples{pool=\"p\"}") >= 16.0);
    let margin = gw.metric("switchyard_predictor_margin{pool=\"p\",objective=\"ttft\"}");
    assert!(margin > 0.5 && margin < 10.0, "TTFT margin {margin}");

    // 1 ms to first token is out of reach: a sheddable request is refused, in OpenAI's shape.
    let sheddable = [
        ("x-slo-ttft-ms", "1"),
        ("x-switchyard-priority", "sheddable"),
    ];
    let (status, _, body) = stream(&c, &gw, &sheddable).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("slo_unattainable"), "{body}");
    let shed = "switchyard_slo_picks_total{pool=\"p\",outcome=\"shed\"}";
    assert_eq!(gw.metric(shed), 1.0);

    // A standard request with the same SLO goes where the violation is predicted smallest.
    let (status, pick, body) = stream(&c, &gw, &[("x-slo-ttft-ms", "1")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(pick.contains("slo=late"), "{pick}");

    // A generous SLO is met, and picks say so.
    let (status, pick, _) = stream(&c, &gw, &[("x-slo-ttft-ms", "60000")]).await;
    assert_eq!(status, 200);
    assert!(
        pick.contains("slo=met") || pick.contains("slo=explored"),
        "{pick}"
    );

    // A malformed SLO is ignored, not shed.
    for bad in ["abc", "0", "1.5", "9999999"] {
        let (status, pick, body) = stream(
            &c,
            &gw,
            &[
                ("x-slo-ttft-ms", bad),
                ("x-switchyard-priority", "sheddable"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{bad}: {body}");
        assert!(!pick.contains("slo="), "{bad}: {pick}");
    }
    assert_eq!(gw.metric(shed), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_slo_applies_to_requests_without_one() {
    let fleet = fleet().await;
    let route = "    slo: {ttft: 1ms}\n";
    let pool = "    balancer: {kind: inference, scrape_interval: 20ms, predictor: {min_samples: 16, refit_every: 4, explore: 0}}\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let c = client::http1();
    // Standard requests are served while the model warms and after (where the violation is
    // predicted smallest).
    let warm = train_until(&c, &gw, "slo=late").await;
    assert!(warm, "the route's SLO never reached the picker");
    let sheddable = ("x-switchyard-priority", "sheddable");
    let (status, _, body) = stream(&c, &gw, &[sheddable]).await;
    assert_eq!(status, 429, "{body}");
    // The request's own header wins over the route's.
    let (status, pick, body) = stream(&c, &gw, &[sheddable, ("x-slo-ttft-ms", "60000")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        pick.contains("slo=met") || pick.contains("slo=explored"),
        "{pick}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_holds_infeasible_requests_within_its_bounds() {
    let fleet = fleet().await;
    let pool = "    balancer: {kind: inference, scrape_interval: 20ms, predictor: {min_samples: 16, refit_every: 4, explore: 0, queue: {max_wait: 400ms, max_queued: 1}}}\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let c = client::http1();
    let mut warm = false;
    for _ in 0..400 {
        let (status, pick, body) = stream(&c, &gw, &[]).await;
        assert_eq!(status, 200, "{body}");
        if pick.contains("predicted(ttft_ms=") {
            warm = true;
            break;
        }
    }
    assert!(warm, "the predictor never warmed up");

    // Every replica stops answering, and requests it never answers keep each one busy with
    // prefill work from the gateway's view: no endpoint is idle.
    for i in 0..3 {
        fleet
            .set_faults(
                i,
                FaultConfig {
                    hang: true,
                    ..FaultConfig::default()
                },
            )
            .unwrap();
    }
    let picks = || -> f64 {
        let (_, text) = gw.admin_get("/metrics");
        text.lines()
            .filter(|l| l.starts_with("switchyard_upstream_picks_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = picks();
    let blockers: Vec<_> = (0..6)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { stream(&client::http1(), &gw, &[]).await })
        })
        .collect();
    eventually("the blockers sent", || picks() >= before + 6.0).await;
    // 1 ms to first token is out of reach anywhere: a standard request that can no longer make
    // its SLO is held (the gauge says so) while no endpoint is idle, then, after max_wait, sent
    // where the violation is predicted smallest.
    let held = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let c = client::http1();
            let start = std::time::Instant::now();
            let r = stream(&c, &gw, &[("x-slo-ttft-ms", "1")]).await;
            (r, start.elapsed())
        })
    };
    eventually("a request held", || {
        gw.metric("switchyard_slo_queued{pool=\"p\"}") == 1.0
    })
    .await;
    for i in 0..3 {
        fleet.set_faults(i, FaultConfig::default()).unwrap();
    }
    // The queue holds one: the next goes at once, to the least violating endpoint.
    let (status, pick, body) = stream(&c, &gw, &[("x-slo-ttft-ms", "1")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(pick.contains("slo=late"), "{pick}");
    let ((status, pick, body), waited) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(pick.contains("slo=late"), "{pick}");
    assert!(
        waited >= std::time::Duration::from_millis(400),
        "{waited:?}"
    );
    for b in blockers {
        b.abort();
    }
    eventually("the queue empty", || {
        gw.metric("switchyard_slo_queued{pool=\"p\"}") == 0.0
    })
    .await;
    // A sheddable request is refused, not held.
    let sheddable = [
        ("x-slo-ttft-ms", "1"),
        ("x-switchyard-priority", "sheddable"),
    ];
    let (status, _, body) = stream(&c, &gw, &sheddable).await;
    assert_eq!(status, 429, "{body}");
    // A generous SLO is not held.
    let (status, pick, _) = stream(&c, &gw, &[("x-slo-ttft-ms", "60000")]).await;
    assert_eq!(status, 200);
    assert!(
        pick.contains("slo=met") || pick.contains("slo=explored"),
        "{pick}"
    );
}

/// With `late_priority`, a request no replica is predicted to serve in time reaches the engine
/// with that `priority` in its body. Replicas scheduling first come, first served refuse it as
/// vLLM does (which shows the field arrived); replicas scheduling by priority serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_request_carries_the_engine_priority() {
    use switchyard_sim::Policy;
    let pool = "    balancer: {kind: inference, scrape_interval: 20ms, predictor: {min_samples: 16, refit_every: 4, explore: 0, late_priority: 7}}\n";
    for policy in [Policy::Fcfs, Policy::Priority] {
        let fleet = start_fleet(FleetConfig {
            model: MODEL.into(),
            base_port: 0,
            replicas: vec![ReplicaConfig {
                count: 2,
                scheduling_policy: policy,
                ..ReplicaConfig::default()
            }],
            ..FleetConfig::default()
        })
        .await
        .unwrap();
        let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
        let c = client::http1();
        let warm = train_until(&c, &gw, "predicted(ttft_ms=").await;
        assert!(warm, "the predictor never warmed up");
        // On time: sent as it came, whatever the replicas' policy.
        let (status, pick, body) = stream(&c, &gw, &[("x-slo-ttft-ms", "60000")]).await;
        assert_eq!(status, 200, "{body}");
        assert!(!pick.contains("slo=late"), "{pick}");
        // 1 ms to the first token is late everywhere.
        let (status, pick, body) = stream(&c, &gw, &[("x-slo-ttft-ms", "1")]).await;
        assert!(pick.contains("slo=late"), "{pick}");
        match policy {
            Policy::Fcfs => {
                assert_eq!(status, 400, "{body}");
                assert!(body.contains("Got priority 7"), "{body}");
            }
            Policy::Priority => assert_eq!(status, 200, "{body}"),
        }
        let late = "switchyard_slo_picks_total{pool=\"p\",outcome=\"late\"}";
        assert_eq!(gw.metric(late), 1.0);
    }
}
