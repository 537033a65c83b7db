//! Local rate limits (issue 14, first part): a per-key bucket answers 429 with `Retry-After`
//! and the IETF `RateLimit` fields, other keys and keyless requests go on, a shadow limit only
//! counts, and a route naming an unknown limit is a config error.

mod support;

use support::origin::Origin;
use support::{client, Gateway};

fn gateway(origin: &Origin) -> Gateway {
    Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         rate_limits:\n\
         \x20 - {{name: per-tenant, key: {{header: x-tenant}}, requests: {{limit: 3, per: 1h}}}}\n\
         \x20 - {{name: watch, key: route, requests: {{limit: 1, per: 1h}}, mode: shadow}}\n\
         routes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\n    rate_limits: [per-tenant, watch]\n\
         pools: [{{name: p, endpoints: [{}]}}]\n",
        origin.addr
    ))
}

async fn get(
    c: &client::TestClient,
    gw: &Gateway,
    tenant: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut req = http::Request::get(gw.url("/x"));
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = client::send(c, req).await;
    (
        status.as_u16(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn a_tenant_over_its_limit_gets_429_and_the_others_go_on() {
    let origin = Origin::start();
    let gw = gateway(&origin);
    let c = client::http1();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw, Some("a")).await.0, 200);
    }
    let (status, headers, body) = get(&c, &gw, Some("a")).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit-policy"], "3;w=3600");
    assert!(headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("limit=3, remaining=0, reset="));
    assert!(body.contains("rate_limit_exceeded"), "{body}");
    // Another tenant has its own bucket; a request without the key is not limited by it.
    assert_eq!(get(&c, &gw, Some("b")).await.0, 200);
    for _ in 0..5 {
        assert_eq!(get(&c, &gw, None).await.0, 200);
    }
    // The refused request never reached the origin.
    assert_eq!(origin.hits(), 9);
    let series = |limit: &str, outcome: &str| {
        gw.metric(&format!(
            "switchyard_rate_limit_total{{limit=\"{limit}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(series("per-tenant", "limited"), 1.0);
    assert_eq!(series("per-tenant", "allowed"), 4.0);
    // The shadow limit (1 per hour for the whole route) let everything through and counted it.
    assert_eq!(series("watch", "allowed"), 1.0);
    assert_eq!(series("watch", "shadow_limited"), 8.0);
    // The admin API shows each limit's busiest keys, hashed: `a` used all 3, `b` 1.
    let (status, body) = gw.admin_get("/rate_limits");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenant = &v["rate_limits"][0];
    assert_eq!(tenant["name"], "per-tenant");
    assert_eq!(
        (tenant["counts"].as_str(), tenant["store"].as_str()),
        (Some("requests"), Some("local"))
    );
    assert_eq!(tenant["keys_in_use"], 2);
    let top = tenant["top"].as_array().unwrap();
    assert_eq!(
        (top[0]["used"].as_u64(), top[0]["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(top[1]["used"], 1);
    assert_eq!(top[0]["key_hash"].as_str().unwrap().len(), 16);
    assert!(!body.contains("\"a\""), "keys are never shown: {body}");
}

#[test]
fn a_route_naming_an_unknown_limit_is_refused_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "rate_limits: [{name: per-tenant, key: api_key, requests: {limit: 1, per: 1s}}]\n\
         routes: [{name: r, pool: p, rate_limits: [per-tenat]}]\npools: [{name: p}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].rate_limits[0]: no rate limit named `per-tenat`")
            && err.contains("per-tenant"),
        "{err}"
    );
}

/// Post a chat request for `tenant`; returns the status and the usage's total tokens.
async fn chat(
    c: &client::TestClient,
    gw: &Gateway,
    tenant: &str,
    max_tokens: Option<u32>,
    stream: bool,
) -> (u16, Option<u64>) {
    let mut body = serde_json::json!({
        "model": support::fleet::MODEL,
        "messages": [{"role": "user", "content": "Tell me about rate limits."}],
    });
    if let Some(n) = max_tokens {
        body["max_tokens"] = n.into();
    }
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-tenant", tenant)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let (status, _, answer) = client::send(c, req).await;
    let text = String::from_utf8_lossy(&answer);
    let total = |v: &serde_json::Value| v["usage"]["total_tokens"].as_u64();
    let usage = if stream {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find_map(|v| total(&v))
    } else {
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| total(&v))
    };
    (status.as_u16(), usage)
}

#[tokio::test]
async fn token_limits_reserve_up_front_and_settle_to_the_reported_usage() {
    let fleet = support::fleet::fleet(1).await;
    let gw = Gateway::start(&support::fleet::config(
        &fleet.addresses(),
        "    rate_limits: [tokens]\n",
        "    balancer: { kind: inference, scrape_interval: 20ms }\n",
    )
    .replace(
        "routes:",
        "rate_limits:\n  - {name: tokens, key: {header: x-tenant}, tokens: {limit: 1000, per: 1h}, default_max_tokens: 300}\nroutes:",
    ));
    let c = client::http1();
    let metric = |what: &str| {
        gw.metric(&format!(
            "switchyard_rate_limit_tokens_total{{limit=\"tokens\",outcome=\"{what}\"}}"
        ))
    };
    // A request that could never fit is refused before it reaches a replica.
    assert_eq!(chat(&c, &gw, "a", Some(5000), false).await.0, 429);
    assert_eq!(metric("reserved"), 0.0);
    // Without max_tokens the default is reserved; the simulated model stops by itself (16 to
    // 256 tokens), so part of the reservation comes back when the response ends.
    let (status, used) = chat(&c, &gw, "a", None, false).await;
    assert_eq!(status, 200);
    let used = used.expect("usage reported");
    let reserved = metric("reserved");
    assert!(reserved > 300.0, "{reserved}");
    support::eventually("the response settled", || metric("settled") == used as f64).await;
    assert_eq!(metric("refunded"), reserved - used as f64);
    // What is left is exactly the limit minus the usage: a request reserving all of it and its
    // prompt does not fit; one leaving room for the prompt does.
    let left = 1000 - used as u32;
    assert_eq!(chat(&c, &gw, "a", Some(left), false).await.0, 429);
    assert_eq!(chat(&c, &gw, "a", Some(left - 40), true).await.0, 200);
    // Other tenants have budgets of their own; a streamed response settles from its usage chunk.
    let (status, streamed) = chat(&c, &gw, "b", Some(8), true).await;
    assert_eq!(status, 200);
    assert!(streamed.is_some());
    let streamed = streamed.unwrap() as f64;
    assert_eq!(
        gw.metric("switchyard_rate_limit_total{limit=\"tokens\",outcome=\"allowed\"}"),
        3.0
    );
    // The second stream of `a` settled too (its usage is not known here): more than `b`'s.
    support::eventually("both streams settled", || {
        metric("settled") > used as f64 + streamed
    })
    .await;
}

fn shared_gateway(origin: &Origin, redis: &support::redis::RedisServer, on_error: &str) -> Gateway {
    Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\n\
         listeners: [{{name: public, address: 127.0.0.1:0}}]\n\
         redis: {{url: '{}', timeout: 100ms, on_error: {on_error}}}\n\
         rate_limits:\n\
         \x20 - {{name: fleet, key: {{header: x-tenant}}, requests: {{limit: 3, per: 1h}}, store: redis}}\n\
         routes:\n  - name: r\n    match: {{path_prefix: /}}\n    pool: p\n    rate_limits: [fleet]\n\
         pools: [{{name: p, endpoints: [{}]}}]\n",
        redis.url(),
        origin.addr
    ))
}

#[tokio::test]
async fn a_shared_limit_holds_across_gateways_and_follows_on_error_when_redis_dies() {
    let origin = Origin::start();
    let mut redis = support::redis::RedisServer::start();
    let open = shared_gateway(&origin, &redis, "allow");
    let closed = shared_gateway(&origin, &redis, "deny");
    let c = client::http1();
    // Three requests in all for tenant `a`, whichever gateway they go through.
    assert_eq!(get(&c, &open, Some("a")).await.0, 200);
    assert_eq!(get(&c, &closed, Some("a")).await.0, 200);
    assert_eq!(get(&c, &open, Some("a")).await.0, 200);
    for gw in [&closed, &open] {
        let (status, headers, body) = get(&c, gw, Some("a")).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(headers["ratelimit-policy"], "3;w=3600");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
    }
    assert_eq!(get(&c, &closed, Some("b")).await.0, 200);
    // Redis gone: the fail-open gateway lets requests through uncounted, the fail-closed one
    // refuses them; neither waits past the timeout.
    redis.kill();
    let errors = "switchyard_rate_limit_total{limit=\"redis\",outcome=\"store_error\"}";
    assert_eq!(get(&c, &closed, Some("a")).await.0, 429);
    assert_eq!(get(&c, &open, Some("d")).await.0, 200);
    assert_eq!(get(&c, &closed, Some("b")).await.0, 429);
    assert!(open.metric(errors) >= 1.0 && closed.metric(errors) >= 1.0);
    // Redis back (empty: it keeps nothing on disk here): both gateways count again.
    redis.restart();
    // The first calls after the restart may still find the old connection broken.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let s = get(&c, &closed, Some("c")).await.0;
        statuses.push(s);
        if s == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "never reconnected: {statuses:?}"
    );
    assert_eq!(get(&c, &open, Some("c")).await.0, 200);
    assert_eq!(get(&c, &closed, Some("c")).await.0, 200);
    assert_eq!(get(&c, &open, Some("c")).await.0, 429);
}

#[tokio::test]
async fn combined_keys_count_each_tenant_and_model_and_keyless_requests_share_the_default() {
    let fleet = support::fleet::fleet(1).await;
    let gw = Gateway::start(
        &support::fleet::config(
            &fleet.addresses(),
            "    rate_limits: [per-model]\n",
            "    balancer: { kind: inference, scrape_interval: 20ms }\n",
        )
        .replace(
            "routes:",
            "rate_limits:\n  - {name: per-model, key: [{header: x-tenant}, model], requests: {limit: 1, per: 1h}, default_key: anonymous}\nroutes:",
        ),
    );
    let c = client::http1();
    let send = |tenant: Option<&'static str>, model: &'static str| {
        let mut req = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        if let Some(t) = tenant {
            req = req.header("x-tenant", t);
        }
        let body = serde_json::json!({
            "model": model, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}],
        });
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let c = c.clone();
        async move { client::send(&c, req).await.0.as_u16() }
    };
    let m = support::fleet::MODEL;
    assert_eq!(send(Some("a"), m).await, 200);
    assert_eq!(send(Some("a"), m).await, 429);
    // The same tenant with another model is another key (the replica does not serve it: 404,
    // but the limit let it through).
    assert_eq!(send(Some("a"), "other-model").await, 404);
    assert_eq!(send(Some("b"), m).await, 200);
    // Requests without the tenant header share `default_key`.
    assert_eq!(send(None, m).await, 200);
    assert_eq!(send(None, m).await, 429);
}
