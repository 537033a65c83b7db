//! Cost of one `inference` pick: 64 endpoints, a prefix index holding ~100k blocks, a ~2k-token
//! request (128 blocks of 16 tokens) that shares a 32-block system prompt with every endpoint
//! and all 128 blocks with one of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard_balance::{Endpoint, EndpointState};
use switchyard_inference::signals::ScrapedMetrics;
use switchyard_inference::{
    prompt_block_hashes, EndpointSignals, InferencePicker, PickerConfig, PrefixIndex,
    RequestContext,
};

const ENDPOINTS: usize = 64;
const SYSTEM_BLOCKS: usize = 32;
const PROMPT_BLOCKS: usize = 128;
/// The request repeats this recorded prompt, which went to endpoint `REQUEST_PROMPT % 64`.
const REQUEST_PROMPT: usize = 200;

fn setup() -> (Vec<Endpoint>, InferencePicker, Vec<u64>, String) {
    fastrand::seed(7);
    let now = Instant::now();
    let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{}:8000", i + 1).parse().unwrap();
            Endpoint {
                state: Arc::new(EndpointState::new(addr)),
                weight: 1,
                zone: None,
                region: None,
            }
        })
        .collect();
    let signals: Vec<_> = (0..ENDPOINTS)
        .map(|_| {
            let s = Arc::new(EndpointSignals::new());
            s.apply_scrape(
                &ScrapedMetrics {
                    waiting: Some(fastrand::u32(0..20) as f64),
                    running: Some(fastrand::u32(0..200) as f64),
                    kv_usage: Some(fastrand::f64() * 0.85),
                    num_gpu_blocks: Some(26_900),
                    lora: None,
                    models: None,
                    prefix_cache: None,
                },
                now,
            );
            s
        })
        .collect();
    let index = Arc::new(PrefixIndex::new());
    // 8 system prompts of 32 blocks, each followed by 96 unique blocks. 1,050 prompts over the
    // endpoints give ~101k distinct blocks; every system prompt is held by every endpoint (the
    // worst case for matching). Block hashes are random, as the real hash chain's are.
    let systems: Vec<Vec<u64>> = (0..8)
        .map(|_| (0..SYSTEM_BLOCKS).map(|_| fastrand::u64(..)).collect())
        .collect();
    let mut request = Vec::new();
    for p in 0..1050usize {
        let mut hashes = systems[(p / ENDPOINTS) % 8].clone();
        hashes.extend((SYSTEM_BLOCKS..PROMPT_BLOCKS).map(|_| fastrand::u64(..)));
        index.record(p % ENDPOINTS, &hashes);
        if p == REQUEST_PROMPT {
            request = hashes;
        }
    }
    assert!(index.distinct_blocks() > 100_000);
    let picker = InferencePicker::new(PickerConfig::default(), signals, index);
    let prompt = "You are a helpful assistant. ".repeat(8 * 2048 / 29 + 1);
    (endpoints, picker, request, prompt)
}

fn bench(c: &mut Criterion) {
    let (endpoints, picker, request, prompt) = setup();
    let mut matched = vec![0; ENDPOINTS];
    picker
        .prefix_index()
        .matched_blocks_all(&request, &mut matched);
    assert_eq!(matched[REQUEST_PROMPT % ENDPOINTS], PROMPT_BLOCKS);
    assert_eq!(
        matched.iter().filter(|&&m| m == SYSTEM_BLOCKS).count(),
        ENDPOINTS - 1
    );
    let cx = RequestContext {
        block_hashes: &request,
        token_blocks: &[],
        adapter: None,
        est_tokens: 2300,
        debug: false,
        ..Default::default()
    };
    assert_eq!(
        picker.pick(&endpoints, &cx).index,
        Some(REQUEST_PROMPT % ENDPOINTS)
    );
    c.bench_function("inference_pick_64ep_100k_blocks_2k_tokens", |b| {
        b.iter(|| black_box(picker.pick(black_box(&endpoints), black_box(&cx))));
    });
    c.bench_function("prefix_matched_blocks_all_64ep", |b| {
        b.iter(|| {
            picker
                .prefix_index()
                .matched_blocks_all(black_box(&request), &mut matched);
            black_box(&matched);
        });
    });
    let no_prefix = RequestContext {
        block_hashes: &[],
        ..cx
    };
    c.bench_function("inference_pick_64ep_no_prefix", |b| {
        b.iter(|| black_box(picker.pick(black_box(&endpoints), black_box(&no_prefix))));
    });
    let prompt = &prompt[..8192];
    c.bench_function("prompt_block_hashes_2k_tokens", |b| {
        b.iter(|| black_box(prompt_block_hashes(black_box(prompt), 16)));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
