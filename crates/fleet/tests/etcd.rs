//! The follower and `push` against a real etcd.

mod support {
    pub mod etcd_server;
}

use std::time::Duration;

use support::etcd_server::EtcdServer;
use switchyard_fleet::watch::{self, Update};
use switchyard_fleet::EtcdUrl;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

const POOLS: &str = "pools:\n  - name: p\n    endpoints: [127.0.0.1:9]\n";

async fn next(updates: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an update within WAIT")
        .expect("follower running")
}

/// Updates until a `Changed`, which is returned with the others seen before it.
async fn next_change(updates: &mut mpsc::Receiver<Update>) -> (watch::Snapshot, Vec<String>) {
    let mut before = Vec::new();
    loop {
        match next(updates).await {
            Update::Changed(s) => return (s, before),
            other => before.push(format!("{other:?}")),
        }
    }
}

fn value_of(snapshot: &watch::Snapshot, key: &str) -> Option<String> {
    snapshot
        .entries
        .iter()
        .find(|e| e.key == key)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

#[tokio::test]
async fn a_change_split_over_keys_arrives_whole_and_once() {
    let etcd = EtcdServer::start();
    let url = EtcdUrl::parse(&etcd.url("/sy/a")).unwrap();
    etcd.ctl(&["put", "/sy/a/pools", POOLS]);
    let mut client = watch::connect(&url).await.unwrap();
    let first = watch::read(&mut client, &url).await.unwrap();
    assert_eq!(first.entries.len(), 1);
    let (tx, mut updates) = mpsc::channel(16);
    tokio::spawn(watch::follow(url.clone(), first.read_at, false, tx));

    // Two keys in one transaction: one state with both, never one without the other.
    let txn = "put /sy/a/pools \"pools: []\"\nput /sy/a/routes \"routes: []\"\n\n\n";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '\\n{}' | ETCDCTL_API=3 etcdctl --endpoints={} txn",
            txn.replace('\n', "\\n"),
            etcd.endpoint()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (snapshot, _) = next_change(&mut updates).await;
    assert_eq!(
        value_of(&snapshot, "/sy/a/pools").as_deref(),
        Some("pools: []")
    );
    assert_eq!(
        value_of(&snapshot, "/sy/a/routes").as_deref(),
        Some("routes: []")
    );
    assert_eq!(snapshot.revision, etcd.revision());

    // A key beside the config (`/sy/a-x`) is not part of it and wakes nobody; the next change
    // to the config is the next update.
    etcd.ctl(&["put", "/sy/a-x", "other"]);
    etcd.ctl(&["del", "/sy/a/routes"]);
    let (snapshot, _) = next_change(&mut updates).await;
    assert_eq!(snapshot.entries.len(), 1, "{snapshot:?}");
    // A delete dates the config too.
    assert_eq!(snapshot.revision, etcd.revision());
}

#[tokio::test]
async fn a_watch_behind_compaction_reads_the_range_afresh() {
    let etcd = EtcdServer::start();
    let url = EtcdUrl::parse(&etcd.url("/sy/c")).unwrap();
    etcd.ctl(&["put", "/sy/c", "v1"]);
    let old = etcd.revision();
    etcd.ctl(&["put", "/sy/c", "v2"]);
    etcd.ctl(&["put", "/sy/c", "v3"]);
    let now = etcd.revision();
    etcd.ctl(&["compact", &now.to_string()]);
    let (tx, mut updates) = mpsc::channel(16);
    tokio::spawn(watch::follow(url, old, false, tx));
    let (snapshot, before) = next_change(&mut updates).await;
    assert_eq!(before, ["Compacted"]);
    assert_eq!(value_of(&snapshot, "/sy/c").as_deref(), Some("v3"));
    assert_eq!(snapshot.revision, now);
}

#[tokio::test]
async fn an_outage_is_reported_and_the_follower_catches_up_after_it() {
    let mut etcd = EtcdServer::start();
    let url = EtcdUrl::parse(&etcd.url("/sy/o")).unwrap();
    etcd.ctl(&["put", "/sy/o", "v1"]);
    let read_at = etcd.revision();
    let (tx, mut updates) = mpsc::channel(16);
    tokio::spawn(watch::follow(url, read_at, false, tx));
    etcd.kill();
    assert!(matches!(next(&mut updates).await, Update::Unreachable(_)));
    etcd.restart();
    etcd.ctl(&["put", "/sy/o", "v2"]);
    let (snapshot, before) = next_change(&mut updates).await;
    assert!(before.iter().any(|u| u == "Reconnected"), "{before:?}");
    assert_eq!(value_of(&snapshot, "/sy/o").as_deref(), Some("v2"));
}

#[tokio::test]
async fn a_follower_started_from_the_cache_reads_etcd_once_it_answers() {
    let etcd = EtcdServer::start();
    let url = EtcdUrl::parse(&etcd.url("/sy/k")).unwrap();
    etcd.ctl(&["put", "/sy/k", "cached"]);
    let cached_at = etcd.revision();
    etcd.ctl(&["put", "/sy/k", "newer"]);
    let (tx, mut updates) = mpsc::channel(16);
    tokio::spawn(watch::follow(url, cached_at, true, tx));
    assert!(matches!(next(&mut updates).await, Update::Reconnected));
    let (snapshot, _) = next_change(&mut updates).await;
    assert_eq!(value_of(&snapshot, "/sy/k").as_deref(), Some("newer"));
}

#[tokio::test]
async fn push_validates_and_compares_and_swaps() {
    let etcd = EtcdServer::start();
    let url = EtcdUrl::parse(&etcd.url("/sy/p")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, POOLS).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "pools:\n  - name: p\n    endpoints: [127.0.0.1:9]\n    balancr: x\n",
    )
    .unwrap();

    let error = switchyard_fleet::push::push(&bad, &url, None)
        .await
        .unwrap_err();
    assert!(error.contains("bad.yaml:4"), "{error}");
    assert_eq!(etcd.ctl(&["get", "/sy/p"]), "");

    let first = switchyard_fleet::push::push(&good, &url, None)
        .await
        .unwrap();
    assert_eq!(first.previous, 0);
    let second = switchyard_fleet::push::push(&good, &url, Some(first.revision))
        .await
        .unwrap();
    assert_eq!(second.previous, first.revision);
    let stale = switchyard_fleet::push::push(&good, &url, Some(first.revision))
        .await
        .unwrap_err();
    assert!(stale.contains("not"), "{stale}");
    assert_eq!(etcd.revision(), second.revision);
}
