//! Canary rollouts judged by the gateway (issue 13): a canary that fails is rolled back, two
//! identical arms are promoted step by step, and the admin API pauses, resumes and aborts. Load
//! runs until the rollout reaches the state under test (bounded in requests); every wait is on
//! `/rollouts`, never on the clock.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::{client, fleet, Gateway};

/// A gateway with route `r` rolling out `canary` over `baseline` in short intervals.
fn gateway(baseline: &[SocketAddr], canary: &[SocketAddr], rollout: &str) -> Gateway {
    Gateway::start(&config(baseline, canary, rollout))
}

fn config(baseline: &[SocketAddr], canary: &[SocketAddr], rollout: &str) -> String {
    let eps = |a: &[SocketAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         routes:\n  - name: r\n    match: {{path_prefix: /}}\n\
         \x20   backends: [{{pool: v1}}, {{pool: v2}}]\n\
         \x20   rollout: {{baseline: v1, canary: v2, interval: 250ms, min_requests: 10, {rollout}}}\n\
         pools:\n  - {{name: v1, endpoints: [{}]}}\n  - {{name: v2, endpoints: [{}]}}\n",
        eps(baseline),
        eps(canary)
    )
}

fn rollout(gw: &Gateway) -> serde_json::Value {
    let (_, body) = gw.admin_get("/rollouts");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["rollouts"][0].clone()
}

/// Send chat requests from 4 clients until `stop` (at most 5,000 each); returns their statuses.
fn load(gw: &Arc<Gateway>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..4)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client::http1();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) && statuses.len() < 5000 {
                    statuses.push(fleet::chat(&c, &gw).await.0);
                }
                statuses
            })
        })
        .collect()
}

async fn until_phase(gw: &Gateway, phase: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    support::eventually(&format!("rollout {phase}"), || {
        last = rollout(gw);
        last["phase"] == phase
    })
    .await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_gets_no_more_traffic() {
    let (v1, v2) = (fleet::fleet(2).await, fleet::fleet(1).await);
    fleet::failing(&v2, 0, 500);
    let gw = Arc::new(gateway(
        &v1.addresses(),
        &v2.addresses(),
        "steps: [20, 50, 100]",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, &stop);
    let state = until_phase(&gw, "rolled_back").await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(state["canary_percent"], 0);
    // Never past the first step; the last analyses failed on the error rate.
    let analyses = state["analyses"].as_array().unwrap();
    assert!(
        analyses.iter().all(|a| a["canary_percent"] == 20),
        "{state}"
    );
    let last = analyses.last().unwrap();
    assert_eq!(last["verdict"], "fail", "{state}");
    let error_check = &last["checks"][0];
    assert_eq!(error_check["metric"], "error_rate");
    assert!(error_check["canary"].as_f64().unwrap() > 0.9, "{state}");
    assert_eq!(
        gw.metric("switchyard_rollout_canary_percent{route=\"r\"}"),
        0.0
    );
    // From now on the baseline serves everything.
    let c = client::http1();
    for _ in 0..30 {
        assert_eq!(fleet::chat(&c, &gw).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_arms_are_promoted_step_by_step() {
    let (v1, v2) = (fleet::fleet(1).await, fleet::fleet(1).await);
    let gw = Arc::new(gateway(
        &v1.addresses(),
        &v2.addresses(),
        "steps: [25, 50, 100]",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, &stop);
    let state = until_phase(&gw, "promoted").await;
    stop.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(state["canary_percent"], 100);
    let passed: Vec<_> = state["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["verdict"] == "pass")
        .map(|a| a["canary_percent"].as_u64().unwrap())
        .collect();
    assert_eq!(passed, [25, 50], "{state}");
    assert_eq!(
        gw.metric("switchyard_rollout_transitions_total{route=\"r\",what=\"promoted\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_pauses_resumes_and_aborts() {
    let (v1, v2) = (fleet::fleet(1).await, fleet::fleet(1).await);
    // An interval no test waits for: only the operator moves this rollout.
    let gw = Gateway::start(
        &config(&v1.addresses(), &v2.addresses(), "steps: [10, 100]")
            .replace("interval: 250ms", "interval: 1h"),
    );
    assert_eq!(rollout(&gw)["phase"], "progressing");
    assert_eq!(rollout(&gw)["canary_percent"], 10);
    let post = |path: &str| {
        support::client::raw_exchange(
            gw.admin,
            format!(
                "POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
            support::WAIT,
        )
    };
    assert!(post("/rollouts/r/pause").starts_with("HTTP/1.1 200"));
    assert_eq!(rollout(&gw)["phase"], "paused");
    assert!(post("/rollouts/r/pause").starts_with("HTTP/1.1 409"));
    assert!(post("/rollouts/r/resume").starts_with("HTTP/1.1 200"));
    assert!(post("/rollouts/r/abort").starts_with("HTTP/1.1 200"));
    let state = rollout(&gw);
    assert_eq!(state["phase"], "aborted");
    assert_eq!(state["canary_percent"], 0);
    assert!(post("/rollouts/nope/pause").starts_with("HTTP/1.1 404"));
    assert!(post("/rollouts/r/explode").starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_its_state_across_a_restart() {
    let (v1, v2) = (fleet::fleet(1).await, fleet::fleet(1).await);
    let state = tempfile::tempdir().unwrap();
    let yaml = config(&v1.addresses(), &v2.addresses(), "steps: [10, 50, 100]")
        .replace("interval: 250ms", "interval: 1h")
        .replace(
            "watch_config: false}",
            &format!(
                "watch_config: false, state_dir: '{}'}}",
                state.path().display()
            ),
        );
    let post = |gw: &Gateway, path: &str| {
        support::client::raw_exchange(
            gw.admin,
            format!(
                "POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
            support::WAIT,
        )
    };
    {
        let gw = Gateway::start(&yaml);
        assert!(post(&gw, "/rollouts/r/pause").starts_with("HTTP/1.1 200"));
    }
    let gw = Gateway::start(&yaml);
    let restored = rollout(&gw);
    assert_eq!(restored["phase"], "paused", "{restored}");
    assert_eq!(restored["canary_percent"], 10);
    assert!(post(&gw, "/rollouts/r/abort").starts_with("HTTP/1.1 200"));
    drop(gw);
    let gw = Gateway::start(&yaml);
    assert_eq!(rollout(&gw)["phase"], "aborted");
    assert_eq!(rollout(&gw)["canary_percent"], 0);
    drop(gw);
    // A changed rollout block starts over.
    let gw = Gateway::start(&yaml.replace("steps: [10, 50, 100]", "steps: [20, 100]"));
    assert_eq!(rollout(&gw)["phase"], "progressing");
    assert_eq!(rollout(&gw)["canary_percent"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_slower_per_token_is_rolled_back_on_tpot() {
    let (v1, v2) = (fleet::fleet(2).await, fleet::fleet(1).await);
    // Every engine step of the canary takes three times as long: slower per output token.
    let faults = switchyard_sim::FaultConfig {
        slow_factor: 3.0,
        ..switchyard_sim::FaultConfig::default()
    };
    v2.set_faults(0, faults).unwrap();
    let eps = |f: &switchyard_sim::Fleet| {
        f.addresses()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gw = Arc::new(Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         routes:\n  - name: r\n    match: {{path_prefix: /}}\n\
         \x20   backends: [{{pool: v1}}, {{pool: v2}}]\n\
         \x20   rollout: {{baseline: v1, canary: v2, interval: 250ms, min_requests: 10, steps: [20, 50, 100], \
         checks: [{{metric: tpot_p99, max_ratio: 1.5}}]}}\n\
         pools:\n  - {{name: v1, endpoints: [{}], balancer: {{kind: inference, scrape_interval: 50ms}}}}\n\
         \x20 - {{name: v2, endpoints: [{}], balancer: {{kind: inference, scrape_interval: 50ms}}}}\n",
        eps(&v1),
        eps(&v2)
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client::http1();
                let body = format!(
                    r#"{{"model":"{}","max_tokens":12,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#,
                    fleet::MODEL
                );
                for _ in 0..5000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let req = http::Request::post(gw.url("/v1/chat/completions"))
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                        .unwrap();
                    assert_eq!(client::send(&c, req).await.0, 200);
                }
            })
        })
        .collect();
    let state = until_phase(&gw, "rolled_back").await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let last = state["analyses"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["verdict"], "fail", "{state}");
    let tpot = &last["checks"][0];
    assert_eq!(tpot["metric"], "tpot_p99");
    // Slower than allowed at the p99 or throughout (the shift): the judge fails on either.
    let slower = tpot["value"]
        .as_f64()
        .unwrap()
        .max(tpot["shift"].as_f64().unwrap());
    assert!(slower > 1.5, "{state}");
}
