//! `switchyard demo` end to end: it starts, serves streamed chat completions through the gateway
//! to the simulated fleet (checked with the official Python `openai` client too), its background
//! load moves the metrics, and Ctrl-C stops it cleanly.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::BIN;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Kills the demo if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_openai_streams_and_stops_on_ctrl_c() {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "demo",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--rate",
                "5",
                "--duration",
                "120s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut gateway = None;
    let mut admin = None;
    let mut fleet = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let t = line.trim();
        if let Some(u) = t.strip_prefix("gateway") {
            gateway = Some(u.trim().to_string());
        } else if let Some(u) = t.strip_prefix("admin") {
            admin = u
                .split_whitespace()
                .next()
                .map(|s| s.trim_end_matches("/metrics").to_string());
        } else if t.starts_with("http://") && t.ends_with("/metrics") {
            fleet.push(t.trim_end_matches("/metrics").to_string());
        }
        if t.starts_with("Press Ctrl-C") || Instant::now() > deadline {
            break;
        }
    }
    let gateway = gateway.expect("gateway URL printed");
    let admin = admin.expect("admin URL printed");
    assert_eq!(fleet.len(), 4, "four replicas listed");

    // The official client streams through the gateway and directly from a replica.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/openai_interop.py"
    );
    let out = Command::new(support::python3())
        .args([script, MODEL, &gateway, &fleet[0]])
        .output()
        .expect("python3 (scripts/test makes .venv/)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r["usage"]["completion_tokens"], 16, "{r}");
        assert_eq!(r["chunks"], 16, "{r}");
        assert!(
            r["text"].as_str().unwrap().split_whitespace().count() >= 8,
            "{r}"
        );
    }

    // The background load shows up in the gateway's metrics.
    let addr: std::net::SocketAddr = admin.trim_start_matches("http://").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = support::client::raw_get(addr, "/metrics");
        let served: f64 = body
            .lines()
            .filter(|l| l.starts_with("switchyard_requests_total{route=\"openai\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if served >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background load did not reach the gateway"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The gateway counted the usage the streams reported (the Python client's 16-token stream
    // through it, plus the background load's).
    let (_, metrics) = support::client::raw_get(addr, "/metrics");
    let completion: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_tokens_total{") && l.contains("kind=\"completion\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(completion >= 16.0, "usage tokens not counted: {completion}");

    // Ctrl-C stops everything and exits 0.
    assert!(Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn demo_canary_is_judged_and_rolled_back_live() {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "demo",
                "--canary",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--duration",
                "300s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The demo prints each analysis and the outcome; the slowed v2 must end rolled back, having
    // failed on latency, never promoted past its first step.
    let mut analyses = Vec::new();
    let mut outcome = None;
    for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("rollout: ") {
            if rest.contains("% canary,") {
                analyses.push(rest.to_string());
            } else {
                outcome = Some(rest.to_string());
                break;
            }
        }
    }
    let outcome = outcome.expect("the demo reported the rollout's end");
    assert!(
        outcome.starts_with("rolled_back"),
        "{outcome}; {analyses:?}"
    );
    assert!(
        analyses.iter().all(|a| a.starts_with("10% canary")),
        "{analyses:?}"
    );
    let failed = analyses.iter().filter(|a| a.contains(" fail ")).count();
    assert_eq!(failed, 2, "two failed analyses roll back: {analyses:?}");
    assert!(
        analyses
            .iter()
            .any(|a| a.contains("latency_p99 x") && a.contains("FAIL")),
        "{analyses:?}"
    );
    drop(child);
}
