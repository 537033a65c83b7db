use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

/// A vLLM-shaped page, as `switchyard sim` serves it (docs/sim.md).
fn vllm_page(waiting: usize) -> String {
    format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 12\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} {waiting}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 0.4\n\
         # TYPE vllm:prefix_cache_hits_total counter\n\
         vllm:prefix_cache_hits_total{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 3200\n\
         vllm:request_success_total{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\",finished_reason=\"stop\"}} 5\n\
         # HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\",block_size=\"16\",enable_prefix_caching=\"True\",num_gpu_blocks=\"26900\"}} 1\n\
         # TYPE vllm:lora_requests_info gauge\n\
         vllm:lora_requests_info{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\",max_lora=\"2\",running_lora_adapters=\"sql-lora\",waiting_lora_adapters=\"chat-lora\"}} 1.7e9\n\
         vllm:time_to_first_token_seconds_bucket{{model_name=\"meta-llama/Llama-3.1-8B-Instruct\",le=\"+Inf\"}} 5\n"
    )
}

/// A server on port 0 answering `/metrics` with `vllm_page(waiting)` (status from `status`).
async fn serve(waiting: Arc<AtomicUsize>, status: Arc<AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (waiting, status) = (waiting.clone(), status.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let page = vllm_page(waiting.load(Ordering::Relaxed));
                    let code = status.load(Ordering::Relaxed);
                    async move {
                        let code = if req.uri().path() == "/metrics" {
                            code
                        } else {
                            404
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from(page)))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A sink that keeps every event.
fn recorder() -> (ScrapeSink, Arc<std::sync::Mutex<Vec<ScrapeEvent>>>) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = events.clone();
    (Arc::new(move |e| kept.lock().unwrap().push(e)), events)
}

/// A server on port 0 answering every request with 200 and `page`.
async fn serve_page(page: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let page = page.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(page))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The first scrape error `page` gets when scraped with `names`.
async fn first_error(page: Bytes, names: MetricNames) -> ScrapeError {
    let addr = serve_page(page).await;
    let signals = Arc::new(EndpointSignals::new());
    let _scraper = spawn_scraper(
        vec![(addr, signals.clone())],
        names,
        (Duration::from_millis(5), Duration::from_millis(10)),
        Duration::from_secs(2),
        recorder().0,
    );
    until(|| signals.last_error().is_some()).await;
    signals.last_error().unwrap().0
}

/// A llama.cpp `llama-server --metrics` page, with the names and help texts its server
/// documents (the KV figures are those of versions that still export them).
const LLAMACPP_PAGE: &str = "\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 10240
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 3.2
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 4096
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 51.7
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 4200
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 2.5
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 3200
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 79.2
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 8192
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
";

#[test]
fn extracts_llamacpp_signals() {
    let m = MetricNames::llamacpp().extract(LLAMACPP_PAGE).unwrap();
    assert_eq!(m.waiting, Some(2.0));
    assert_eq!(m.running, Some(3.0));
    assert_eq!(m.kv_usage, Some(0.25));
    // 8192 tokens are a quarter of the cache: 32768 tokens, 2048 blocks of 16.
    assert_eq!(m.num_gpu_blocks, Some(2048));
    assert_eq!((m.models, m.lora), (None, None));
    // A version without the KV figures still gives the queue; an empty cache gives no size.
    let queue_only = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\n";
    let m = MetricNames::llamacpp().extract(queue_only).unwrap();
    assert_eq!(
        (m.waiting, m.running, m.kv_usage),
        (Some(0.0), Some(1.0), None)
    );
    assert_eq!(m.num_gpu_blocks, None);
    let idle = "llamacpp:kv_cache_usage_ratio 0\nllamacpp:kv_cache_tokens 0\n";
    assert_eq!(
        MetricNames::llamacpp()
            .extract(idle)
            .unwrap()
            .num_gpu_blocks,
        None
    );
    assert_eq!(
        MetricNames::preset("llamacpp"),
        Some(MetricNames::llamacpp())
    );
    assert_eq!(MetricNames::preset("nope"), None);
}

#[tokio::test]
async fn a_page_of_another_server_or_too_large_fails_with_its_cause() {
    let llamacpp = Bytes::from_static(LLAMACPP_PAGE.as_bytes());
    assert_eq!(
        first_error(llamacpp, MetricNames::vllm()).await,
        ScrapeError::MissingMetrics
    );
    let mut big = vllm_page(1).into_bytes();
    while big.len() <= MAX_SCRAPE_BYTES {
        big.extend_from_slice(b"# padding comment line, repeated until the page is too large\n");
    }
    assert_eq!(
        first_error(Bytes::from(big), MetricNames::vllm()).await,
        ScrapeError::TooLarge
    );
    assert_eq!(
        first_error(
            Bytes::from_static(b"\xff\xfe not text"),
            MetricNames::vllm()
        )
        .await,
        ScrapeError::Parse
    );
}

/// Wait (bounded) until `cond` holds, polling the shared state the scraper writes.
async fn until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached within 5s");
}

#[test]
fn extracts_vllm_signals() {
    let m = MetricNames::vllm().extract(&vllm_page(3)).unwrap();
    assert_eq!(m.waiting, Some(3.0));
    assert_eq!(m.running, Some(12.0));
    assert_eq!(m.kv_usage, Some(0.4));
    assert_eq!(m.num_gpu_blocks, Some(26900));
    let lora = m.lora.unwrap();
    assert_eq!(lora.running, vec!["sql-lora".to_string()]);
    assert_eq!(lora.waiting, vec!["chat-lora".to_string()]);
    assert_eq!(lora.max_lora, 2);
    assert_eq!(
        m.models,
        Some(vec!["meta-llama/Llama-3.1-8B-Instruct".to_string()])
    );
    // Older vLLM name for KV usage.
    let old = MetricNames::vllm()
        .extract("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n")
        .unwrap();
    assert_eq!(old.kv_usage, Some(0.25));
    assert_eq!(old.waiting, None);
    assert_eq!(old.models, Some(vec!["m".to_string()]));
    let unlabeled = MetricNames::vllm()
        .extract(
            "vllm:num_requests_waiting 1
",
        )
        .unwrap();
    assert_eq!(unlabeled.models, None);
    assert_eq!(unlabeled.prefix_cache, None);
}

#[test]
fn prefix_cache_counters_are_summed_and_need_both() {
    let page = "vllm:prefix_cache_queries_total{model_name=\"a\"} 1000\n\
                vllm:prefix_cache_queries_total{model_name=\"b\"} 500\n\
                vllm:prefix_cache_hits_total{model_name=\"a\"} 600\n\
                vllm:prefix_cache_hits_total{model_name=\"b\"} 150\n";
    let m = MetricNames::vllm().extract(page).unwrap();
    assert_eq!(m.prefix_cache, Some((1500.0, 750.0)));
    let half = MetricNames::vllm()
        .extract("vllm:prefix_cache_queries_total 10\n")
        .unwrap();
    assert_eq!(half.prefix_cache, None);
    let bad = MetricNames::vllm()
        .extract("vllm:prefix_cache_queries_total -5\nvllm:prefix_cache_hits_total 1\n")
        .unwrap();
    assert_eq!(bad.prefix_cache, None, "a negative counter is not read");
}

#[test]
fn extracts_other_servers() {
    let m = MetricNames::sglang()
        .extract(
            "sglang:num_queue_reqs{a=\"1\"} 4\nsglang:num_running_reqs 9\nsglang:token_usage 0.7\n",
        )
        .unwrap();
    assert_eq!(
        (m.waiting, m.running, m.kv_usage),
        (Some(4.0), Some(9.0), Some(0.7))
    );
    let m = MetricNames::tgi()
        .extract("tgi_queue_size 2\ntgi_batch_current_size 8\n")
        .unwrap();
    assert_eq!(
        (m.waiting, m.running, m.kv_usage),
        (Some(2.0), Some(8.0), None)
    );
    let m = MetricNames::triton()
        .extract(
            "nv_inference_pending_request_count{model=\"a\"} 1\n\
             nv_inference_pending_request_count{model=\"b\"} 2\n\
             nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"} 0.5\n\
             nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\"} 900\n",
        )
        .unwrap();
    assert_eq!((m.waiting, m.kv_usage), (Some(3.0), Some(0.5)));
    assert!(MetricNames::vllm().extract("garbage line\n").is_err());
}

#[tokio::test]
async fn scrapes_a_live_server_and_goes_stale_on_errors() {
    let waiting = Arc::new(AtomicUsize::new(3));
    let status = Arc::new(AtomicU16::new(200));
    let addr = serve(waiting.clone(), status.clone()).await;
    let signals = Arc::new(EndpointSignals::new());
    let stale = Duration::from_millis(500);
    let (sink, events) = recorder();
    let scraper = spawn_scraper(
        vec![(addr, signals.clone())],
        MetricNames::vllm(),
        (Duration::from_millis(5), Duration::from_millis(10)),
        stale,
        sink,
    );
    until(|| signals.snapshot(Instant::now(), stale).fresh).await;
    let snap = signals.snapshot(Instant::now(), stale);
    assert_eq!((snap.waiting, snap.running), (3.0, 12.0));
    assert_eq!(snap.num_gpu_blocks, 26900);
    assert_eq!(signals.lora().running, vec!["sql-lora".to_string()]);

    waiting.store(40, Ordering::Relaxed);
    until(|| signals.snapshot(Instant::now(), stale).waiting == 40.0).await;

    status.store(500, Ordering::Relaxed);
    until(|| !signals.snapshot(Instant::now(), stale).fresh).await;
    until(|| events.lock().unwrap().len() >= 2).await;
    status.store(200, Ordering::Relaxed);
    until(|| signals.snapshot(Instant::now(), stale).fresh).await;
    until(|| {
        events
            .lock()
            .unwrap()
            .contains(&ScrapeEvent::Recovered { endpoint: addr })
    })
    .await;
    // Each failure is reported; only the first of its cause is marked for a warning.
    let seen = events.lock().unwrap().clone();
    let failures: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            ScrapeEvent::Failed { error, first, .. } => Some((*error, *first)),
            ScrapeEvent::Recovered { .. } => None,
        })
        .collect();
    assert!(failures.len() >= 2, "{seen:?}");
    assert_eq!(failures[0], (ScrapeError::HttpStatus(500), true));
    assert!(failures[1..]
        .iter()
        .all(|f| *f == (ScrapeError::HttpStatus(500), false)));
    assert_eq!(
        signals.last_error().map(|e| e.0),
        Some(ScrapeError::HttpStatus(500))
    );

    // Dropping the scraper stops it: the data then ages out.
    drop(scraper);
    let last = signals.last_scrape().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(signals.last_scrape(), Some(last));
}

#[tokio::test]
async fn a_hung_endpoint_is_stale_and_does_not_stall_the_others() {
    // A listener that accepts and never answers: its scrapes time out.
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let live_addr = serve(Arc::new(AtomicUsize::new(1)), Arc::new(AtomicU16::new(200))).await;
    let (a, b) = (
        Arc::new(EndpointSignals::new()),
        Arc::new(EndpointSignals::new()),
    );
    let stale = Duration::from_millis(50);
    let _scraper = spawn_scraper(
        vec![(hung_addr, a.clone()), (live_addr, b.clone())],
        MetricNames::vllm(),
        (Duration::from_millis(5), Duration::from_millis(10)),
        stale,
        recorder().0,
    );
    let accepted = tokio::time::timeout(Duration::from_secs(5), hung.accept()).await;
    let _held = accepted.unwrap().unwrap();
    until(|| b.snapshot(Instant::now(), stale).fresh).await;
    // Outlive at least one timed-out scrape of the hung endpoint while the other stays fresh.
    tokio::time::sleep(stale * 3).await;
    assert!(a.last_scrape().is_none());
    assert!(!a.snapshot(Instant::now(), stale).fresh);
    assert_eq!(a.last_error().map(|e| e.0), Some(ScrapeError::Timeout));
    until(|| b.snapshot(Instant::now(), stale).fresh).await;
}
