//! Hot reload, graceful drain, and the CLI contract.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::client::{self, get};
use support::origin::Origin;
use support::{simple_config, Gateway, BIN};

#[test]
fn check_validates_and_reports_positions() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, simple_config(&[], "", "")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "pools: [{name: llama}]\nroutes:\n  - name: r\n    pool: lama\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4:5: routes[0].pool"), "{err}");
    assert!(err.contains("did you mean `llama`?"), "{err}");

    // The shipped example is valid.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/switchyard.yaml"
    );
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_without_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no config file at `switchyard.yaml`"), "{err}");
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
}

#[tokio::test]
async fn reload_swaps_routes_and_rejects_bad_configs() {
    let a = Origin::start();
    let b = Origin::start();
    let gw = Gateway::start(&simple_config(&[a.addr], "", ""));
    let c = client::http1();
    let origin_of = |body: &bytes::Bytes| {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["origin"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, _, body) = get(&c, &gw.url("/")).await;
    assert_eq!(origin_of(&body), a.addr.to_string());

    gw.reload(&simple_config(&[b.addr], "", ""));
    let (_, _, body) = get(&c, &gw.url("/")).await;
    assert_eq!(origin_of(&body), b.addr.to_string());
    assert_eq!(
        gw.metric("switchyard_config_reloads_total{result=\"success\"}"),
        1.0
    );

    // A broken config is refused; the previous one keeps serving.
    gw.reload("routes:\n  - name: r\n    pool: missing\n");
    let (status, _, body) = get(&c, &gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(origin_of(&body), b.addr.to_string());
    assert_eq!(
        gw.metric("switchyard_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    // Same port after reloads.
    assert_eq!(gw.listeners["public"], gw.addr());
}

#[tokio::test]
async fn config_file_change_is_picked_up_without_a_signal() {
    let a = Origin::start();
    let b = Origin::start();
    let yaml =
        simple_config(&[a.addr], "", "").replace("watch_config: false", "watch_config: true");
    let gw = Gateway::start(&yaml);
    std::fs::write(
        &gw.config_path,
        yaml.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .unwrap();
    gw.wait_log("config reloaded", 1, Duration::from_secs(10));
    let (_, _, body) = get(&client::http1(), &gw.url("/")).await;
    assert!(String::from_utf8_lossy(&body).contains(&b.addr.to_string()));
}

#[tokio::test]
async fn endpoint_state_survives_reload() {
    let a = Origin::start();
    let b = Origin::start();
    let gw = Gateway::start(&simple_config(&[a.addr], "", ""));
    let c = client::http1();
    for _ in 0..3 {
        get(&c, &gw.url("/")).await;
    }
    gw.reload(&simple_config(&[a.addr, b.addr], "    timeout: 30s\n", ""));
    let (_, pools) = gw.admin_get("/pools");
    let v: serde_json::Value = serde_json::from_str(&pools).unwrap();
    let eps = &v["pools"][0]["endpoints"];
    assert_eq!(eps[0]["address"], a.addr.to_string());
    assert_eq!(eps[0]["requests"], 3, "state of a kept endpoint was reset");
    assert_eq!(eps[1]["requests"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_lose_no_request() {
    let a = Origin::start();
    let b = Origin::start();
    let gw = Arc::new(Gateway::start(&simple_config(&[a.addr], "", "")));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, ok, failed, stop) = (gw.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client::http1();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(gw.url("/sse?n=2&ms=5"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        use http_body_util::BodyExt;
                        match resp.into_body().collect().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Each reload happens under load: a few requests complete between one and the next.
    for i in 0..10 {
        let done = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        support::eventually("requests to complete between reloads", || {
            ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= done + 3
        })
        .await;
        let target = if i % 2 == 0 { b.addr } else { a.addr };
        let g = gw.clone();
        tokio::task::spawn_blocking(move || g.reload(&simple_config(&[target], "", "")))
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        gw.metric("switchyard_config_reloads_total{result=\"success\"}"),
        10.0
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let origin = Origin::start();
    let mut gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    let url = gw.url("/slow?ms=700");
    let in_flight = tokio::spawn(async move { get(&client::http1(), &url).await });
    // Wait until the request is at the origin, then ask the gateway to stop.
    support::eventually("the request at the origin", || origin.hits() == 1).await;
    gw.signal("TERM");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow done");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
