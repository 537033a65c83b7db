use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

const BS: usize = 4;

fn now() -> Instant {
    Instant::now()
}

/// A toy engine: caches whole-prompt chains, names blocks with a per-process seed, and emits
/// the events vLLM would.
struct Engine {
    seed: u64,
    /// engine hash → our key, of what is cached
    cached: HashMap<u64, u64>,
}

impl Engine {
    fn name(&self, chain_pos: u64) -> u64 {
        chain_pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.seed
    }

    /// Stores the full blocks of `tokens`; the events name each block by its position hash.
    fn store(&mut self, tokens: &[u32]) -> KvEvent {
        let keys = token_block_keys(0, tokens, BS);
        let names: Vec<u64> = keys.iter().map(|&k| self.name(k)).collect();
        for (n, k) in names.iter().zip(&keys) {
            self.cached.insert(*n, *k);
        }
        KvEvent::BlockStored(BlockStored {
            block_hashes: names,
            parent_block_hash: None,
            token_ids: tokens[..keys.len() * BS].to_vec(),
            block_size: BS,
            ..Default::default()
        })
    }

    fn remove(&mut self, name: u64) -> KvEvent {
        self.cached.remove(&name);
        KvEvent::BlockRemoved {
            block_hashes: vec![name],
            medium: None,
        }
    }

    fn true_keys(&self) -> BTreeSet<u64> {
        self.cached.values().copied().collect()
    }
}

fn batch(events: Vec<KvEvent>) -> EventBatch {
    EventBatch {
        events,
        ..Default::default()
    }
}

fn held(idx: &KvIndex, e: usize, keys: &BTreeSet<u64>) -> BTreeSet<u64> {
    let mut out = vec![None; e + 1];
    keys.iter()
        .copied()
        .filter(|k| {
            idx.matched_blocks_all(&[*k], now(), &mut out);
            out[e] == Some(1)
        })
        .collect()
}

#[test]
fn requests_match_what_the_engine_stored_under_its_own_names() {
    let idx = KvIndex::new(3, BS, Duration::from_secs(10));
    for e in 0..3 {
        idx.on_connect(e);
    }
    let prompt: Vec<u32> = (0..13).collect();
    let mut eng = Engine {
        seed: 7,
        cached: HashMap::new(),
    };
    idx.apply(1, &batch(vec![eng.store(&prompt)]));
    // A continuation stored later, chained to its parent by the engine's name.
    let keys = token_block_keys(0, &prompt, BS);
    let more: Vec<u32> = (100..104).collect();
    let mut full = prompt[..12].to_vec();
    full.extend(&more);
    idx.apply(
        1,
        &batch(vec![KvEvent::BlockStored(BlockStored {
            block_hashes: vec![99],
            parent_block_hash: Some(eng.name(keys[2])),
            token_ids: more,
            block_size: BS,
            ..Default::default()
        })]),
    );
    let req = token_block_keys(0, &full, BS);
    let mut out = [None; 3];
    idx.matched_blocks_all(&req, now(), &mut out);
    assert_eq!(out, [Some(0), Some(4), Some(0)]);

    // Removing the second block cuts the match there.
    idx.apply(1, &batch(vec![eng.remove(eng.name(keys[1]))]));
    idx.matched_blocks_all(&req, now(), &mut out);
    assert_eq!(out[1], Some(1));

    // An orphan (unknown parent) is skipped rather than keyed wrongly.
    idx.apply(
        2,
        &batch(vec![KvEvent::BlockStored(BlockStored {
            block_hashes: vec![5],
            parent_block_hash: Some(12345),
            token_ids: vec![1; BS],
            block_size: BS,
            ..Default::default()
        })]),
    );
    assert_eq!(idx.status(2, now()).unwrap().skipped, 1);

    // AllBlocksCleared, a reconnection and a loss each drop the endpoint's entries.
    idx.apply(1, &batch(vec![KvEvent::AllBlocksCleared]));
    idx.matched_blocks_all(&req, now(), &mut out);
    assert_eq!(out[1], Some(0));
    idx.apply(0, &batch(vec![eng.store(&prompt)]));
    idx.on_lost(0, now());
    idx.matched_blocks_all(&req, now(), &mut out);
    assert_eq!(out[0], None, "stale: the caller falls back");
    assert!(idx.is_fresh(0, now() + Duration::from_secs(11)));
    idx.on_disconnect(2);
    assert!(!idx.is_fresh(2, now()));
}

#[test]
fn entries_are_bounded_per_endpoint() {
    let idx = KvIndex::new(1, 1, Duration::from_secs(1));
    idx.on_connect(0);
    let n = MAX_BLOCKS_PER_ENDPOINT + 1;
    idx.apply(
        0,
        &batch(vec![KvEvent::BlockStored(BlockStored {
            block_hashes: (0..n as u64).collect(),
            parent_block_hash: None,
            token_ids: (0..n as u32).collect(),
            block_size: 1,
            ..Default::default()
        })]),
    );
    assert_eq!(idx.status(0, now()).unwrap().blocks, 0);
}

proptest! {
    /// Two engines store and evict at random, each restarting now and then (new seed, empty
    /// cache, a reconnection). Applied in order, the index holds exactly each engine's cache;
    /// with messages lost, it holds nothing the engine does not (and is stale meanwhile).
    #[test]
    fn index_never_claims_a_block_the_engine_lacks(
        ops in proptest::collection::vec((0usize..2, 0u8..10, proptest::collection::vec(0u32..3, 4..12)), 1..60),
        lose in proptest::collection::vec(any::<bool>(), 60),
    ) {
        let idx = KvIndex::new(2, BS, Duration::from_secs(3600));
        let mut engines: Vec<Engine> = (0..2).map(|s| Engine { seed: s, cached: HashMap::new() }).collect();
        for e in 0..2 { idx.on_connect(e); }
        let mut universe = BTreeSet::new();
        for (step, (e, op, tokens)) in ops.into_iter().enumerate() {
            let eng = &mut engines[e];
            let event = match op {
                0..=5 => {
                    universe.extend(token_block_keys(0, &tokens, BS));
                    eng.store(&tokens)
                }
                6..=7 => match eng.cached.keys().next().copied() {
                    Some(name) => eng.remove(name),
                    None => continue,
                },
                8 => {
                    eng.cached.clear();
                    KvEvent::AllBlocksCleared
                }
                _ => {
                    *eng = Engine { seed: eng.seed + 100, cached: HashMap::new() };
                    idx.on_connect(e);
                    continue;
                }
            };
            if lose[step] {
                idx.on_lost(e, now());
            } else {
                idx.apply(e, &batch(vec![event]));
            }
            for (e, eng) in engines.iter().enumerate() {
                let truth = eng.true_keys();
                let mut out = [None; 2];
                idx.matched_blocks_all(&[], now(), &mut out);
                if out[e].is_none() {
                    continue; // stale: not consulted
                }
                let held = held(&idx, e, &universe);
                prop_assert!(held.is_subset(&truth), "endpoint {e} holds {:?} beyond {:?}", held, truth);
            }
        }
    }
}

#[test]
fn picks_count_as_pending_until_confirmed_removed_or_expired() {
    let idx = KvIndex::new(2, BS, Duration::from_secs(10));
    idx.on_connect(0);
    idx.on_connect(1);
    let prompt: Vec<u32> = (0..8).collect();
    let keys = token_block_keys(0, &prompt, BS);
    let t = now();
    idx.record_pending(1, &keys, t);
    let mut out = [None; 2];
    idx.matched_blocks_all(&keys, t, &mut out);
    assert_eq!(out, [Some(0), Some(2)]);
    // Expired: no longer claimed.
    idx.matched_blocks_all(&keys, t + PENDING_FOR, &mut out);
    assert_eq!(out, [Some(0), Some(0)]);
    // Confirmed by the engine, then removed by it: the pending claim does not outlive either.
    idx.record_pending(1, &keys, t);
    let mut eng = Engine {
        seed: 3,
        cached: HashMap::new(),
    };
    idx.apply(1, &batch(vec![eng.store(&prompt)]));
    idx.apply(1, &batch(vec![eng.remove(eng.name(keys[1]))]));
    idx.matched_blocks_all(&keys, t, &mut out);
    assert_eq!(out[1], Some(1));
    // A reconnection drops pending claims with the rest.
    idx.record_pending(0, &keys, t);
    idx.on_connect(0);
    idx.matched_blocks_all(&keys, t, &mut out);
    assert_eq!(out[0], Some(0));
}

#[test]
fn chat_keys_come_from_the_models_template_and_only_for_what_it_renders() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2-135m/tokenizer.json"
    );
    let tk = PromptTokenizer::load(std::path::Path::new(path)).unwrap();
    let idx = KvIndex::new(1, BS, Duration::from_secs(10)).with_tokenizer(tk.clone());
    let system = "You answer questions about railway timetables. ".repeat(8);
    let body = |extra: &str| {
        format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"When?"}}]{extra}}}"#
        )
    };
    let keys = idx.chat_keys(body("").as_bytes());
    let conv = [
        ("system".to_string(), system.clone()),
        ("user".to_string(), "When?".to_string()),
    ];
    let tokens = tk.encode_chat(&conv).unwrap().unwrap();
    assert_eq!(keys, token_block_keys(0, &tokens, BS));
    assert!(keys.len() >= 4);
    // Tools and images change what the engine renders: left to the approximate index.
    let tools = r#","tools":[{"type":"function","function":{"name":"f"}}]"#;
    assert!(idx.chat_keys(body(tools).as_bytes()).is_empty());
    assert_eq!(idx.chat_keys(body(r#","tools":[]"#).as_bytes()), keys);
    let image = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
    assert!(idx.chat_keys(image.as_bytes()).is_empty());
    assert!(idx.chat_keys(b"not json").is_empty());
    // The simulator's tokenizer has no model template.
    let sim = KvIndex::new(1, BS, Duration::from_secs(10));
    assert!(sim.chat_keys(body("").as_bytes()).is_empty());
}

#[test]
fn token_id_prompts_are_keyed_as_sent() {
    let idx = KvIndex::new(1, BS, Duration::from_secs(10));
    let ids: Vec<u32> = (0..40).collect();
    let want = token_block_keys(0, &ids, BS);
    assert_eq!(want.len(), 40 / BS);
    assert_eq!(idx.token_id_keys(br#"{"prompt": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39]}"#), want);
    let one = format!(
        r#"{{"prompt": [{}]}}"#,
        serde_json::to_string(&ids).unwrap()
    );
    assert_eq!(idx.token_id_keys(one.as_bytes()), want);
    for other in [
        r#"{"prompt": "text"}"#,
        r#"{"prompt": [[1, 2], [3, 4]]}"#,
        r#"{"prompt": [-1, 2]}"#,
        r#"{"prompt": []}"#,
        r#"{}"#,
        "not json",
    ] {
        assert!(idx.token_id_keys(other.as_bytes()).is_empty(), "{other}");
    }
}

#[test]
fn long_prompts_are_keyed_on_their_first_part() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2-135m/tokenizer.json"
    );
    let tk = PromptTokenizer::load(std::path::Path::new(path)).unwrap();
    let idx = KvIndex::new(1, BS, Duration::from_secs(10)).with_tokenizer(tk.clone());
    // Multi-byte characters across the cut, and text past it that must not matter.
    let head = "Zürich–Genève timetable line ".repeat(MAX_KEYED_PROMPT_BYTES / 20);
    let long = format!("{head}{}", "tail text ".repeat(10_000));
    let keys = idx.prompt_keys(&long);
    let full = token_block_keys(0, &tk.encode(&long).unwrap(), BS);
    assert!(keys.len() > 1000 && keys.len() < full.len());
    assert_eq!(
        keys[..],
        full[..keys.len()],
        "the keyed part's blocks are the prompt's"
    );
    let other = format!("{head}{}", "other tail ".repeat(10_000));
    assert_eq!(idx.prompt_keys(&other), keys);
}

#[test]
fn an_oracles_truth_replaces_stored_blocks_but_not_pending_picks() {
    let idx = KvIndex::new(3, BS, Duration::from_secs(10));
    idx.on_connect(0);
    idx.on_connect(1);
    let prompt: Vec<u32> = (0..16).collect();
    let keys = token_block_keys(0, &prompt, BS);
    let mut eng = Engine {
        seed: 5,
        cached: HashMap::new(),
    };
    // The events say endpoint 0 holds all 4 blocks; the truth says 1 (an eviction the index
    // has not heard of yet). Endpoint 1 holds nothing but has a pending pick of 2 blocks, which
    // the truth (0 cached) does not erase. Endpoint 2 has no events and no truth: fall back.
    idx.apply(0, &batch(vec![eng.store(&prompt)]));
    let t = now();
    idx.record_pending(1, &keys[..2], t);
    let mut out = [None; 3];
    idx.matched_blocks_given(&keys, t, &[], &mut out);
    assert_eq!(out, [Some(4), Some(2), None]);
    idx.matched_blocks_given(&keys, t, &[Some(1), Some(0)], &mut out);
    assert_eq!(out, [Some(1), Some(2), None]);
    // The truth serves an endpoint whose events are not fresh, and past the pending run.
    idx.on_disconnect(1);
    idx.matched_blocks_given(&keys, t, &[Some(1), Some(3), Some(4)], &mut out);
    assert_eq!(out, [Some(1), Some(3), Some(4)]);
}
