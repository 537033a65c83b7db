//! Cost of precise prefix scoring on the request path: tokenizing a ~2k-token prompt as the
//! simulator does, and with a real model's tokenizer.json (SmolLM2's, tests/fixtures), and
//! keying its blocks, and matching them against a KV-event index of 64
//! endpoints holding ~100k blocks (the shape of `picker.rs`'s bench: 8 system prompts of 32
//! blocks held everywhere, each prompt 96 blocks of its own).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard_inference::kv_index::token_block_keys;
use switchyard_inference::{KvIndex, PromptTokenizer};
use switchyard_kv_events::{BlockStored, EventBatch, KvEvent};
use switchyard_sim::tokenizer::tokenize;

const ENDPOINTS: usize = 64;
const BS: usize = 16;

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|_| fastrand::u32(0..128_000)).collect()
}

fn bench(c: &mut Criterion) {
    fastrand::seed(7);
    let prompt = "Route this railway timetable question to the right desk, please. ".repeat(110);
    assert!(tokenize(&prompt).len() >= 2000);
    c.bench_function("kv_tokenize_and_key_2k_token_prompt", |b| {
        b.iter(|| token_block_keys(0, &tokenize(black_box(&prompt)), BS));
    });
    let hf = PromptTokenizer::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2-135m/tokenizer.json"
    )))
    .unwrap();
    let keyed = KvIndex::new(1, BS, Duration::from_secs(10)).with_tokenizer(hf);
    assert!(keyed.prompt_keys(&prompt).len() >= 1000 / BS);
    c.bench_function("kv_hf_tokenize_and_key_prompt", |b| {
        b.iter(|| keyed.prompt_keys(black_box(&prompt)));
    });

    let index = KvIndex::new(ENDPOINTS, BS, Duration::from_secs(10));
    let systems: Vec<Vec<u32>> = (0..8).map(|_| tokens(32 * BS)).collect();
    for e in 0..ENDPOINTS {
        index.on_connect(e);
    }
    let mut request = Vec::new();
    for p in 0..1_050 {
        let mut t = systems[p % 8].clone();
        t.extend(tokens(96 * BS));
        let e = p % ENDPOINTS;
        index.apply(
            e,
            &EventBatch {
                events: vec![KvEvent::BlockStored(BlockStored {
                    block_hashes: (0..128).map(|_| fastrand::u64(..)).collect(),
                    parent_block_hash: None,
                    token_ids: t.clone(),
                    block_size: BS,
                    ..Default::default()
                })],
                ..Default::default()
            },
        );
        if p == 200 {
            request = token_block_keys(0, &t, BS);
        }
    }
    // Every endpoint holds every system prompt (the worst case for matching).
    for e in 0..ENDPOINTS {
        for s in &systems {
            index.apply(
                e,
                &EventBatch {
                    events: vec![KvEvent::BlockStored(BlockStored {
                        block_hashes: (0..32).map(|_| fastrand::u64(..)).collect(),
                        parent_block_hash: None,
                        token_ids: s.clone(),
                        block_size: BS,
                        ..Default::default()
                    })],
                    ..Default::default()
                },
            );
        }
    }
    let now = Instant::now();
    let mut out = vec![None; ENDPOINTS];
    index.matched_blocks_all(&request, now, &mut out);
    assert_eq!(out[200 % ENDPOINTS], Some(128));
    c.bench_function("kv_matched_blocks_all_64ep_100k_blocks", |b| {
        b.iter(|| index.matched_blocks_all(black_box(&request), now, &mut out));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
