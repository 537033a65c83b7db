//! What an operator watches, against real traffic through the real binary: `/stats` (the
//! numbers the dashboard and `switchyard top` draw), `/tap`, `/debug/requests/{id}` found from an
//! error body's request id, `switchyard top --once` and `switchyard tap`, and the dashboard
//! itself in headless Chromium (`tests/interop/dashboard_check.py`).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::client::{self, send, TestClient};
use support::fleet::*;
use support::{eventually, Gateway, WAIT};

fn config(fleet: &[std::net::SocketAddr], dead: std::net::SocketAddr) -> String {
    let eps: Vec<String> = fleet.iter().map(|a| a.to_string()).collect();
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners:\n  - {{name: public, address: 127.0.0.1:0}}\n\
         routes:\n  - {{name: broken, match: {{path_prefix: /broken}}, pool: dead}}\n  \
         - {{name: chat, match: {{path_prefix: /}}, pool: p}}\n\
         pools:\n  - name: p\n    endpoints: [{}]\n    balancer: {{ kind: inference, scrape_interval: 20ms }}\n  \
         - {{name: dead, endpoints: [{dead}]}}\n",
        eps.join(", ")
    )
}

async fn stream_chat(c: &TestClient, gw: &Gateway, id: &str) -> u16 {
    let body = format!(
        r#"{{"model":"{MODEL}","max_tokens":8,"stream":true,"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(c, req).await.0.as_u16()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Server-sent events from an admin stream, read as they come.
struct Events {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Events {
    async fn open(gw: &Gateway, path: &str) -> Events {
        let c = client::http1();
        let req = http::Request::get(format!("http://{}{path}", gw.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.expect("admin stream");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event's data (comments skipped), waiting at most [`WAIT`].
    async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                if let Some(data) = text.strip_prefix("data: ") {
                    return json(data.trim_end());
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event within the wait")
                .expect("stream open")
                .expect("frame");
            if let Some(d) = frame.data_ref() {
                self.buf.extend_from_slice(d);
            }
        }
    }
}

/// Wait until a frame shows requests on some route.
async fn traffic_in_stats(gw: &Gateway) {
    eventually("traffic in the stats", || {
        json(&gw.admin_get("/stats").1)["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["rps"].as_f64() > Some(0.0)))
    })
    .await;
}

#[tokio::test]
async fn stats_tap_and_the_last_requests_follow_real_traffic() {
    let fleet = fleet(2).await;
    let (dead, _hold) = dead_address();
    let gw = Gateway::start(&config(&fleet.addresses(), dead));
    let c = client::http1();

    // A tap reader filtered to the chat route, attached before the traffic.
    let mut tap = Events::open(&gw, "/tap?route=chat&status=2xx").await;
    for i in 0..6 {
        assert_eq!(stream_chat(&c, &gw, &format!("obs-{i}")).await, 200);
    }
    let fleet_addrs: Vec<String> = fleet.addresses().iter().map(|a| a.to_string()).collect();
    for i in 0..6 {
        let e = tap.next().await;
        assert_eq!(e["id"], format!("obs-{i}"), "{e}");
        assert_eq!(
            (&e["route"], &e["pool"], &e["status"]),
            (&"chat".into(), &"p".into(), &200.into())
        );
        assert!(
            fleet_addrs.contains(&e["endpoint"].as_str().unwrap().to_string()),
            "{e}"
        );
        assert!(e["ttft_ms"].as_f64().unwrap() > 0.0, "{e}");
        assert!(e["duration_ms"].as_f64().unwrap() >= e["ttft_ms"].as_f64().unwrap());
        // While someone taps, every `inference` pick explains itself.
        assert!(e["pick"].as_str().is_some_and(|p| p.contains("=")), "{e}");
    }

    // A gateway error's body carries the request id, which leads to what happened.
    let req = http::Request::get(gw.url("/broken/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 502);
    let id = json(std::str::from_utf8(&body).unwrap())["error"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, text) = gw.admin_get(&format!("/debug/requests/{id}"));
    assert_eq!(code, 200, "{text}");
    let r = json(&text);
    assert_eq!(
        (&r["status"], &r["route"], &r["pool"]),
        (&502.into(), &"broken".into(), &"dead".into())
    );
    assert_eq!(r["error"], "upstream_connect_failure");
    assert_eq!(r["endpoint"], dead.to_string());
    assert_eq!(
        (&r["method"], &r["path"]),
        (&"GET".into(), &"/broken/x".into())
    );
    let (code, text) = gw.admin_get("/debug/requests?status=5xx");
    assert_eq!(code, 200);
    let errors = json(&text)["requests"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(errors[0]["id"], id.as_str());
    let (code, text) = gw.admin_get("/debug/requests/never-seen");
    assert_eq!(code, 404);
    assert!(text.contains("admin.recent_requests"), "{text}");
    assert_eq!(gw.admin_get("/tap?status=9xx").0, 400);

    // The live numbers: rates, stream timings and tokens per route; errors per pool; picks;
    // the prefix-cache hit share needs traffic between two of the sampler's ticks.
    let gw = Arc::new(gw);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client::http1();
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                stream_chat(&c, &gw, &format!("more-{i}")).await;
            }
        })
    };
    eventually("the chat route's live numbers", || {
        let s = json(&gw.admin_get("/stats").1);
        let route = s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "chat")
            .cloned();
        let dead_pool = s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == "dead")
            .cloned();
        route.is_some_and(|r| {
            r["rps"].as_f64() > Some(0.0)
                && r["ttft_p99_ms"].as_f64() > Some(0.0)
                && r["p99_ms"].as_f64() >= r["ttft_p99_ms"].as_f64()
                && r["tokens_per_s"].as_f64() > Some(0.0)
                && r["error_rate"] == 0.0
        }) && dead_pool.is_some_and(|p| p["error_rate"] == 1.0)
            // The replicas' scraped prefix-cache counters, as a hit share over the window.
            && s["pools"].as_array().unwrap().iter().any(|p| {
                p["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["prefix_hit_share"].as_f64().is_some_and(|h| (0.0..=1.0).contains(&h)))
            })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let s = json(&gw.admin_get("/stats").1);
    let p = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "p")
        .unwrap();
    assert_eq!(p["balancer"], "inference");
    assert_eq!(p["endpoints"].as_array().unwrap().len(), 2);
    assert!(!p["recent_picks"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(s["window_s"], 5);
    // The route's in-flight count goes back to nothing once the load has stopped.
    eventually("no request in flight on the chat route", || {
        json(&gw.admin_get("/stats").1)["routes"]
            .as_array()
            .is_some_and(|r| {
                r.iter()
                    .any(|r| r["route"] == "chat" && r["in_flight"] == 0)
            })
    })
    .await;
}

#[tokio::test]
async fn the_stats_stream_replays_history_then_follows() {
    let fleet = fleet(1).await;
    let (dead, _hold) = dead_address();
    let gw = Gateway::start(&config(&fleet.addresses(), dead));
    let c = client::http1();
    assert_eq!(stream_chat(&c, &gw, "first").await, 200);
    traffic_in_stats(&gw).await;
    let mut frames = Events::open(&gw, "/stats/stream").await;
    let first = frames.next().await;
    let mut last = first["time_ms"].as_u64().unwrap();
    // Frames keep coming, each newer than the last.
    for _ in 0..3 {
        let f = frames.next().await;
        let t = f["time_ms"].as_u64().unwrap();
        assert!(t >= last, "{t} after {last}");
        last = t;
        assert!(f["pools"].is_array() && f["routes"].is_array());
    }
}

#[tokio::test]
async fn the_dashboard_shows_live_numbers_in_chromium() {
    let fleet = fleet(2).await;
    let (dead, _hold) = dead_address();
    let gw = Arc::new(Gateway::start(&config(&fleet.addresses(), dead)));
    // Load that grows while the page watches, so its numbers must move; bounded in count.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4u64 {
        let (gw, stop) = (gw.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700 * worker)).await;
            let c = client::http1();
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                stream_chat(&c, &gw, &format!("w{worker}-{i}")).await;
            }
        }));
    }
    traffic_in_stats(&gw).await;
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("dashboard.png");
    let url = format!("http://{}/dashboard", gw.admin);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::python3())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/interop/dashboard_check.py"
            ))
            .args([url.as_str(), "--screenshot"])
            .arg(&shot)
            .args(["--frames", "4", "--timeout", "90"])
            .output()
            .expect("run dashboard_check.py (needs Debian's chromium)")
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard_check failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = json(stdout.trim());
    assert_eq!(
        seen["problems"],
        serde_json::json!([]),
        "console errors: {seen}"
    );
    assert_eq!(seen["status"], "live", "{seen}");
    assert!(seen["frames_seen"].as_u64() >= Some(4), "{seen}");
    assert!(
        seen["routes_text"].as_str().unwrap().contains("chat → p"),
        "{seen}"
    );
    assert_eq!(
        seen["endpoint_rows"], 3,
        "two replicas and the dead endpoint: {seen}"
    );
    let numbers: Vec<f64> = seen["rps_values"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    assert!(
        numbers.len() >= 2,
        "requests/s never changed on the page: {seen}"
    );
    assert!(
        std::fs::metadata(dir.path().join("dashboard.png"))
            .unwrap()
            .len()
            > 10_000
    );
}

#[tokio::test]
async fn top_and_tap_read_a_running_gateway() {
    let fleet = fleet(1).await;
    let (dead, _hold) = dead_address();
    let gw = Gateway::start(&config(&fleet.addresses(), dead));
    let c = client::http1();
    assert_eq!(stream_chat(&c, &gw, "before").await, 200);
    traffic_in_stats(&gw).await;
    let admin = gw.admin.to_string();

    let top = std::process::Command::new(support::BIN)
        .args(["top", "--admin", &admin, "--once"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{screen}");
    assert!(
        screen.contains("chat") && screen.contains(&fleet.addresses()[0].to_string()),
        "{screen}"
    );

    // `tap` subscribes when it starts: send until it has seen two chat requests (bounded).
    let mut tap = std::process::Command::new(support::BIN)
        .args([
            "tap", "--admin", &admin, "--route", "chat", "--max", "2", "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = 0;
    while tap.try_wait().unwrap().is_none() {
        assert!(sent < 500, "tap never saw two requests");
        stream_chat(&c, &gw, &format!("tapped-{sent}")).await;
        let _ = send(
            &c,
            http::Request::get(gw.url("/broken"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        sent += 1;
    }
    let out = tap.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["route"] == "chat" && l["status"] == 200),
        "{lines:?}"
    );

    let refused = std::process::Command::new(support::BIN)
        .args(["top", "--admin", &dead.to_string(), "--once"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&dead.to_string()));
}
