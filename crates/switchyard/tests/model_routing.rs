//! Model-aware routing end to end: per-target model rewrite (aliases and weighted version
//! splits) and the usage/streaming accounting of inference responses, through the real gateway
//! to real simulated model servers (`switchyard sim`) and the echo origin.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send, TestClient};
use support::fleet::{fleet_of, MODEL};
use support::origin::Origin;
use support::Gateway;
use switchyard_sim::FaultConfig;

fn eps(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("[{}]", list.join(", "))
}

fn config(routes: &str, pools: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0, access_log: true}}\nroutes:\n{routes}pools:\n{pools}"
    )
}

async fn post(c: &TestClient, gw: &Gateway, path: &str, body: &str) -> (u16, Bytes) {
    let req = http::Request::post(gw.url(path))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (status, _, body) = send(c, req).await;
    (status.as_u16(), body)
}

fn chat(model: &str, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello there"}}]}}"#
    )
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// Sum of every series of `/metrics` whose line starts with `prefix` (name and the first labels).
fn metric_sum(gw: &Gateway, prefix: &str) -> f64 {
    let (_, body) = gw.admin_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_reaches_the_upstream_with_the_rewritten_model() {
    let origin = Origin::start();
    let sim = fleet_of(MODEL, 1).await;
    let routes = format!(
        "  - name: echo-alias\n    match: {{ path: /echo-body, model: gpt-4 }}\n    pool: echo\n    rewrite: {{ model: \"llama-3-8b-\\\"instruct\\\"\" }}\n  - name: gpt4-alias\n    match: {{ model: gpt-4 }}\n    pool: llama\n    rewrite: {{ model: \"{MODEL}\" }}\n  - name: rest\n    match: {{ path_prefix: / }}\n    pool: echo\n"
    );
    let pools = format!(
        "  - {{name: echo, endpoints: {}}}\n  - {{name: llama, endpoints: {}, balancer: inference}}\n",
        eps(&[origin.addr]),
        eps(&sim.addresses())
    );
    let gw = Gateway::start(&config(&routes, &pools));
    let c = client::http1();

    // The echo origin returns the body exactly as it arrived: only the top-level model value
    // changed (escaped), nested `model` keys, whitespace and number spellings did not, and the
    // upstream read exactly Content-Length bytes.
    let sent = "{ \"messages\": [{\"role\": \"user\", \"content\": \"{\\\"model\\\": \\\"gpt-4\\\"}\", \"model\": \"gpt-4\"}],\n  \"model\" :\"gpt-4\", \"temperature\": 0.50 }";
    let (status, got) = post(&c, &gw, "/echo-body", sent).await;
    assert_eq!(status, 200);
    let want = sent.replacen(
        "\"model\" :\"gpt-4\"",
        "\"model\" :\"llama-3-8b-\\\"instruct\\\"\"",
        1,
    );
    assert_eq!(std::str::from_utf8(&got).unwrap(), want);
    // Another model matches no alias: the body passes byte for byte.
    let other = sent.replace("gpt-4", "gpt-4o");
    let (status, got) = post(&c, &gw, "/echo-body", &other).await;
    assert_eq!(status, 200);
    assert_eq!(std::str::from_utf8(&got).unwrap(), other);

    // An `inference` pool behind an alias: the simulator only serves MODEL (anything else is
    // 404), so a 200 proves the rewrite; usage is counted under the model the upstream served.
    let (status, body) = post(&c, &gw, "/v1/chat/completions", &chat("gpt-4", 3)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    assert_eq!(v["model"], MODEL);
    let completion = format!(
        "switchyard_tokens_total{{route=\"gpt4-alias\",pool=\"llama\",model=\"{MODEL}\",kind=\"completion\"}}"
    );
    assert_eq!(gw.metric(&completion), 3.0);

    // The access log names the model sent upstream and the one the client asked for.
    let deadline = std::time::Instant::now() + support::WAIT;
    let line = loop {
        let found = gw
            .stdout_lines()
            .into_iter()
            .map(|l| json(l.as_bytes()))
            .find(|l| l["route"] == "gpt4-alias");
        if let Some(l) = found {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(line["model"], MODEL, "{line}");
    assert_eq!(line["original_model"], "gpt-4", "{line}");
    assert_eq!(line["pool"], "llama", "{line}");

    // The effective config shows the rewrite.
    let (_, cfg) = gw.admin_get("/config");
    let cfg = json(cfg.as_bytes());
    assert_eq!(cfg["routes"][1]["rewrite"]["model"], MODEL, "{cfg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_lands_within_tolerance_and_each_side_sees_its_model() {
    let v1 = fleet_of("llama-3-v1", 1).await;
    let v2 = fleet_of("llama-3-v2", 1).await;
    let routes = "  - name: llama-split\n    match: { model: llama-3 }\n    backends:\n      - { pool: llama-v1, weight: 90, model: llama-3-v1 }\n      - { pool: llama-v2, weight: 10, model: llama-3-v2 }\n";
    let pools = format!(
        "  - {{name: llama-v1, endpoints: {}}}\n  - {{name: llama-v2, endpoints: {}}}\n",
        eps(&v1.addresses()),
        eps(&v2.addresses())
    );
    let gw = std::sync::Arc::new(Gateway::start(&config(routes, &pools)));
    const N: usize = 200;
    let mut workers = Vec::new();
    for w in 0..8 {
        let gw = gw.clone();
        workers.push(tokio::spawn(async move {
            let c = client::http1();
            let mut models = Vec::new();
            for _ in (w..N).step_by(8) {
                let (status, body) =
                    post(&c, &gw, "/v1/chat/completions", &chat("llama-3", 1)).await;
                // Each simulator serves only its own model name: a 200 means it got it.
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                models.push(json(&body)["model"].as_str().unwrap().to_string());
            }
            models
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for m in w.await.unwrap() {
            *counts.entry(m).or_default() += 1;
        }
    }
    let (n1, n2) = (
        counts["llama-3-v1"],
        counts.get("llama-3-v2").copied().unwrap_or(0),
    );
    assert_eq!(n1 + n2, N, "{counts:?}");
    // Binomial(200, 0.1): mean 20, sd 4.2; ±16 is beyond 3.7 sd.
    assert!((4..=36).contains(&n2), "10% side got {n2} of {N}");
    // Metrics keep the route's name and label the target pool.
    let ok = |pool: &str| {
        gw.metric(&format!(
            "switchyard_requests_total{{route=\"llama-split\",pool=\"{pool}\",code=\"200\"}}"
        ))
    };
    assert_eq!(ok("llama-v1"), n1 as f64);
    assert_eq!(ok("llama-v2"), n2 as f64);
    let (_, cfg) = gw.admin_get("/config");
    let cfg = json(cfg.as_bytes());
    assert_eq!(
        cfg["routes"][0]["backends"][1]["model"], "llama-3-v2",
        "{cfg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_chosen_backend() {
    let good = fleet_of(MODEL, 1).await;
    let bad = fleet_of(MODEL, 1).await;
    bad.set_faults(
        0,
        FaultConfig {
            error_rate: 1.0,
            // (503 would carry `Retry-After: 1`, which the retry policy honours.)
            error_status: 500,
            ..FaultConfig::default()
        },
    )
    .unwrap();
    let routes = "  - name: split\n    backends: [{pool: good, weight: 1}, {pool: bad, weight: 1}]\n    retry: { attempts: 3, retry_on: [5xx], budget: { ratio: 1.0, min_concurrency: 100 } }\n";
    let pools = format!(
        "  - {{name: good, endpoints: {}}}\n  - {{name: bad, endpoints: {}}}\n",
        eps(&good.addresses()),
        eps(&bad.addresses())
    );
    let gw = Gateway::start(&config(routes, &pools));
    let c = client::http1();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        match post(&c, &gw, "/v1/chat/completions", &chat(MODEL, 1))
            .await
            .0
        {
            200 => ok += 1,
            500 => failed += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    // A request that drew the failing backend retried there (3 attempts) and was never
    // rescued by the other backend.
    let picks = |a: SocketAddr, pool: &str| {
        gw.metric(&format!(
            "switchyard_upstream_picks_total{{pool=\"{pool}\",endpoint=\"{a}\"}}"
        ))
    };
    assert_eq!(picks(good.addresses()[0], "good"), ok as f64);
    assert_eq!(picks(bad.addresses()[0], "bad"), 3.0 * failed as f64);
}

/// Read a streamed response; returns the usage of its last `usage` chunk, if any, and the
/// number of content events.
async fn stream(c: &TestClient, gw: &Gateway, body: String) -> (Option<(u64, u64)>, u64) {
    let req = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, headers, body) = send(c, req).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut usage = None;
    let mut content = 0;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v = json(data.as_bytes());
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            usage = Some((
                u["prompt_tokens"].as_u64().unwrap(),
                u["completion_tokens"].as_u64().unwrap(),
            ));
        }
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            content += 1;
        }
    }
    (usage, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_stream_metrics_match_what_the_simulator_reported() {
    let sim = fleet_of(MODEL, 2).await;
    let routes = "  - name: r\n    match: { path_prefix: /v1/ }\n    pool: p\n";
    let pools = format!(
        "  - {{name: p, endpoints: {}, balancer: {{kind: inference, scrape_interval: 20ms}}}}\n",
        eps(&sim.addresses())
    );
    let gw = Gateway::start(&config(routes, &pools));
    let c = client::http1();
    let (mut prompt, mut completion) = (0u64, 0u64);

    // Non-streamed chat and completions: usage from the JSON document's end.
    for max_tokens in 3..9 {
        let (status, body) = post(&c, &gw, "/v1/chat/completions", &chat(MODEL, max_tokens)).await;
        assert_eq!(status, 200);
        let u = &json(&body)["usage"];
        prompt += u["prompt_tokens"].as_u64().unwrap();
        completion += u["completion_tokens"].as_u64().unwrap();
    }
    for _ in 0..4 {
        let body = format!(r#"{{"model":"{MODEL}","max_tokens":5,"prompt":"Once upon a time"}}"#);
        let (status, body) = post(&c, &gw, "/v1/completions", &body).await;
        assert_eq!(status, 200);
        let u = &json(&body)["usage"];
        prompt += u["prompt_tokens"].as_u64().unwrap();
        completion += u["completion_tokens"].as_u64().unwrap();
    }
    // Streams with usage (`stream_options.include_usage`) and without.
    let mut streamed_output = 0u64;
    for max_tokens in 4..9 {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":{max_tokens},"stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"tell me"}}]}}"#
        );
        let (usage, _) = stream(&c, &gw, body).await;
        let (p, o) = usage.expect("the simulator reports usage when asked");
        prompt += p;
        completion += o;
        streamed_output += o;
    }
    let mut unreported_output = 0u64;
    for _ in 0..3 {
        let body = format!(
            r#"{{"model":"{MODEL}","max_tokens":6,"stream":true,"messages":[{{"role":"user","content":"tell me"}}]}}"#
        );
        let (usage, content) = stream(&c, &gw, body).await;
        assert_eq!(usage, None);
        assert_eq!(content, 6);
        unreported_output += content;
    }

    // Usage counters: exactly what the responses reported, under the model.
    let tokens = |kind: &str| {
        gw.metric(&format!(
            "switchyard_tokens_total{{route=\"r\",pool=\"p\",model=\"{MODEL}\",kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(tokens("prompt"), prompt as f64);
    assert_eq!(tokens("completion"), completion as f64);
    // And what the simulators generated: reported usage plus the streams without usage.
    let sim_generated: f64 = {
        let mut sum = 0.0;
        for a in sim.addresses() {
            let (_, page) = support::client::raw_get(a, "/metrics");
            sum += page
                .lines()
                .filter(|l| l.starts_with("vllm:generation_tokens_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    };
    assert_eq!(sim_generated, (completion + unreported_output) as f64);

    // Stream histograms per model, pool and endpoint: 8 streams, their output tokens (usage,
    // else counted text events), TTFT once each, ITL between token chunks, decode rate.
    let series = |name: &str| format!("{name}{{model=\"{MODEL}\",pool=\"p\",endpoint=\"");
    let count = |name: &str| metric_sum(&gw, &series(&format!("{name}_count")));
    assert_eq!(count("switchyard_inference_output_tokens"), 8.0);
    assert_eq!(
        metric_sum(&gw, &series("switchyard_inference_output_tokens_sum")),
        (streamed_output + unreported_output) as f64
    );
    assert_eq!(
        count("switchyard_inference_time_to_first_token_seconds"),
        8.0
    );
    let itl = count("switchyard_inference_inter_token_latency_seconds");
    let max_itl = (streamed_output + unreported_output - 8) as f64;
    assert!(
        itl > 0.0 && itl <= max_itl,
        "ITL samples {itl}, at most {max_itl}"
    );
    let tps = count("switchyard_inference_output_tokens_per_second");
    assert!((1.0..=8.0).contains(&tps), "tokens/s samples {tps}");
    // Every series names one of the pool's endpoints.
    let (_, page) = gw.admin_get("/metrics");
    for line in page
        .lines()
        .filter(|l| l.starts_with("switchyard_inference_output_tokens_count{"))
    {
        assert!(
            sim.addresses()
                .iter()
                .any(|a| line.contains(&format!("endpoint=\"{a}\""))),
            "{line}"
        );
    }
    // The route-level stream metrics (every SSE response, model or not) are kept as before.
    assert_eq!(
        gw.metric("switchyard_stream_first_chunk_seconds_count{route=\"r\",pool=\"p\"}"),
        8.0
    );
}

/// A model server that serves any model: `/metrics` is a vLLM page, anything else a chat
/// completion with usage 2 + 3 tokens.
async fn any_model_server() -> SocketAddr {
    use hyper::server::conn::http1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| {
                        let (ctype, body) = if req.uri().path() == "/metrics" {
                            ("text/plain", "vllm:num_requests_waiting 0\n".to_string())
                        } else {
                            (
                            "application/json",
                            r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#
                                .to_string(),
                        )
                        };
                        let resp = http::Response::builder()
                            .header("content-type", ctype)
                            .body(Full::new(Bytes::from(body)))
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
async fn a_flood_of_model_names_cannot_take_the_label_of_a_model_configured_later() {
    let server = any_model_server().await;
    let pools = format!(
        "  - {{name: p, endpoints: {}, balancer: inference}}\n",
        eps(&[server])
    );
    let open_route = "  - name: r\n    match: { path_prefix: / }\n    pool: p\n";
    let gw = Gateway::start(&config(open_route, &pools));
    let c = client::http1();
    // The route reads the model (an `inference` pool) but matches on none: every name a client
    // sends reaches a server that answers 200.
    for i in 0..100 {
        let (status, body) = post(
            &c,
            &gw,
            "/v1/chat/completions",
            &chat(&format!("flood-{i}"), 1),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (_, page) = gw.admin_get("/metrics");
    let labelled: std::collections::HashSet<&str> = page
        .lines()
        .filter(|l| l.starts_with("switchyard_tokens_total{route=\"r\""))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .filter(|m| !m.is_empty())
        .collect();
    // A bounded set of the flood's names, and `other` for the rest.
    assert!(labelled.contains("other"), "{labelled:?}");
    assert!(labelled.len() <= 33, "{} model labels", labelled.len());
    let completion = |route: &str, model: &str| {
        gw.metric(&format!(
            "switchyard_tokens_total{{route=\"{route}\",pool=\"p\",model=\"{model}\",kind=\"completion\"}}"
        ))
    };
    assert_eq!(completion("r", "flood-0"), 3.0);
    assert_eq!(
        completion("r", "other"),
        3.0 * (100 - (labelled.len() - 1)) as f64
    );

    // A reload configures a new model: it is counted under its own label at once.
    let routes =
        format!("  - name: late\n    match: {{ model: late-model }}\n    pool: p\n{open_route}");
    gw.reload(&config(&routes, &pools));
    for _ in 0..2 {
        let (status, _) = post(&c, &gw, "/v1/chat/completions", &chat("late-model", 1)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(completion("late", "late-model"), 6.0);
    // And a model named only by a rewrite target, too.
    let routes = format!(
        "  - name: alias\n    match: {{ model: alias }}\n    pool: p\n    rewrite: {{ model: rewritten-model }}\n{routes}"
    );
    gw.reload(&config(&routes, &pools));
    let (status, _) = post(&c, &gw, "/v1/chat/completions", &chat("alias", 1)).await;
    assert_eq!(status, 200);
    assert_eq!(completion("alias", "rewritten-model"), 3.0);
}
