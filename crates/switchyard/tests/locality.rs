//! Locality: a pool keeps first attempts in the gateway's zone while it has room, spills only
//! the overflow to the next zone once every local endpoint is at `spill_at` of its capacity,
//! and comes back as capacity frees. Real gateway, real origins, in-flight held at the origin.

mod support;

use support::origin::Origin;
use support::{client, eventually, Gateway};

fn config(local: &[&Origin], remote: &Origin, zone_flag_in_config: bool) -> String {
    let here = if zone_flag_in_config {
        "runtime: {workers: 1, locality: {region: eu, zone: a}}\n"
    } else {
        "runtime: {workers: 1}\n"
    };
    let mut endpoints = String::new();
    for o in local {
        endpoints.push_str(&format!(
            "      - {{address: {}, zone: a, region: eu, capacity: 2}}\n",
            o.addr
        ));
    }
    endpoints.push_str(&format!(
        "      - {{address: {}, zone: b, region: eu, capacity: 2}}\n",
        remote.addr
    ));
    format!(
        "admin: {{address: 127.0.0.1:0}}\n{here}listeners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\npools:\n  - name: p\n    balancer: least_request\n    locality: {{spill_at: 1.0}}\n    endpoints:\n{endpoints}"
    )
}

#[tokio::test]
async fn traffic_stays_local_spills_only_the_overflow_and_comes_back() {
    let (a1, a2, b) = (Origin::start(), Origin::start(), Origin::start());
    let gw = Gateway::start(&config(&[&a1, &a2], &b, true));
    let c = client::http1();
    for _ in 0..20 {
        let (status, _, _) = client::get(&c, &gw.url("/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(b.hits(), 0, "below capacity nothing leaves the zone");
    assert_eq!(a1.hits() + a2.hits(), 20);

    // Fill the zone: four requests held at the local origins (capacity 2 each).
    let local = || a1.hits() + a2.hits();
    let mut held = Vec::new();
    for k in 1..=4 {
        let c = c.clone();
        let url = gw.url("/gate");
        held.push(tokio::spawn(async move { client::get(&c, &url).await.0 }));
        eventually("a held request at a local origin", || local() == 20 + k).await;
    }
    assert_eq!(b.hits(), 0);
    // The zone is full: the overflow, and only it, goes to zone b.
    let (status, _, _) = client::get(&c, &gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(b.hits(), 1);

    // Capacity frees: traffic comes back.
    a1.open_gate(4);
    a2.open_gate(4);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    for _ in 0..10 {
        client::get(&c, &gw.url("/")).await;
    }
    assert_eq!(b.hits(), 1, "back in the zone once it has room");
}

#[tokio::test]
async fn a_replica_in_another_zone_prefers_its_own() {
    // The same config for the whole fleet; the zone comes from the command line.
    let (a1, a2, b) = (Origin::start(), Origin::start(), Origin::start());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, config(&[&a1, &a2], &b, false)).unwrap();
    let args = [
        "--config".into(),
        path.clone().into_os_string(),
        "--zone".into(),
        "b".into(),
        "--region".into(),
        "eu".into(),
    ];
    let gw = Gateway::start_with(&args, dir, path);
    let c = client::http1();
    for _ in 0..10 {
        client::get(&c, &gw.url("/")).await;
    }
    assert_eq!((b.hits(), a1.hits() + a2.hits()), (10, 0));
    let (_, body) = gw.admin_get("/config");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["runtime"]["locality"]["zone"], "b");
}
