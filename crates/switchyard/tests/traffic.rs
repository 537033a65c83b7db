//! Traffic shifting (issue 13): mirrors that get a copy of the request and never touch the
//! primary, sticky splits that keep a user on its variant, and a tester's forced backend.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use support::origin::Origin;
use support::{client, Gateway};

fn gateway(pools: &[(&str, SocketAddr)], route: &str) -> Gateway {
    let pools: Vec<String> = pools
        .iter()
        .map(|(name, a)| format!("  - {{name: {name}, endpoints: [{a}]}}\n"))
        .collect();
    Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         routes:\n  - name: r\n    match: {{path_prefix: /}}\n{route}pools:\n{}",
        pools.concat()
    ))
}

async fn post(
    c: &client::TestClient,
    gw: &Gateway,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, serde_json::Value) {
    let mut req = http::Request::post(gw.url("/v1/x"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let (status, headers, answer) = client::send(c, req).await;
    let json = serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
    (status.as_u16(), headers, json)
}

#[tokio::test]
async fn a_mirror_gets_a_copy_and_the_client_only_the_primary_answer() {
    let (primary, shadow) = (Origin::start(), Origin::start());
    let gw = gateway(
        &[("primary", primary.addr), ("shadow", shadow.addr)],
        "    pool: primary\n    mirror: [{pool: shadow, percent: 100}]\n",
    );
    let c = client::http1();
    for i in 0..10 {
        let body = format!("request {i}");
        let (status, _, answer) = post(&c, &gw, &body, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(answer["origin"], primary.addr.to_string());
        assert!(answer["headers"].get("x-switchyard-mirror").is_none());
    }
    support::eventually("ten copies at the shadow", || shadow.answered().len() == 10).await;
    let mut lengths: Vec<u64> = Vec::new();
    for copy in shadow.answered() {
        assert_eq!(copy["method"], "POST");
        assert_eq!(copy["path"], "/v1/x");
        assert_eq!(copy["headers"]["x-switchyard-mirror"], "1");
        // The copy is the upstream request: the gateway's own headers are on it too.
        assert!(copy["headers"].get("x-request-id").is_some(), "{copy}");
        lengths.push(copy["body_len"].as_u64().unwrap());
    }
    lengths.sort_unstable();
    assert_eq!(lengths, [9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    let series = |outcome: &str| {
        format!(
            "switchyard_mirror_requests_total{{route=\"r\",pool=\"shadow\",outcome=\"{outcome}\"}}"
        )
    };
    support::eventually("the copies counted", || gw.metric(&series("2xx")) == 10.0).await;
}

#[tokio::test]
async fn a_hung_or_dead_mirror_never_fails_or_holds_the_primary() {
    let primary = Origin::start();
    // A mirror that accepts connections and never answers, and one that refuses them.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (dead, _socket) = support::fleet::dead_address();
    let gw = gateway(
        &[
            ("primary", primary.addr),
            ("hung", hung.local_addr().unwrap()),
            ("dead", dead),
        ],
        "    pool: primary\n    timeout: 60s\n    mirror:\n      - {pool: hung, max_in_flight: 2}\n      - {pool: dead}\n",
    );
    let c = client::http1();
    for i in 0..10 {
        let (status, _, answer) = post(&c, &gw, &format!("r{i}"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(answer["origin"], primary.addr.to_string());
    }
    // Every primary answer came while the hung mirror still held its first two copies: the
    // other eight were dropped at its limit, not queued behind it.
    let dropped =
        "switchyard_mirror_dropped_total{route=\"r\",pool=\"hung\",outcome=\"in_flight\"}";
    assert_eq!(gw.metric(dropped), 8.0);
    let failed = "switchyard_mirror_requests_total{route=\"r\",pool=\"dead\",outcome=\"error\"}";
    support::eventually("the dead mirror's copies counted", || {
        gw.metric(failed) == 10.0
    })
    .await;
    // The primary's own counts saw nothing of either.
    let ok = "switchyard_requests_total{route=\"r\",pool=\"primary\",code=\"200\"}";
    assert_eq!(gw.metric(ok), 10.0);
    drop(hung);
}

#[tokio::test]
async fn a_sticky_split_keeps_a_user_on_its_variant_and_a_tester_can_force_one() {
    let (v1, v2) = (Origin::start(), Origin::start());
    let gw = gateway(
        &[("v1", v1.addr), ("v2", v2.addr)],
        "    backends: [{pool: v1}, {pool: v2}]\n    sticky: {cookie: variant}\n    force_backend_header: x-switchyard-backend\n",
    );
    let c = client::http1();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, headers, answer) = post(&c, &gw, "{}", &[]).await;
        assert_eq!(status, 200);
        let cookie = headers["set-cookie"].to_str().unwrap();
        assert!(
            cookie.starts_with("variant=") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_string();
        let origin = answer["origin"].clone();
        seen.insert(origin.to_string());
        // The same user, the same variant, and no new cookie.
        for _ in 0..5 {
            let (_, headers, again) = post(&c, &gw, "{}", &[("cookie", &cookie)]).await;
            assert_eq!(again["origin"], origin);
            assert!(headers.get("set-cookie").is_none());
        }
    }
    assert!(
        seen.len() == 2,
        "8 new users all landed on one variant of a 50/50 split"
    );
    for (name, origin) in [("v1", &v1), ("v2", &v2)] {
        let (_, _, answer) = post(&c, &gw, "{}", &[("x-switchyard-backend", name)]).await;
        assert_eq!(answer["origin"], origin.addr.to_string());
    }
}
