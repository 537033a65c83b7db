//! Which endpoint probably holds which prompt-prefix blocks in its KV cache.
//!
//! vLLM's automatic prefix caching names each full KV block by a hash chain over the prompt, so a
//! replica that served a prompt recently can skip prefilling any later prompt sharing its leading
//! blocks. The gateway cannot see the replicas' caches, so, like the llm-d scheduler's
//! prefix-cache scorer and the Gateway API Inference Extension's approximate prefix index (and in
//! the spirit of SGLang's cache-aware router, which keeps a radix tree per worker), it remembers
//! where it *sent* each block and assumes the block is still cached there until that endpoint's
//! share of the index exceeds its KV capacity.
//!
//! Design: one `HashMap` keyed by block hash (already a good hash, so the map uses a
//! one-multiply hasher) whose value lists the endpoints holding the block with the tick at which each last
//! used it; usually one or two endpoints, so a short `Vec` beats a bitset. Each endpoint keeps an
//! LRU queue of `(hash, tick)` with lazy deletion: re-recording a block pushes a fresh entry and
//! leaves the old one to be skipped when it reaches the front; the queue is compacted when stale
//! entries outnumber live ones, so memory stays O(capacity). Eviction is per endpoint because each
//! replica's cache is separate. A request's blocks are recorded tail first, so its head blocks are
//! the most recent and are evicted last, as vLLM does: a surviving tail without its head is
//! useless for prefix matching.
//!
//! One `std::sync::Mutex` guards everything. A pick takes it once for all endpoints
//! ([`PrefixIndex::matched_blocks_all`]), walking the request's hashes until no endpoint is still
//! matching, so a lookup is a few hash probes per block of the common prefix.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

/// Default capacity per endpoint in blocks, when its `num_gpu_blocks` is unknown.
pub const DEFAULT_CAPACITY_BLOCKS: usize = 10_000;

/// Block hashes are already well mixed, so one multiply (Fx-style, spreading the bits the map
/// uses for its bucket and tag) replaces a full SipHash; it also keeps structured keys from
/// callers that pass their own hashes from degrading the map.
#[derive(Default)]
pub(crate) struct MulHasher(u64);

impl Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<MulHasher>>;

/// Prefix-cache affinity for one pool of endpoints, addressed by index into the pool.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// block hash → (endpoint, tick of its last use there)
    blocks: Map<Vec<(u32, u64)>>,
    endpoints: Vec<EndpointLru>,
    tick: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("blocks", &self.blocks.len())
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

struct EndpointLru {
    capacity: usize,
    /// Live blocks held by this endpoint.
    len: usize,
    /// Oldest first; entries whose tick no longer matches the map are stale.
    queue: VecDeque<(u64, u64)>,
}

impl EndpointLru {
    fn new() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY_BLOCKS,
            len: 0,
            queue: VecDeque::new(),
        }
    }
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the index inconsistent in a way that matters for a
        // heuristic, so keep serving after poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set an endpoint's capacity in blocks (its `num_gpu_blocks`), evicting if now over.
    pub fn set_capacity(&self, endpoint: usize, blocks: usize) {
        let mut inner = self.lock();
        inner.endpoint(endpoint).capacity = blocks.max(1);
        inner.evict(endpoint);
    }

    /// Remember that `hashes` (one request's prefix blocks, in prompt order) were sent to
    /// `endpoint`.
    pub fn record(&self, endpoint: usize, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.endpoint(endpoint);
        let Inner {
            blocks,
            endpoints,
            tick,
        } = &mut *inner;
        let lru = &mut endpoints[endpoint];
        let id = endpoint as u32;
        for &h in hashes.iter().rev() {
            *tick += 1;
            let holders = blocks.entry(h).or_default();
            match holders.iter_mut().find(|(e, _)| *e == id) {
                Some(slot) => slot.1 = *tick,
                None => {
                    holders.push((id, *tick));
                    lru.len += 1;
                }
            }
            lru.queue.push_back((h, *tick));
        }
        inner.evict(endpoint);
        inner.compact(endpoint);
    }

    /// Length of the longest prefix of `hashes` that `endpoint` holds.
    pub fn matched_blocks(&self, endpoint: usize, hashes: &[u64]) -> usize {
        let inner = self.lock();
        let id = endpoint as u32;
        hashes
            .iter()
            .take_while(|h| {
                inner
                    .blocks
                    .get(h)
                    .is_some_and(|v| v.iter().any(|(e, _)| *e == id))
            })
            .count()
    }

    /// [`PrefixIndex::matched_blocks`] for endpoints `0..out.len()` at once, under one lock:
    /// `out[e]` is endpoint `e`'s matched prefix length.
    pub fn matched_blocks_all(&self, hashes: &[u64], out: &mut [usize]) {
        out.fill(0);
        let inner = self.lock();
        for (i, h) in hashes.iter().enumerate() {
            let Some(holders) = inner.blocks.get(h) else {
                return;
            };
            let mut any = false;
            for &(e, _) in holders {
                if let Some(run) = out.get_mut(e as usize) {
                    if *run == i {
                        *run = i + 1;
                        any = true;
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Forget everything recorded for `endpoint` (it restarted, or left the pool).
    pub fn clear_endpoint(&self, endpoint: usize) {
        let mut inner = self.lock();
        let Some(lru) = inner.endpoints.get_mut(endpoint) else {
            return;
        };
        let queue = std::mem::take(&mut lru.queue);
        lru.len = 0;
        let id = endpoint as u32;
        for (h, _) in queue {
            inner.remove_holder(h, id, None);
        }
    }

    /// `endpoint`'s capacity in blocks.
    pub fn capacity(&self, endpoint: usize) -> usize {
        self.lock()
            .endpoints
            .get(endpoint)
            .map_or(DEFAULT_CAPACITY_BLOCKS, |l| l.capacity)
    }

    /// Blocks held by `endpoint`.
    pub fn len(&self, endpoint: usize) -> usize {
        self.lock().endpoints.get(endpoint).map_or(0, |l| l.len)
    }

    /// Distinct block hashes in the index.
    pub fn distinct_blocks(&self) -> usize {
        self.lock().blocks.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().blocks.is_empty()
    }
}

impl Inner {
    fn endpoint(&mut self, endpoint: usize) -> &mut EndpointLru {
        if self.endpoints.len() <= endpoint {
            self.endpoints.resize_with(endpoint + 1, EndpointLru::new);
        }
        &mut self.endpoints[endpoint]
    }

    /// Drop `endpoint` from `h`'s holders if its tick matches `tick` (any tick when `None`).
    /// Returns whether it was removed.
    fn remove_holder(&mut self, h: u64, id: u32, tick: Option<u64>) -> bool {
        let Some(holders) = self.blocks.get_mut(&h) else {
            return false;
        };
        let Some(pos) = holders
            .iter()
            .position(|&(e, t)| e == id && tick.unwrap_or(t) == t)
        else {
            return false;
        };
        holders.swap_remove(pos);
        if holders.is_empty() {
            self.blocks.remove(&h);
        }
        true
    }

    fn evict(&mut self, endpoint: usize) {
        let id = endpoint as u32;
        while self.endpoints[endpoint].len > self.endpoints[endpoint].capacity {
            let Some((h, tick)) = self.endpoints[endpoint].queue.pop_front() else {
                break;
            };
            if self.remove_holder(h, id, Some(tick)) {
                self.endpoints[endpoint].len -= 1;
            }
        }
    }

    /// Rebuild the queue without stale entries once they outnumber the live ones.
    fn compact(&mut self, endpoint: usize) {
        let lru = &self.endpoints[endpoint];
        if lru.queue.len() <= 2 * lru.len + 64 {
            return;
        }
        let id = endpoint as u32;
        let blocks = &self.blocks;
        let lru = &mut self.endpoints[endpoint];
        lru.queue.retain(|(h, tick)| {
            blocks
                .get(h)
                .is_some_and(|v| v.iter().any(|&(e, t)| e == id && t == *tick))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn longest_recorded_prefix_per_endpoint() {
        let idx = PrefixIndex::new();
        idx.record(0, &[1, 2, 3, 4]);
        idx.record(2, &[1, 2, 9]);
        assert_eq!(idx.matched_blocks(0, &[1, 2, 3, 7]), 3);
        assert_eq!(idx.matched_blocks(2, &[1, 2, 3, 7]), 2);
        assert_eq!(idx.matched_blocks(1, &[1, 2, 3, 7]), 0);
        assert_eq!(
            idx.matched_blocks(0, &[7, 2, 3]),
            0,
            "must match from the start"
        );
        let mut out = [9; 4];
        idx.matched_blocks_all(&[1, 2, 3, 7], &mut out);
        assert_eq!(out, [3, 0, 2, 0]);
        assert_eq!(idx.distinct_blocks(), 5);
    }

    #[test]
    fn lru_evicts_oldest_request_and_tail_before_head() {
        let idx = PrefixIndex::new();
        idx.set_capacity(0, 4);
        idx.record(0, &[1, 2, 3]);
        idx.record(0, &[10, 11]);
        // Over by one: the oldest entry is request 1's tail (recorded first), not its head.
        assert_eq!(idx.len(0), 4);
        assert_eq!(idx.matched_blocks(0, &[1, 2, 3]), 2);
        assert_eq!(idx.matched_blocks(0, &[10, 11]), 2);
        // Touching [1] again makes it recent; the next request evicts 2 and then 10, 11 would go.
        idx.record(0, &[1]);
        idx.record(0, &[20, 21]);
        assert_eq!(idx.len(0), 4);
        assert_eq!(idx.matched_blocks(0, &[1]), 1);
        assert_eq!(idx.matched_blocks(0, &[20, 21]), 2);
    }

    #[test]
    fn repeated_records_keep_queue_bounded_and_clear_works() {
        let idx = PrefixIndex::new();
        for _ in 0..10_000 {
            idx.record(3, &[1, 2, 3]);
        }
        assert_eq!(idx.len(3), 3);
        assert!(idx.lock().endpoints[3].queue.len() <= 2 * 3 + 64 + 3);
        idx.record(1, &[1, 2]);
        idx.clear_endpoint(3);
        assert_eq!(idx.len(3), 0);
        assert_eq!(idx.matched_blocks(1, &[1, 2, 3]), 2);
        assert_eq!(idx.distinct_blocks(), 2);
    }

    #[test]
    fn holds_100k_blocks() {
        let idx = PrefixIndex::new();
        for e in 0..10 {
            idx.set_capacity(e, 12_000);
        }
        let mut h = 0u64;
        for r in 0..1000 {
            let hashes: Vec<u64> = (0..128)
                .map(|_| {
                    h += 1;
                    h
                })
                .collect();
            idx.record(r % 10, &hashes);
        }
        assert_eq!(idx.distinct_blocks(), 120_000);
        assert_eq!((0..10).map(|e| idx.len(e)).sum::<usize>(), 120_000);
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity_and_matches_agree(
            ops in proptest::collection::vec((0usize..4, proptest::collection::vec(0u64..40, 0..8)), 0..60),
            cap in 1usize..20,
            probe in proptest::collection::vec(0u64..40, 0..8),
        ) {
            let idx = PrefixIndex::new();
            for e in 0..4 { idx.set_capacity(e, cap); }
            for (e, hashes) in &ops {
                idx.record(*e, hashes);
                prop_assert!(idx.len(*e) <= cap);
            }
            let mut all = [0; 4];
            idx.matched_blocks_all(&probe, &mut all);
            for (e, m) in all.iter().enumerate() {
                prop_assert_eq!(*m, idx.matched_blocks(e, &probe));
            }
            // The last request recorded on an endpoint is fully held if it fits.
            if let Some((e, hashes)) = ops.last() {
                let mut distinct = hashes.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if distinct.len() <= cap {
                    prop_assert_eq!(idx.matched_blocks(*e, hashes), hashes.len());
                }
            }
        }
    }
}
