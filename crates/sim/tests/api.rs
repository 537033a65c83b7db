//! OpenAI API surface: errors, models, streaming format, usage, metrics exposition, ORCA, h2c.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use switchyard_sim::ReplicaConfig;

fn fast() -> ReplicaConfig {
    ReplicaConfig {
        speed: 50.0,
        lora_adapters: vec!["sql-lora".into()],
        ..Default::default()
    }
}

fn assert_openai_error(r: &Resp, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e.get("code").is_some());
    match param {
        Some(p) => assert_eq!(e["param"], p),
        None => assert!(e["param"].is_null()),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_get_openai_errors() {
    let (fleet, addr) = one(fast()).await;
    assert_openai_error(
        &post(addr, "/v1/chat/completions", "{not json").await,
        400,
        None,
    );
    let no_messages = format!(r#"{{"model":"{MODEL}"}}"#);
    assert_openai_error(
        &post(addr, "/v1/chat/completions", &no_messages).await,
        400,
        Some("messages"),
    );
    assert_openai_error(
        &post(addr, "/v1/completions", &no_messages).await,
        400,
        Some("prompt"),
    );
    assert_openai_error(
        &post(addr, "/v1/completions", r#"{"prompt":"hi"}"#).await,
        400,
        Some("model"),
    );
    let unknown = r#"{"model":"gpt-17","messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(addr, "/v1/chat/completions", unknown).await;
    assert_openai_error(&r, 404, Some("model"));
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let too_long = format!(r#"{{"model":"{MODEL}","prompt":"hi","max_tokens":100000000}}"#);
    assert_openai_error(
        &post(addr, "/v1/completions", &too_long).await,
        400,
        Some("prompt"),
    );
    let zero = format!(r#"{{"model":"{MODEL}","prompt":"hi","max_tokens":0}}"#);
    assert_openai_error(
        &post(addr, "/v1/completions", &zero).await,
        400,
        Some("max_tokens"),
    );
    let empty = format!(r#"{{"model":"{MODEL}","prompt":""}}"#);
    assert_openai_error(
        &post(addr, "/v1/completions", &empty).await,
        400,
        Some("prompt"),
    );
    let two = format!(r#"{{"model":"{MODEL}","prompt":"x","n":2}}"#);
    assert_openai_error(&post(addr, "/v1/completions", &two).await, 400, Some("n"));
    // A priority is an integer, and only a replica scheduling by priority takes one (vLLM).
    for bad in [r#""high""#, "1.5", "1"] {
        let body = format!(r#"{{"model":"{MODEL}","prompt":"x","priority":{bad}}}"#);
        let r = post(addr, "/v1/completions", &body).await;
        assert_openai_error(&r, 400, Some("priority"));
    }
    let zero = format!(r#"{{"model":"{MODEL}","prompt":"x","max_tokens":1,"priority":0}}"#);
    assert_eq!(post(addr, "/v1/completions", &zero).await.status, 200);
    let bad_messages = format!(r#"{{"model":"{MODEL}","messages":[{{"content":"no role"}}]}}"#);
    assert_openai_error(
        &post(addr, "/v1/chat/completions", &bad_messages).await,
        400,
        Some("messages"),
    );
    assert_openai_error(&get(addr, "/nope").await, 404, None);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn models_health_and_info() {
    let (fleet, addr) = one(ReplicaConfig {
        zone: Some("z-a".into()),
        ..fast()
    })
    .await;
    assert_eq!(get(addr, "/health").await.status, 200);
    let v = get(addr, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][1]["id"], "sql-lora");
    assert_eq!(v["data"][1]["parent"], MODEL);
    let info = get(addr, "/sim/info").await.json();
    assert_eq!(info["zone"], "z-a");
    assert_eq!(info["address"], addr.to_string());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn non_streaming_usage_matches_text() {
    let (fleet, addr) = one(fast()).await;
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat("be brief", "hello there", 12, false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 12);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 5);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 12);

    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"Once upon a time","max_completion_tokens":3,"seed":7}}"#
    );
    let a = post(addr, "/v1/completions", &body).await.json();
    let b = post(addr, "/v1/completions", &body).await.json();
    assert_eq!(a["object"], "text_completion");
    assert_eq!(
        a["choices"][0]["text"], b["choices"][0]["text"],
        "same seed, same text"
    );
    assert_eq!(a["usage"]["prompt_tokens"], 4);
    // Without a limit the model stops by itself.
    let open = format!(r#"{{"model":"{MODEL}","prompt":"hi"}}"#);
    let v = post(addr, "/v1/completions", &open).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    fleet.shutdown().await;
}

fn check_stream(r: &Resp, object: &str, max_tokens: usize, with_usage: bool) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect();
    let mut tokens = 0;
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        assert_eq!(c["object"], object);
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], MODEL);
        assert!(c["created"].is_u64());
        let choices = c["choices"].as_array().unwrap();
        if choices.is_empty() {
            usage = Some(c["usage"].clone());
            continue;
        }
        let ch = &choices[0];
        assert_eq!(ch["index"], 0);
        let piece = ch["delta"]["content"]
            .as_str()
            .or(ch["text"].as_str())
            .unwrap_or("");
        tokens += piece.split_whitespace().count();
        if !ch["finish_reason"].is_null() {
            finish = Some(ch["finish_reason"].clone());
        }
    }
    assert_eq!(tokens, max_tokens);
    assert_eq!(finish.unwrap(), "length");
    if with_usage {
        let u = usage.expect("usage chunk");
        assert_eq!(u["completion_tokens"], max_tokens);
        assert_eq!(
            u["total_tokens"],
            u["prompt_tokens"].as_u64().unwrap() + max_tokens as u64
        );
    } else {
        assert!(usage.is_none());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sse_format_matches_openai() {
    let (fleet, addr) = one(fast()).await;
    let body = serde_json::json!({
        "model": MODEL, "messages": [{"role": "user", "content": "count to twenty"}],
        "max_tokens": 20, "stream": true, "stream_options": {"include_usage": true},
    });
    let r = post(addr, "/v1/chat/completions", &body.to_string()).await;
    check_stream(&r, "chat.completion.chunk", 20, true);
    let first: serde_json::Value = serde_json::from_str(&r.events()[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    let body =
        serde_json::json!({"model": MODEL, "prompt": "one two", "max_tokens": 7, "stream": true});
    let r = post(addr, "/v1/completions", &body.to_string()).await;
    check_stream(&r, "text_completion", 7, false);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_parse_as_prometheus_text_with_vllm_names() {
    let (fleet, addr) = one(fast()).await;
    post(addr, "/v1/chat/completions", &chat("sys", "hi", 5, true)).await;
    let r = get(addr, "/metrics").await;
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = parse_prometheus(&r.body);
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ] {
        metric(&m, name);
    }
    assert!(m
        .keys()
        .all(|k| !k.contains('{') || k.contains(&format!("model_name=\"{MODEL}\""))));
    assert_eq!(metric(&m, "vllm:generation_tokens_total"), 5.0);
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count"), 1.0);
    assert_eq!(metric(&m, "vllm:inter_token_latency_seconds_count"), 4.0);
    assert!(r.body.contains("block_size=\"16\""));
    assert!(r.body.contains("num_gpu_blocks=\"26900\""));
    assert!(
        metric(&m, "vllm:lora_requests_info") > 1.6e9,
        "value is a timestamp"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn orca_load_report_header() {
    let (fleet, addr) = one(fast()).await;
    let r = request(
        addr,
        Method::GET,
        "/health",
        "",
        &[("endpoint-load-metrics-format", "TEXT")],
    )
    .await
    .unwrap();
    let h = r.headers["endpoint-load-metrics"].to_str().unwrap();
    assert!(h.starts_with("TEXT cpu_utilization="), "{h}");
    assert!(h.contains("named_metrics.kv_cache_usage="));
    let r = request(
        addr,
        Method::POST,
        "/v1/completions",
        &format!(r#"{{"model":"{MODEL}","prompt":"x","max_tokens":2}}"#),
        &[("endpoint-load-metrics-format", "JSON")],
    )
    .await
    .unwrap();
    let h = r.headers["endpoint-load-metrics"].to_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(h.strip_prefix("JSON ").unwrap()).unwrap();
    assert!(v["rps_fractional"].as_f64().unwrap() > 0.0);
    assert!(v["named_metrics"]["kv_cache_usage"].is_number());
    assert!(get(addr, "/health")
        .await
        .headers
        .get("endpoint-load-metrics")
        .is_none());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn lora_adapter_load_delays_first_request_only() {
    // speed 1: the h100 adapter load is 50 ms of the first request's TTFT.
    let (fleet, addr) = one(ReplicaConfig {
        lora_adapters: vec!["sql-lora".into()],
        ..Default::default()
    })
    .await;
    let body =
        serde_json::json!({"model": "sql-lora", "prompt": "select", "max_tokens": 1}).to_string();
    let first = post(addr, "/v1/completions", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["model"], "sql-lora");
    // The quicker of two later requests (a stall of the machine only lengthens one).
    let mut later = Duration::MAX;
    for _ in 0..2 {
        later = later.min(post(addr, "/v1/completions", &body).await.elapsed);
    }
    assert!(first.elapsed.as_millis() >= 50, "{:?}", first.elapsed);
    assert!(later < first.elapsed, "{later:?} {:?}", first.elapsed);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn h2c_prior_knowledge_works() {
    let (fleet, addr) = one(fast()).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/v1/models"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    fleet.shutdown().await;
}
