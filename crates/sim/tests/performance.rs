//! The performance model as a client sees it: queueing, prefix caching, batch saturation and KV
//! pressure, measured over real sockets against real (scaled) time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use switchyard_sim::ReplicaConfig;

async fn stream_many(addr: SocketAddr, bodies: Vec<String>) -> Vec<Resp> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| tokio::spawn(async move { post(addr, "/v1/chat/completions", &b).await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r);
    }
    out
}

fn mean_ttft(rs: &[Resp]) -> Duration {
    rs.iter()
        .map(|r| r.first_token.expect("token arrived"))
        .sum::<Duration>()
        / rs.len() as u32
}

#[tokio::test(flavor = "current_thread")]
async fn ttft_grows_with_queue_depth() {
    let (fleet, addr) = one(ReplicaConfig {
        speed: 4.0,
        max_num_seqs: 4,
        ..Default::default()
    })
    .await;
    let body = |i: usize| chat(&words(150, &format!("q{i}x")), "go", 24, true);
    let alone = stream_many(addr, vec![body(0)]).await;
    let crowd = stream_many(addr, (1..=24).map(body).collect()).await;
    let (t1, tn) = (mean_ttft(&alone), mean_ttft(&crowd));
    assert!(tn > t1 * 3, "alone {t1:?}, with 24 queued {tn:?}");
    // The last to be admitted waited for several waves of 4.
    let worst = crowd.iter().map(|r| r.first_token.unwrap()).max().unwrap();
    assert!(worst > t1 * 6, "alone {t1:?}, worst {worst:?}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn shared_prefix_cuts_ttft_and_counts_hits() {
    let (fleet, addr) = one(ReplicaConfig::default()).await;
    let system = words(3000, "sys");
    let before = scrape(addr).await;
    let cold = stream_many(addr, vec![chat(&system, "first question", 4, true)]).await;
    let warm = stream_many(addr, vec![chat(&system, "second question", 4, true)]).await;
    let after = scrape(addr).await;
    let (c, w) = (cold[0].first_token.unwrap(), warm[0].first_token.unwrap());
    // Cold: ~3000 tokens of prefill (~80 ms on h100); warm: only the tail of the prompt.
    assert!(w * 3 < c, "cold {c:?}, warm {w:?}");
    let hits = metric(&after, "vllm:prefix_cache_hits_total")
        - metric(&before, "vllm:prefix_cache_hits_total");
    assert!(hits >= 2_900.0, "hits {hits}");
    let queries = metric(&after, "vllm:prefix_cache_queries_total");
    assert!(queries >= 6_000.0, "queries {queries}");
    fleet.shutdown().await;
}

/// Output tokens per second with `concurrency` streams of `tokens` tokens each.
async fn throughput(addr: SocketAddr, concurrency: usize, tokens: u32) -> f64 {
    let start = Instant::now();
    let bodies = (0..concurrency)
        .map(|i| {
            chat(
                "",
                &format!("request {i} {}", start.elapsed().as_nanos()),
                tokens,
                true,
            )
        })
        .collect();
    stream_many(addr, bodies).await;
    (concurrency as f64 * f64::from(tokens)) / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "current_thread")]
async fn throughput_saturates_at_max_num_seqs() {
    let (fleet, addr) = one(ReplicaConfig {
        speed: 4.0,
        max_num_seqs: 4,
        ..Default::default()
    })
    .await;
    let t1 = throughput(addr, 1, 48).await;
    let t4 = throughput(addr, 4, 48).await;
    // Sample the queue while 16 streams run, until it is seen full or the load ends.
    let load = tokio::spawn(throughput(addr, 16, 48));
    let mut max_running = 0.0f64;
    let mut max_waiting = 0.0f64;
    while !(load.is_finished() || (max_running >= 4.0 && max_waiting >= 4.0)) {
        let m = scrape(addr).await;
        max_running = max_running.max(metric(&m, "vllm:num_requests_running"));
        max_waiting = max_waiting.max(metric(&m, "vllm:num_requests_waiting"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t16 = load.await.unwrap();
    assert!(
        t4 > t1 * 2.5,
        "batching: 1 stream {t1:.0} tok/s, 4 streams {t4:.0} tok/s"
    );
    assert!(
        t16 < t4 * 1.4,
        "saturation: 4 streams {t4:.0} tok/s, 16 streams {t16:.0} tok/s"
    );
    assert_eq!(max_running, 4.0);
    assert!(max_waiting >= 4.0, "{max_waiting}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn kv_usage_rises_under_load_and_falls_after() {
    let (fleet, addr) = one(ReplicaConfig {
        speed: 4.0,
        num_gpu_blocks: Some(400),
        ..Default::default()
    })
    .await;
    assert_eq!(metric(&scrape(addr).await, "vllm:kv_cache_usage_perc"), 0.0);
    let bodies = (0..10)
        .map(|i| chat(&words(400, &format!("kv{i}x")), "go", 150, true))
        .collect();
    let load = tokio::spawn(stream_many(addr, bodies));
    let mut peak = 0.0f64;
    while !load.is_finished() {
        peak = peak.max(metric(&scrape(addr).await, "vllm:kv_cache_usage_perc"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.await.unwrap();
    // 10 × ~(410 + 150) tokens ≈ 350 blocks of 400.
    assert!(peak > 0.5, "peak {peak}");
    let m = scrape(addr).await;
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(metric(&m, "vllm:num_requests_running"), 0.0);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn kv_exhaustion_preempts_and_still_completes() {
    let (fleet, addr) = one(ReplicaConfig {
        speed: 20.0,
        num_gpu_blocks: Some(60),
        ..Default::default()
    })
    .await;
    let bodies = (0..6)
        .map(|i| chat(&words(100, &format!("p{i}x")), "go", 100, true))
        .collect();
    let rs = stream_many(addr, bodies).await;
    assert!(rs
        .iter()
        .all(|r| r.events().last().map(String::as_str) == Some("[DONE]")));
    let body = get(addr, "/metrics").await.body;
    let preemptions: f64 = body
        .lines()
        .find(|l| l.starts_with("vllm:num_preemptions_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(preemptions > 0.0);
    fleet.shutdown().await;
}
