//! Paged KV cache with automatic prefix caching, after vLLM's v1 `KVCacheManager`.
//!
//! The cache is `num_blocks` blocks of [`BLOCK_SIZE`] tokens. A request holds a list of blocks
//! (its block table). A block that is *full of prompt tokens* is named by a hash chain
//! `h_i = hash(h_{i-1}, tokens of block i, adapter)`, so a block's hash identifies its whole
//! prefix, not just its own 16 tokens: two prompts share block `i` only if they agree on every
//! token up to the end of block `i`.
//!
//! Blocks are refcounted. When a request finishes, its blocks drop a reference; a block at zero
//! references that carries a hash stays in the cache (still findable by hash) but becomes
//! *evictable*: it sits in an LRU free queue and is reused only when no never-cached free block is
//! left. Like vLLM, a freed request's blocks are queued tail first, so the end of a prompt is
//! evicted before its (more widely shared) beginning. Usage counts referenced blocks only, which
//! is what vLLM reports as `kv_cache_usage_perc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_kv_events::{BlockStored, KvEvent};

use crate::oracle::CacheView;
use crate::tokenizer::{fnv1a, mix64};

/// Tokens per KV block (vLLM's default on CUDA).
pub const BLOCK_SIZE: usize = 16;

/// Index of a block in the cache.
pub type BlockId = u32;

/// Hash chain over the full [`BLOCK_SIZE`]-token blocks of `tokens`. `salt` distinguishes caches
/// that must not be shared (e.g. different LoRA adapters), as vLLM's "extra keys" do.
pub fn block_hashes(tokens: &[u32], salt: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / BLOCK_SIZE);
    let mut prev = salt;
    let mut buf = [0u8; BLOCK_SIZE * 4];
    for block in tokens.chunks_exact(BLOCK_SIZE) {
        for (i, t) in block.iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&t.to_le_bytes());
        }
        prev = fnv1a(&buf, prev);
        out.push(prev);
    }
    out
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    hash: Option<u64>,
    /// Position in the evictable LRU queue while `refs == 0 && hash.is_some()`.
    lru_tick: Option<u64>,
}

/// The block pool of one replica.
#[derive(Debug)]
pub struct KvCache {
    blocks: Vec<Block>,
    /// Free blocks that hold nothing worth keeping; used first.
    free_plain: Vec<BlockId>,
    /// Free blocks that still hold a cached prefix, oldest first.
    evictable: BTreeMap<u64, BlockId>,
    by_hash: HashMap<u64, BlockId>,
    tick: u64,
    used: usize,
    /// Events since the last [`KvCache::take_events`], when publishing (`--kv-events`).
    events: Option<Vec<KvEvent>>,
    /// This process's hash seed: the names published for blocks are seeded per engine process,
    /// as vLLM's are, so subscribers cannot mistake them for names of their own.
    event_seed: u64,
    /// Where the findable hashes are mirrored for `/sim/oracle/cached`.
    view: Option<Arc<CacheView>>,
    /// Cached blocks evicted so far.
    evicted: u64,
}

impl KvCache {
    /// A cache of `num_blocks` empty blocks.
    pub fn new(num_blocks: usize) -> Self {
        Self {
            blocks: vec![Block::default(); num_blocks],
            free_plain: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            by_hash: HashMap::new(),
            tick: 0,
            used: 0,
            events: None,
            event_seed: 0,
            view: None,
            evicted: 0,
        }
    }

    /// Mirrors the findable hashes into `view` from now on (cleared first: a new cache).
    pub fn mirror_into(&mut self, view: Arc<CacheView>) {
        view.clear();
        for &h in self.by_hash.keys() {
            view.insert(h);
        }
        self.view = Some(view);
    }

    /// Starts recording cache events, publishing block names seeded with `seed`.
    pub fn enable_events(&mut self, seed: u64) {
        self.events = Some(Vec::new());
        self.event_seed = seed;
    }

    /// Whether events are recorded.
    pub fn events_enabled(&self) -> bool {
        self.events.is_some()
    }

    /// The events recorded since the last call, in order.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The name published for the block whose chain hash is `hash`.
    pub fn published_hash(&self, hash: u64) -> u64 {
        mix64(hash ^ self.event_seed)
    }

    /// Records that blocks `range` of a prompt (chain `hashes`, tokens `tokens`) became cached,
    /// as one `BlockStored` per run of blocks that were cached anew (a block already cached
    /// under the same hash was stored before).
    pub fn note_stored(
        &mut self,
        hashes: &[u64],
        tokens: &[u32],
        fresh: &[usize],
        lora: Option<u16>,
    ) {
        let seed = self.event_seed;
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let name = |h: u64| mix64(h ^ seed);
        let mut run_start = 0;
        while run_start < fresh.len() {
            let mut end = run_start + 1;
            while end < fresh.len() && fresh[end] == fresh[end - 1] + 1 {
                end += 1;
            }
            let first = fresh[run_start];
            let last = fresh[end - 1];
            events.push(KvEvent::BlockStored(BlockStored {
                block_hashes: hashes[first..=last].iter().map(|&h| name(h)).collect(),
                parent_block_hash: first.checked_sub(1).map(|p| name(hashes[p])),
                token_ids: tokens[first * BLOCK_SIZE..(last + 1) * BLOCK_SIZE].to_vec(),
                block_size: BLOCK_SIZE,
                lora_id: lora.map(|a| i64::from(a) + 1),
                lora_name: None,
                medium: Some("GPU".into()),
            }));
            run_start = end;
        }
    }

    /// Cached blocks evicted so far (to make room; a reset is not counted).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out now (empty or evictable).
    pub fn num_free(&self) -> usize {
        self.blocks.len() - self.used
    }

    /// Fraction of blocks referenced by requests, 0..=1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        self.used as f64 / self.blocks.len() as f64
    }

    /// How many leading entries of `hashes` are cached (at most `max_blocks`).
    pub fn cached_prefix_len(&self, hashes: &[u64], max_blocks: usize) -> usize {
        hashes
            .iter()
            .take(max_blocks)
            .take_while(|h| self.by_hash.contains_key(h))
            .count()
    }

    /// Takes references on the first `hit` cached blocks of `hashes` and allocates `new` fresh
    /// blocks, appending all to `table`. Fails without side effects if not enough blocks are free.
    pub fn allocate(
        &mut self,
        table: &mut Vec<BlockId>,
        hashes: &[u64],
        hit: usize,
        new: usize,
    ) -> bool {
        let hit_ids: Vec<BlockId> = hashes[..hit].iter().map(|h| self.by_hash[h]).collect();
        let reviving = hit_ids
            .iter()
            .filter(|&&b| self.blocks[b as usize].refs == 0)
            .count();
        if reviving + new > self.num_free() {
            return false;
        }
        for b in hit_ids {
            self.take_ref(b);
            table.push(b);
        }
        for _ in 0..new {
            let b = self.pop_free().expect("free count checked above");
            self.take_ref(b);
            table.push(b);
        }
        true
    }

    fn take_ref(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        if block.refs == 0 {
            if let Some(t) = block.lru_tick.take() {
                self.evictable.remove(&t);
            }
            self.used += 1;
        }
        block.refs += 1;
    }

    fn pop_free(&mut self) -> Option<BlockId> {
        if let Some(b) = self.free_plain.pop() {
            return Some(b);
        }
        let (_, b) = self.evictable.pop_first()?;
        let block = &mut self.blocks[b as usize];
        block.lru_tick = None;
        if let Some(h) = block.hash.take() {
            self.by_hash.remove(&h);
            self.evicted += 1;
            if let Some(v) = &self.view {
                v.remove(h);
            }
            let name = mix64(h ^ self.event_seed);
            if let Some(events) = self.events.as_mut() {
                match events.last_mut() {
                    Some(KvEvent::BlockRemoved { block_hashes, .. }) => block_hashes.push(name),
                    _ => events.push(KvEvent::BlockRemoved {
                        block_hashes: vec![name],
                        medium: Some("GPU".into()),
                    }),
                }
            }
        }
        Some(b)
    }

    /// Records that `block` now holds the full prefix named by `hash`, making it findable. If an
    /// identical block is already cached the first one stays canonical (as in vLLM). Returns
    /// whether the prefix was cached anew.
    pub fn register(&mut self, block: BlockId, hash: u64) -> bool {
        if self.blocks[block as usize].hash.is_some() {
            return false;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_hash.entry(hash) {
            e.insert(block);
            self.blocks[block as usize].hash = Some(hash);
            if let Some(v) = &self.view {
                v.insert(hash);
            }
            return true;
        }
        false
    }

    /// Drops every cached prefix (vLLM's `reset_prefix_cache`): blocks in use stay allocated
    /// but are no longer findable; free ones become plain.
    pub fn reset_prefix_cache(&mut self) {
        for (_, b) in std::mem::take(&mut self.evictable) {
            let block = &mut self.blocks[b as usize];
            block.lru_tick = None;
            block.hash = None;
            self.free_plain.push(b);
        }
        for block in &mut self.blocks {
            block.hash = None;
        }
        self.by_hash.clear();
        if let Some(v) = &self.view {
            v.clear();
        }
        if let Some(events) = self.events.as_mut() {
            events.push(KvEvent::AllBlocksCleared);
        }
    }

    /// Whether the prefix named by `hash` is cached (for checking what subscribers believe).
    pub fn contains(&self, hash: u64) -> bool {
        self.by_hash.contains_key(&hash)
    }

    /// Drops one reference on each block of `table` (tail first) and clears it.
    pub fn free(&mut self, table: &mut Vec<BlockId>) {
        for &b in table.iter().rev() {
            let block = &mut self.blocks[b as usize];
            block.refs -= 1;
            if block.refs > 0 {
                continue;
            }
            self.used -= 1;
            if block.hash.is_some() {
                self.tick += 1;
                block.lru_tick = Some(self.tick);
                self.evictable.insert(self.tick, b);
            } else {
                self.free_plain.push(b);
            }
        }
        table.clear();
    }

    /// Refcount of a block (for tests and assertions).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].refs
    }

    /// Panics if the pool's bookkeeping is inconsistent.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let referenced = self.blocks.iter().filter(|b| b.refs > 0).count();
        assert_eq!(referenced, self.used);
        assert_eq!(
            self.free_plain.len() + self.evictable.len(),
            self.num_free()
        );
        for &b in &self.free_plain {
            let block = &self.blocks[b as usize];
            assert!(block.refs == 0 && block.hash.is_none() && block.lru_tick.is_none());
        }
        for (&t, &b) in &self.evictable {
            let block = &self.blocks[b as usize];
            assert!(block.refs == 0 && block.hash.is_some() && block.lru_tick == Some(t));
        }
        for (&h, &b) in &self.by_hash {
            assert_eq!(self.blocks[b as usize].hash, Some(h));
        }
    }
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, base: u32) -> Vec<u32> {
        (0..n as u32).map(|i| base + i).collect()
    }

    #[test]
    fn hash_chain_names_whole_prefix() {
        let a = toks(48, 0);
        let mut b = a.clone();
        b[20] = 999; // differs in block 1
        let ha = block_hashes(&a, 0);
        let hb = block_hashes(&b, 0);
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        // block 2 has equal tokens but a different prefix: different hash
        assert_ne!(ha[2], hb[2]);
        assert_eq!(
            block_hashes(&a[..40], 0).len(),
            2,
            "partial blocks are not hashed"
        );
        assert_ne!(block_hashes(&a, 1)[0], ha[0], "salt separates adapters");
    }

    #[test]
    fn refcounts_share_cached_blocks() {
        let mut kv = KvCache::new(8);
        let h = block_hashes(&toks(32, 0), 0);
        let mut t1 = Vec::new();
        assert!(kv.allocate(&mut t1, &h, 0, 2));
        kv.register(t1[0], h[0]);
        kv.register(t1[1], h[1]);
        assert_eq!(kv.cached_prefix_len(&h, 2), 2);
        let mut t2 = Vec::new();
        assert!(kv.allocate(&mut t2, &h, 2, 1));
        assert_eq!(t2[..2], t1[..2]);
        assert_eq!(kv.refs(t1[0]), 2);
        assert_eq!(kv.num_free(), 5);
        kv.free(&mut t1);
        assert_eq!(kv.refs(t2[0]), 1);
        kv.free(&mut t2);
        assert_eq!(kv.num_free(), 8);
        assert_eq!(kv.usage(), 0.0);
        assert_eq!(kv.cached_prefix_len(&h, 2), 2, "freed blocks stay cached");
    }

    #[test]
    fn lru_evicts_oldest_unreferenced_and_prefers_plain_blocks() {
        let mut kv = KvCache::new(4);
        let ha = block_hashes(&toks(32, 0), 0);
        let hb = block_hashes(&toks(32, 100), 0);
        for h in [&ha, &hb] {
            let mut t = Vec::new();
            assert!(kv.allocate(&mut t, h, 0, 2));
            kv.register(t[0], h[0]);
            kv.register(t[1], h[1]);
            kv.free(&mut t);
        }
        // Everything is free but cached; a one-block allocation evicts A's tail block first
        // (A was freed before B, and a request's tail is queued before its head).
        let mut t = Vec::new();
        assert!(kv.allocate(&mut t, &[], 0, 1));
        assert_eq!(kv.cached_prefix_len(&ha, 2), 1);
        assert_eq!(kv.cached_prefix_len(&hb, 2), 2);
        // Touching B keeps it; the next eviction takes A's head.
        let mut tb = Vec::new();
        assert!(kv.allocate(&mut tb, &hb, 2, 0));
        assert!(kv.allocate(&mut t, &[], 0, 1));
        assert_eq!(kv.cached_prefix_len(&ha, 2), 0);
        assert!(
            !kv.allocate(&mut t, &[], 0, 1),
            "full: referenced blocks are never evicted"
        );
        assert_eq!(kv.usage(), 1.0);
    }

    proptest::proptest! {
        /// Random requests over a small alphabet (so prefixes are shared) allocate with prefix
        /// hits, register their blocks and free in random order; the bookkeeping stays consistent
        /// and every table's blocks stay referenced.
        #[test]
        fn random_workloads_keep_the_pool_consistent(
            ops in proptest::collection::vec((0u32..3, 1usize..6, proptest::bool::ANY), 1..60),
        ) {
            let mut kv = KvCache::new(12);
            let mut tables: Vec<Vec<BlockId>> = Vec::new();
            for (family, len_blocks, free_one) in ops {
                if free_one && !tables.is_empty() {
                    let mut t = tables.swap_remove(0);
                    kv.free(&mut t);
                } else {
                    let tokens: Vec<u32> = (0..(len_blocks * BLOCK_SIZE) as u32).map(|i| i / 8 + family * (i / 40)).collect();
                    let hashes = block_hashes(&tokens, 0);
                    let hit = kv.cached_prefix_len(&hashes, hashes.len());
                    let mut t = Vec::new();
                    if kv.allocate(&mut t, &hashes, hit, hashes.len() - hit) {
                        for (i, &b) in t.iter().enumerate() {
                            kv.register(b, hashes[i]);
                        }
                        tables.push(t);
                    } else {
                        proptest::prop_assert!(t.is_empty());
                    }
                }
                kv.check_invariants();
                for t in &tables {
                    for &b in t {
                        let holders = tables.iter().flatten().filter(|&&x| x == b).count() as u32;
                        proptest::prop_assert_eq!(kv.refs(b), holders);
                    }
                }
            }
            for mut t in tables {
                kv.free(&mut t);
            }
            kv.check_invariants();
            proptest::prop_assert_eq!(kv.num_free(), 12);
        }
    }

    #[test]
    fn failed_allocation_has_no_side_effects() {
        let mut kv = KvCache::new(2);
        let mut t = Vec::new();
        assert!(!kv.allocate(&mut t, &[], 0, 3));
        assert!(t.is_empty());
        assert_eq!(kv.num_free(), 2);
        assert_eq!(blocks_for(0), 0);
        assert_eq!(blocks_for(17), 2);
    }
}
