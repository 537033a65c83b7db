//! Balancers end to end, against simulated replicas: consistent hashing, peak EWMA, ORCA load
//! reports, the `inference` picker (prefix affinity, adapters, explanations), priority shedding
//! and tenant fairness.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, get, send};
use support::fleet::*;
use support::{eventually, Gateway};
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_user_on_one_replica() {
    let fleet = fleet(4).await;
    let pool = "    balancer: { kind: ring_hash, key: { header: x-user } }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 20, Some(("x-user", "alice".into()))).await;
    assert_eq!(counts.iter().filter(|c| **c > 0).count(), 1, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_less_to_a_slow_replica() {
    let fleet = fleet(3).await;
    slow(&fleet, 0, 150);
    let pool = "    balancer: { kind: peak_ewma, decay: 10s }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 60, None).await;
    assert!(
        counts[0] * 4 < counts[1] + counts[2],
        "slow replica got {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_least_utilization_reads_orca_reports_from_responses() {
    let fleet = fleet(2).await;
    let pool = "    balancer: { kind: weighted_least_utilization, blackout: 100ms }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let counts = spread(&gw, 20, None).await;
    assert_eq!(counts.iter().sum::<u64>(), 20);
    // The simulator only sends `endpoint-load-metrics` when asked, so reports arriving means
    // the gateway asked and parsed them: every endpoint now has a reported load.
    let p = pools(&gw);
    for e in p["pools"][0]["endpoints"].as_array().unwrap() {
        assert!(e["load_report"].is_object(), "no ORCA report recorded: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_balancer_keeps_a_prefix_together_and_explains_picks() {
    let fleet = fleet(4).await;
    let pool = "    balancer: { kind: inference, scrape_interval: 20ms }\n";
    let gw = Gateway::start(&config(&fleet.addresses(), "", pool));
    let c = client::http1();
    let system = "You are a careful assistant for a railway operations team. ".repeat(40);
    for i in 0..12 {
        let body = serde_json::json!({
            "model": MODEL,
            "max_tokens": 2,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("question {i}")}
            ]
        });
        let req = http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let (status, headers, _) = send(&c, req).await;
        assert_eq!(status, 200);
        assert!(
            headers.contains_key("x-switchyard-pick"),
            "no pick explanation"
        );
    }
    let counts: Vec<u64> = pools(&gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .collect();
    assert!(
        counts.iter().any(|c| *c >= 10),
        "shared prefix was not kept together: {counts:?}"
    );

    // A malformed body gets an OpenAI-style 400 and is not forwarded.
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"model\": ")))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let total: u64 = pools(&gw)["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 12);

    // `/pools` shows what the picker scores each endpoint on, scraped from the replicas.
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let p = pools(&gw);
        let eps = p["pools"][0]["endpoints"].as_array().unwrap().clone();
        let scraped = eps.iter().all(|e| {
            let v = &e["inference"];
            v["fresh"] == true
                && v["num_gpu_blocks"].as_u64().is_some_and(|n| n > 0)
                && v["last_scrape_ms_ago"]
                    .as_f64()
                    .is_some_and(|ms| ms < 5_000.0)
                && v["kv_usage"]
                    .as_f64()
                    .is_some_and(|u| (0.0..=1.0).contains(&u))
        });
        if scraped {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signals not shown: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_an_adapter_as_model_go_where_it_is_loaded() {
    // Two replicas serving two LoRA adapters with one adapter slot each. A long request keeps
    // `sql-lora` running on replica 0 and `chat-lora` on replica 1, so each replica's only slot
    // is taken: an adapter is either loaded there or must wait there.
    let fleet = start_fleet(FleetConfig {
        model: MODEL.into(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: 2,
            lora_adapters: vec!["sql-lora".into(), "chat-lora".into()],
            max_loras: 1,
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let addrs = fleet.addresses();
    let hold = |addr: SocketAddr, model: &'static str| {
        let body = format!(r#"{{"model":"{model}","prompt":"hold the slot","max_tokens":4000}}"#);
        let req = http::Request::post(format!("http://{addr}/v1/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        tokio::spawn(async move { send(&client::http1(), req).await })
    };
    let holds = [hold(addrs[0], "sql-lora"), hold(addrs[1], "chat-lora")];
    // Each replica runs its hold before the gateway first looks: a probe routed before the
    // scrapes saw the adapters could land where its adapter must wait behind a hold, and wait
    // there for the whole hold.
    for (addr, adapter) in [(addrs[0], "sql-lora"), (addrs[1], "chat-lora")] {
        let deadline = Instant::now() + support::WAIT;
        loop {
            let (_, _, body) = get(&client::http1(), &format!("http://{addr}/metrics")).await;
            let text = String::from_utf8_lossy(&body);
            if text.lines().any(|l| {
                l.starts_with("vllm:lora_requests_info")
                    && l.contains(&format!("running_lora_adapters=\"{adapter}\""))
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{adapter} never ran on {addr}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let pool = "    balancer: { kind: inference, scrape_interval: 20ms }\n";
    let gw = Gateway::start(&config(&addrs, "", pool));
    // Probe only once the scrapes have seen each replica's adapter running (`/pools`).
    eventually("the scrapes to see both adapters running", || {
        let p = pools(&gw);
        [(addrs[0], "sql-lora"), (addrs[1], "chat-lora")]
            .iter()
            .all(|(addr, adapter)| {
                endpoint(&p, *addr)["inference"]["lora_running"]
                    .to_string()
                    .contains(adapter)
            })
    })
    .await;
    let c = client::http1();
    // The scrapes have seen both adapters running once a request for one is explained so.
    let ask = |model: &'static str, i: usize| {
        let body = serde_json::json!({
            "model": model,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": format!("question {i} for {model}")}]
        });
        http::Request::post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-switchyard-debug", "1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let deadline = Instant::now() + support::WAIT;
    loop {
        let (_, headers, _) = send(&c, ask("sql-lora", 0)).await;
        let pick = headers["x-switchyard-pick"].to_str().unwrap().to_string();
        if pick.contains("lora=1.00") && pick.contains("lora=0.00") {
            break;
        }
        assert!(Instant::now() < deadline, "adapters never seen: {pick}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = endpoint_requests(&gw);
    for i in 1..=8 {
        for model in ["sql-lora", "chat-lora"] {
            let (status, headers, body) = send(&c, ask(model, i)).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["model"], model);
            let pick = headers["x-switchyard-pick"].to_str().unwrap();
            let chosen = if model == "sql-lora" { 0 } else { 1 };
            assert!(
                pick.starts_with(&format!("{chosen}=")) && pick.contains("lora=1.00"),
                "{model}: {pick}"
            );
        }
    }
    let after = endpoint_requests(&gw);
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [8, 8],
        "each adapter's requests went to the replica running it"
    );
    for h in holds {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_reports_on_responses_stand_in_for_a_stale_scrape() {
    // The pool scrapes once at start, then not for an hour: after 300 ms the scrape is stale
    // and the picker knows no KV usage (the kv_cache scorer says 0.50), unless responses
    // bring ORCA load reports (the simulator answers `endpoint-load-metrics-format`).
    let fleet = fleet(1).await;
    for orca in [true, false] {
        let pool = format!(
            "    balancer: {{ kind: inference, scrape_interval: 1h, stale_after: 300ms, orca: {orca} }}\n"
        );
        let gw = Gateway::start(&config(&fleet.addresses(), "", &pool));
        eventually("the first scrape to go stale", || {
            pools(&gw)["pools"][0]["endpoints"][0]["inference"]["fresh"] == false
        })
        .await;
        let c = client::http1();
        let mut picks = Vec::new();
        for _ in 0..2 {
            let body = format!(
                r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
            );
            let req = http::Request::post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-switchyard-debug", "1")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (status, headers, _) = send(&c, req).await;
            assert_eq!(status, 200);
            assert_eq!(headers.contains_key("endpoint-load-metrics"), orca);
            picks.push(headers["x-switchyard-pick"].to_str().unwrap().to_string());
        }
        assert!(
            picks[0].contains("kv_cache=0.50"),
            "stale scrape: {}",
            picks[0]
        );
        assert_eq!(
            !picks[1].contains("kv_cache=0.50"),
            orca,
            "after a reported response (orca: {orca}): {}",
            picks[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_are_refused_when_the_pool_is_full_critical_ones_wait() {
    let fleet = fleet(1).await;
    slow(&fleet, 0, 400);
    let pool = "    concurrency: { kind: fixed, limit: 1, max_queue: 8, queue_timeout: 5s }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { chat(&client::http1(), &gw).await.0 })
    };
    in_flight(&gw, 1).await;
    let with_priority = |p: &'static str| {
        let gw = gw.clone();
        async move {
            let body = format!(
                r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
            );
            let req = http::Request::post(gw.url("/v1/chat/completions"))
                .header("x-switchyard-priority", p)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            send(&client::http1(), req).await
        }
    };
    let (status, headers, body) = with_priority("sheddable").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        gw.metric(r#"switchyard_admission_queued_total{pool="p",priority="sheddable"}"#),
        0.0,
        "sheddable request queued"
    );
    assert_eq!(
        gw.metric(
            r#"switchyard_admission_rejected_total{pool="p",priority="sheddable",reason="shed"}"#
        ),
        1.0
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "shed");
    let (status, _, _) = with_priority("critical").await;
    assert_eq!(status, 200, "critical request should wait for a permit");
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_a_light_one() {
    // One slot, each request takes 200 ms upstream. The flooder (known by its API key) fires
    // 30 requests at once; the light tenant (known by header) sends one at a time.
    let fleet = fleet(1).await;
    slow(&fleet, 0, 200);
    let pool = "    concurrency: { kind: fixed, limit: 1, max_queue: 32, queue_timeout: 20s }\n    fairness: { tenant_header: x-tenant, max_queued_per_tenant: 8 }\n";
    let gw = std::sync::Arc::new(Gateway::start(&config(&fleet.addresses(), "", pool)));
    let request = |header: &'static str, value: &'static str| {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        http::Request::post(gw.url("/v1/chat/completions"))
            .header(header, value)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let req = request("authorization", "Bearer sk-flood-secret");
            tokio::spawn(async move { send(&client::http1(), req).await })
        })
        .collect();
    // One flood request in flight, 8 queued, the other 21 refused.
    eventually("the flood to be admitted, queued or refused", || {
        gw.metric(
            r#"switchyard_admission_rejected_total{pool="p",priority="standard",reason="tenant_queue_full"}"#,
        ) == 21.0
    })
    .await;
    in_flight(&gw, 1).await;
    let c = client::http1();
    for i in 0..3u64 {
        let (status, _, _) = send(&c, request("x-tenant", "light")).await;
        assert_eq!(status, 200, "light request {i}");
        // Its turn comes after about one flood request per light one (two, with slack for a
        // slow client); behind the flooder's 8 queued requests (FIFO) it would come after 9.
        let flood_sent = endpoint_requests(&gw)[0] - (i + 1);
        assert!(
            flood_sent <= 2 * (i + 1) + 1,
            "light request {i} answered after {flood_sent} flood requests"
        );
    }
    let mut ok = 0;
    let mut refused = 0;
    for f in flood {
        let (status, headers, body) = f.await.unwrap();
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(headers["retry-after"], "1");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["type"], "tenant_queue_full");
            }
            other => panic!("flood request answered {other}"),
        }
    }
    // One in flight plus its 8 places in the queue; the rest refused at once.
    assert_eq!((ok, refused), (9, 21));
    let m = |s: &str| gw.metric(s);
    assert_eq!(
        m(
            r#"switchyard_admission_rejected_total{pool="p",priority="standard",reason="tenant_queue_full"}"#
        ),
        21.0
    );
    assert_eq!(
        m(r#"switchyard_admission_admitted_total{pool="p",priority="standard"}"#),
        12.0
    );
    assert!(m(r#"switchyard_admission_queued_total{pool="p",priority="standard"}"#) >= 10.0);
    // Identity is hashed: the key is nowhere in what the gateway exports.
    let (_, metrics) = gw.admin_get("/metrics");
    let (_, pools) = gw.admin_get("/pools");
    assert!(!metrics.contains("sk-flood") && !pools.contains("sk-flood"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pools_answer_gateway_errors_in_openai_shape() {
    let fleet = fleet(1).await;
    let route = "    max_request_body: 200\n";
    let pool = "    balancer: inference\n";
    let gw = Gateway::start(&config(&fleet.addresses(), route, pool));
    let big = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(500)
    );
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let (status, headers, body) = send(&client::http1(), req).await;
    assert_eq!(status, 413);
    assert!(headers.contains_key("x-request-id"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pools_forward_paths_the_picker_does_not_read() {
    // The OpenAI SDK's `models.list()`, load generators' readiness probes and health checks go
    // through the same pool: forwarded, picked by the fallback balancer, never a 400.
    let fleet = fleet(2).await;
    let gw = Gateway::start(&config(&fleet.addresses(), "", "    balancer: inference\n"));
    let c = client::http1();
    let (status, _, body) = get(&c, &gw.url("/v1/models")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL, "{v}");
    let (status, _, _) = get(&c, &gw.url("/health")).await;
    assert_eq!(status, 200);
    // The model server's own answer for a path it does not serve, not the gateway's.
    let (status, headers, _) = get(&c, &gw.url("/v1/unknown")).await;
    assert_eq!(status, 404);
    assert!(!headers.contains_key("x-switchyard-overflow"));
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        !metrics.contains("switchyard_requests_rejected_total{"),
        "{metrics}"
    );
}

/// A model server whose `/metrics` answers after `delay` (vLLM names, 3 waiting, 1 running).
fn slow_metrics_server(delay: Duration) -> std::net::SocketAddr {
    let body =
        "vllm:num_requests_waiting 3\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.25\n";
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    support::origin::raw(response.into_bytes(), delay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_scrape_of_an_inference_pool() {
    // The first scrape takes 300 ms: a gateway that said ready at once would route blind.
    let metrics = slow_metrics_server(Duration::from_millis(300));
    let pool = "    balancer: { kind: inference, scrape_interval: 1s }\n";
    let gw = Gateway::start(&config(&[metrics], "", pool));
    let p = pools(&gw);
    let v = &p["pools"][0]["endpoints"][0]["inference"];
    assert!(
        v["last_scrape_ms_ago"].is_number(),
        "ready before the first scrape: {p}"
    );
    assert_eq!(v["waiting"], 3.0, "{p}");
    assert_eq!(v["fresh"], true, "{p}");
}

/// A model server whose `/metrics` answers 404 (as llama-cpp-python's server does) until
/// `metrics` is set, then a llama.cpp `--metrics` page; anything else is a chat completion.
async fn server_without_metrics(
    metrics: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    use hyper::server::conn::http1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let on = metrics.load(std::sync::atomic::Ordering::SeqCst);
                        let (status, body) = match req.uri().path() {
                        "/metrics" if on => (
                            200,
                            "llamacpp:requests_processing 1\nllamacpp:requests_deferred 2\n",
                        ),
                        "/metrics" => (404, "{\"detail\":\"Not Found\"}"),
                        _ => (200, "{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}"),
                    };
                        let resp = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_pool_without_readable_metrics_says_it_is_degraded() {
    let has_metrics = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = server_without_metrics(has_metrics.clone()).await;
    let pool = "    balancer: { kind: inference, metrics: llamacpp, scrape_interval: 20ms, stale_after: 200ms }\n";
    let gw = Gateway::start(&config(&[server], "", pool));
    let failures = format!(
        "switchyard_scrape_errors_total{{pool=\"p\",endpoint=\"{server}\",cause=\"http_status\"}}"
    );
    eventually("several failed scrapes counted", || {
        gw.metric(&failures) >= 5.0
    })
    .await;
    // Warned once for the endpoint and cause, however many scrapes failed.
    gw.wait_log("metrics scrape failed", 1, support::WAIT);
    assert_eq!(gw.log_count("metrics scrape failed"), 1);
    let p = pools(&gw);
    let pool = &p["pools"][0];
    assert_eq!(pool["balancer"], "inference", "{p}");
    assert_eq!(
        pool["mode"], "degraded: least_request (no endpoint has fresh metrics)",
        "{p}"
    );
    let v = &endpoint(&p, server)["inference"];
    assert_eq!(v["scrape_fresh"], false, "{p}");
    assert_eq!(v["last_scrape_error"]["cause"], "http_status", "{p}");
    assert_eq!(v["last_scrape_error"]["status"], 404, "{p}");
    // Requests still go through, on the gateway's own counts.
    let c = client::http1();
    assert_eq!(chat(&c, &gw).await.0, 200);

    // The server starts exporting llama.cpp metrics: the pool scores again, and says so.
    has_metrics.store(true, std::sync::atomic::Ordering::SeqCst);
    gw.wait_log("metrics scrape recovered", 1, support::WAIT);
    eventually("the pool scores on scraped metrics", || {
        pools(&gw)["pools"][0]["mode"] == "inference"
    })
    .await;
    let p = pools(&gw);
    let v = &endpoint(&p, server)["inference"];
    assert_eq!(v["scrape_fresh"], true, "{p}");
    assert_eq!(v["running"], 1.0, "{p}");
    assert_eq!(gw.log_count("metrics scrape failed"), 1);
}
