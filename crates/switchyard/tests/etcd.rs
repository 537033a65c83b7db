//! Gateways whose config lives in a real etcd: `switchyard config push`, replicas that follow
//! it, refuse an invalid revision, ride out an outage and start from their cache.

#[path = "../../fleet/tests/support/etcd_server.rs"]
mod etcd_server;
mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use etcd_server::EtcdServer;
use support::{client, eventually, Gateway, BIN};

/// A config whose one route answers `version` itself, so traffic shows which config a replica
/// serves.
fn config(version: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    filters:\n      - direct_response: {{status: 200, body: \"{version}\"}}\n"
    )
}

fn push(etcd: &EtcdServer, key: &str, yaml: &str, dir: &Path) -> i64 {
    let file = dir.join("push.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["config", "push"])
        .arg(&file)
        .args(["--to", &etcd.url(key)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "etcd://...: written at revision N (was M)"
    stdout
        .split("revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {stdout}"))
}

fn replica(etcd: &EtcdServer, key: &str, cache: &Path) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<OsString> = vec![
        "--config-source".into(),
        etcd.url(key).into(),
        "--config-cache".into(),
        cache.into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
    ];
    let path = dir.path().join("unused.yaml");
    Gateway::start_with(&args, dir, path)
}

fn source(gw: &Gateway) -> serde_json::Value {
    let (_, body) = gw.admin_get("/config");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    config["source"].clone()
}

async fn body(gw: &Gateway) -> String {
    let c = client::http1();
    let (status, _, body) = client::get(&c, &gw.url("/")).await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn replicas_follow_the_config_and_refuse_an_invalid_revision() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let first = push(&etcd, "/sy/prod", &config("A"), dir.path());
    let a = replica(&etcd, "/sy/prod", &dir.path().join("a.json"));
    let b = replica(&etcd, "/sy/prod", &dir.path().join("b.json"));
    for gw in [&a, &b] {
        assert_eq!(body(gw).await, "A");
        let s = source(gw);
        assert_eq!(s["kind"], "etcd");
        assert_eq!(s["revision"], first);
    }

    let second = push(&etcd, "/sy/prod", &config("B"), dir.path());
    for gw in [&a, &b] {
        eventually("the new revision applied", || {
            source(gw)["revision"] == second
        })
        .await;
        assert_eq!(body(gw).await, "B");
    }

    // Written past `config push`'s checks: every replica refuses it, names the key and the line,
    // and keeps serving B.
    let invalid = config("C").replace("    filters:", "    filtres:");
    etcd.ctl(&["put", "/sy/prod", &invalid]);
    let bad = etcd.revision();
    for gw in [&a, &b] {
        eventually("the invalid revision refused", || {
            source(gw)["refused"]["revision"] == bad
        })
        .await;
        let s = source(gw);
        let error = s["refused"]["error"].as_str().unwrap();
        let key = format!("{}:9", etcd.url("/sy/prod"));
        assert!(error.contains(&key) && error.contains("filters"), "{error}");
        assert_eq!(s["revision"], second);
        assert_eq!(body(gw).await, "B");
        assert_eq!(
            gw.metric("switchyard_config_source_errors_total{reason=\"invalid\"}"),
            1.0
        );
        assert_eq!(gw.metric("switchyard_config_revision"), second as f64);
    }
}

#[tokio::test]
async fn replicas_ride_out_an_etcd_outage_and_start_from_their_cache() {
    let mut etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let first = push(&etcd, "/sy/o", &config("A"), dir.path());
    let a = replica(&etcd, "/sy/o", &cache);

    etcd.kill();
    eventually("etcd seen unreachable", || source(&a)["reachable"] == false).await;
    assert_eq!(body(&a).await, "A");

    // A replica (re)started during the outage comes up on the cached config.
    let b = replica(&etcd, "/sy/o", &cache);
    let s = source(&b);
    assert_eq!(s["from_cache"], true, "{s}");
    assert_eq!(s["revision"], first);
    assert_eq!(body(&b).await, "A");

    etcd.restart();
    let second = push(&etcd, "/sy/o", &config("B"), dir.path());
    for gw in [&a, &b] {
        eventually("caught up after the outage", || {
            source(gw)["revision"] == second
        })
        .await;
        assert_eq!(body(gw).await, "B");
        let s = source(gw);
        assert_eq!(
            (s["reachable"].clone(), s["from_cache"].clone()),
            (true.into(), false.into())
        );
    }
}

#[tokio::test]
async fn a_config_split_over_keys_reports_errors_in_their_own_key() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let whole = config("A");
    let (head, routes) = whole.split_at(whole.find("routes:").unwrap());
    etcd.ctl(&["put", "/sy/split/base", head]);
    etcd.ctl(&["put", "/sy/split/routes", routes]);
    let gw = replica(&etcd, "/sy/split", &dir.path().join("c.json"));
    assert_eq!(body(&gw).await, "A");

    etcd.ctl(&[
        "put",
        "/sy/split/routes",
        &routes.replace("status: 200", "status: 2000"),
    ]);
    let bad = etcd.revision();
    eventually("the bad part refused", || {
        source(&gw)["refused"]["revision"] == bad
    })
    .await;
    let s = source(&gw);
    let error = s["refused"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}:", etcd.url("/sy/split/routes"))),
        "{error}"
    );

    // No config at all under the key: `run` says so and exits.
    let out = Command::new(BIN)
        .args(["run", "--config-source", &etcd.url("/sy/none")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no config"), "{stderr}");
}
