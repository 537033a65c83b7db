//! Which endpoint *does* hold which prompt-prefix blocks: the index built from the engines'
//! KV-cache events (`switchyard_kv_events`), next to [`crate::prefix_index`]'s guess.
//!
//! Keys are the gateway's own: a hash chain over each block's token ids
//! ([`token_block_keys`]), computed from the `token_ids` a `BlockStored` carries and, for a
//! request, from its prompt tokenized as the engine tokenizes it. The engine's own block hashes
//! are seeded per process (vLLM's `PYTHONHASHSEED`, SGLang's likewise), so two replicas name the
//! same prefix differently and a restarted one renames everything; llm-d keys its index the same
//! way for the same reason. Engine hashes are kept per endpoint only to map a `BlockRemoved`
//! (which carries nothing else) back to the key it removes.
//!
//! What the index must never do is claim a hit that is not there: a pick made for it lands on a
//! replica that prefills from scratch while the load scorers thought it cheap. So every doubt
//! drops entries rather than keeps them: a new connection (the engine may have restarted), a
//! lost message (a removal may be in it), `AllBlocksCleared`, a `BlockStored` whose parent is
//! unknown (skipped: its chain cannot be keyed), an endpoint over its block bound. An endpoint
//! that lost messages for good is *stale* for `stale_for`: the picker scores it from the
//! approximate index meanwhile, while new events rebuild its entries.
//!
//! Events arrive after the fact: a block is stored once its prefill is done, which under load is
//! seconds after the pick that sent it. Scored on stored blocks alone, every request sharing a
//! prefix that arrives meanwhile sees no holder and is spread by load, so the prefix is
//! prefilled on every replica (measured: the prefix hit rate halved on an overloaded fleet). So
//! a pick also records its blocks as *pending* on its endpoint, counted as held until the
//! engine's `BlockStored` confirms them or [`PENDING_FOR`] passes; a removal, a clear or a
//! reconnection drops them too. Pending entries are this gateway's own picks; stored ones are
//! what every gateway subscribed to the same engines holds alike.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchyard_kv_events::{is_gpu, BlockStored, EngineHash, EventBatch, KvEvent};
use switchyard_sim::chat_template::chat_messages;
use switchyard_sim::prompt_tokenizer::PromptTokenizer;

use crate::prefix_index::MulHasher;

type Map<V> = HashMap<u64, V, BuildHasherDefault<MulHasher>>;

/// Most blocks kept per endpoint: a real engine's GPU cache holds a few hundred thousand at
/// most (an H100's 8B model: ~30k); past this an engine is misbehaving and is dropped.
pub const MAX_BLOCKS_PER_ENDPOINT: usize = 1 << 18;

/// How long a pick's blocks count as held before the engine confirms them.
pub const PENDING_FOR: Duration = Duration::from_secs(10);
/// Most pending (block, endpoint) entries kept; the oldest go first.
pub const MAX_PENDING: usize = 1 << 16;

/// The most prompt text keyed with a model's tokenizer: about 32k tokens of English. A model's
/// tokenizer costs up to ~1 µs a byte (a run of digits is a token each; `benches/kv_index.rs`),
/// so a prompt of several MiB would hold a blocking thread for seconds; past the bound a prompt
/// is keyed on its first part, which is where the prefixes it could share are.
pub const MAX_KEYED_PROMPT_BYTES: usize = 128 << 10;

/// `text` up to [`MAX_KEYED_PROMPT_BYTES`] (at a character boundary), and whether it was cut.
fn keyed_part(text: &str) -> (&str, bool) {
    if text.len() <= MAX_KEYED_PROMPT_BYTES {
        return (text, false);
    }
    let mut end = MAX_KEYED_PROMPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// The gateway's key chain over full blocks of `block_size` tokens, seeded by `seed` (0 for the
/// base model).
pub fn token_block_keys(seed: u64, tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut prev = chain_start(seed);
    tokens
        .chunks_exact(block_size.max(1))
        .map(|block| {
            prev = chain(prev, block);
            prev
        })
        .collect()
}

fn chain_start(seed: u64) -> u64 {
    seed ^ 0x6b76_5f69_6e64_6578
}

fn chain(prev: u64, block: &[u32]) -> u64 {
    let mut h = prev ^ (block.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &t in block {
        h = (h ^ u64::from(t))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// Counters of what the events did to one endpoint's entries, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvEndpointStatus {
    /// Blocks held now.
    pub blocks: usize,
    /// Connected to the engine's publisher and not stale.
    pub fresh: bool,
    pub batches: u64,
    /// Entries dropped wholesale: reconnections, lost messages, clears.
    pub resets: u64,
    /// Message ranges lost for good.
    pub lost: u64,
    /// `BlockStored` events skipped (unknown parent, another block size, not GPU).
    pub skipped: u64,
}

#[derive(Default)]
struct Endpoint {
    /// engine hash → our key
    by_engine: Map<u64>,
    connected: bool,
    stale_until: Option<Instant>,
    status: KvEndpointStatus,
}

/// The precise index of one pool, endpoints addressed by position like [`crate::PrefixIndex`].
#[derive(Debug)]
pub struct KvIndex {
    block_size: usize,
    stale_for: Duration,
    /// How a request's prompt becomes the engine's tokens (`kv_events.tokenizer`).
    tokenizer: PromptTokenizer,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// our key → endpoints holding it
    blocks: Map<Vec<u32>>,
    endpoints: Vec<Endpoint>,
    /// our key → (endpoint, until) for blocks sent there and not yet confirmed
    pending: Map<Vec<(u32, Instant)>>,
    /// pending entries in the order they were made, to expire and bound them
    pending_order: VecDeque<(Instant, u64, u32)>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl KvIndex {
    /// An index for `endpoints` engines with `block_size`-token blocks.
    pub fn new(endpoints: usize, block_size: usize, stale_for: Duration) -> Self {
        let mut inner = Inner::default();
        inner.endpoints.resize_with(endpoints, Endpoint::default);
        Self {
            block_size,
            stale_for,
            tokenizer: PromptTokenizer::Sim,
            inner: Mutex::new(inner),
        }
    }

    /// Keys prompts with `tokenizer` instead of the simulator's.
    pub fn with_tokenizer(mut self, tokenizer: PromptTokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Whether keying a prompt costs enough to run off the event loop: a model's tokenizer
    /// takes about a millisecond for 2k tokens (`benches/kv_index.rs`), the simulator's 25 µs.
    pub fn costly_keys(&self) -> bool {
        !self.tokenizer.is_sim()
    }

    /// The engine's block keys of a chat request's conversation (the request body's
    /// `messages`), rendered with the model's chat template; empty (scored by the approximate
    /// index) without one, when the body or the template refuses, and for what the rendering
    /// here does not reproduce: `tools` (the engine renders their definitions into the prompt)
    /// and non-text content parts (the engine inserts placeholder tokens for an image).
    pub fn chat_keys(&self, body: &[u8]) -> Vec<u64> {
        #[derive(serde::Deserialize)]
        struct Chat {
            messages: Option<serde_json::Value>,
            tools: Option<serde_json::Value>,
        }
        let Ok(chat) = serde_json::from_slice::<Chat>(body) else {
            return Vec::new();
        };
        let tools = chat
            .tools
            .as_ref()
            .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()));
        let non_text = |m: &serde_json::Value| {
            m.get("content")
                .and_then(|c| c.as_array())
                .is_some_and(|parts| {
                    parts
                        .iter()
                        .any(|p| p.get("type").is_some_and(|t| t != "text"))
                })
        };
        let multimodal = chat
            .messages
            .as_ref()
            .and_then(|m| m.as_array())
            .is_some_and(|list| list.iter().any(non_text));
        if tools || multimodal {
            return Vec::new();
        }
        let Ok(messages) = chat_messages(chat.messages.as_ref()) else {
            return Vec::new();
        };
        match self.tokenizer.render_chat(&messages) {
            Some(Ok(text)) => {
                let (text, cut) = keyed_part(&text);
                let tokens = self.tokenizer.encode_rendered(text).unwrap_or_default();
                self.keys_of(&tokens, cut)
            }
            _ => Vec::new(),
        }
    }

    /// The block keys of a completions prompt sent as token ids (`[ids]` or `[[ids]]`), which
    /// the engine keys as they are, whatever its tokenizer; empty for anything else (text, a
    /// batch of several prompts).
    pub fn token_id_keys(&self, body: &[u8]) -> Vec<u64> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Prompt {
            Ids(Vec<u32>),
            One([Vec<u32>; 1]),
            Other(serde::de::IgnoredAny),
        }
        #[derive(serde::Deserialize)]
        struct Completion {
            prompt: Option<Prompt>,
        }
        match serde_json::from_slice::<Completion>(body).map(|c| c.prompt) {
            Ok(Some(Prompt::Ids(ids) | Prompt::One([ids]))) => {
                token_block_keys(0, &ids, self.block_size)
            }
            _ => Vec::new(),
        }
    }

    /// The engine's block keys of a completions prompt; empty when the tokenizer refuses it.
    pub fn prompt_keys(&self, prompt: &str) -> Vec<u64> {
        let (text, cut) = keyed_part(prompt);
        let tokens = self.tokenizer.encode(text).unwrap_or_default();
        self.keys_of(&tokens, cut)
    }

    /// Block keys of `tokens`; of a prompt cut by [`keyed_part`], without the last two blocks,
    /// whose tokens the cut may have changed (BPE merges across it).
    fn keys_of(&self, tokens: &[u32], cut: bool) -> Vec<u64> {
        let mut keys = token_block_keys(0, tokens, self.block_size);
        if cut {
            keys.truncate(keys.len().saturating_sub(2));
        }
        keys
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connected to `endpoint`'s publisher anew: whatever it held may belong to a dead process.
    pub fn on_connect(&self, endpoint: usize) {
        let mut inner = self.lock();
        inner.clear(endpoint);
        if let Some(ep) = inner.endpoints.get_mut(endpoint) {
            ep.connected = true;
        }
    }

    /// Lost the connection: score `endpoint` approximately until it is back.
    pub fn on_disconnect(&self, endpoint: usize) {
        let mut inner = self.lock();
        inner.clear(endpoint);
        if let Some(ep) = inner.endpoints.get_mut(endpoint) {
            ep.connected = false;
        }
    }

    /// Messages were lost for good: drop the entries and be stale for `stale_for`.
    pub fn on_lost(&self, endpoint: usize, now: Instant) {
        let mut inner = self.lock();
        inner.clear(endpoint);
        if let Some(ep) = inner.endpoints.get_mut(endpoint) {
            ep.status.lost += 1;
            ep.stale_until = Some(now + self.stale_for);
        }
    }

    /// Applies one batch from `endpoint`, in order.
    pub fn apply(&self, endpoint: usize, batch: &EventBatch) {
        let mut inner = self.lock();
        if endpoint >= inner.endpoints.len() {
            return;
        }
        inner.endpoints[endpoint].status.batches += 1;
        for e in &batch.events {
            match e {
                KvEvent::BlockStored(s) => inner.stored(endpoint, s, self.block_size),
                KvEvent::BlockRemoved {
                    block_hashes,
                    medium,
                } if is_gpu(medium.as_deref()) => inner.removed(endpoint, block_hashes),
                KvEvent::BlockRemoved { .. } => {}
                KvEvent::AllBlocksCleared => inner.clear(endpoint),
            }
        }
        if inner.endpoints[endpoint].by_engine.len() > MAX_BLOCKS_PER_ENDPOINT {
            tracing::warn!(
                endpoint,
                limit = MAX_BLOCKS_PER_ENDPOINT,
                "kv events: endpoint claims more cached blocks than the bound; dropping them"
            );
            inner.clear(endpoint);
        }
    }

    /// A request with `keys` was sent to `endpoint` at `now`: count its blocks as held there
    /// until the engine confirms them or [`PENDING_FOR`] passes.
    pub fn record_pending(&self, endpoint: usize, keys: &[u64], now: Instant) {
        let mut inner = self.lock();
        let until = now + PENDING_FOR;
        let id = endpoint as u32;
        for &k in keys {
            let holders = inner.pending.entry(k).or_default();
            match holders.iter_mut().find(|(e, _)| *e == id) {
                Some(slot) => slot.1 = until,
                None => holders.push((id, until)),
            }
            inner.pending_order.push_back((until, k, id));
        }
        inner.expire_pending(now);
    }

    /// Whether `endpoint`'s entries can be trusted now.
    pub fn is_fresh(&self, endpoint: usize, now: Instant) -> bool {
        self.lock()
            .endpoints
            .get(endpoint)
            .is_some_and(|ep| ep.is_fresh(now))
    }

    /// For endpoints `0..out.len()`: `Some(matched leading blocks of keys)` where the entries
    /// are fresh, `None` where the caller should fall back.
    pub fn matched_blocks_all(&self, keys: &[u64], now: Instant, out: &mut [Option<usize>]) {
        self.matched_blocks_given(keys, now, &[], out);
    }

    /// [`KvIndex::matched_blocks_all`] with the stored blocks of the endpoints that `truth`
    /// names taken from it (leading blocks cached there, [`crate::prefix_truth`]) instead of
    /// the events; pending picks count as always.
    pub fn matched_blocks_given(
        &self,
        keys: &[u64],
        now: Instant,
        truth: &[Option<usize>],
        out: &mut [Option<usize>],
    ) {
        let inner = self.lock();
        let truth_at = |e: usize| truth.get(e).copied().flatten();
        for (e, o) in out.iter_mut().enumerate() {
            *o = match truth_at(e) {
                Some(_) => Some(0),
                None => inner
                    .endpoints
                    .get(e)
                    .filter(|ep| ep.is_fresh(now))
                    .map(|_| 0),
            };
        }
        // Without an oracle (every production pick) no endpoint is walked per key for it.
        let told_upto = if truth.iter().any(Option::is_some) {
            out.len()
        } else {
            0
        };
        for (i, k) in keys.iter().enumerate() {
            let told = (0..told_upto).filter(|&e| truth_at(e).is_some_and(|t| t > i));
            let stored = inner
                .blocks
                .get(k)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&e| truth_at(e as usize).is_none())
                .chain(told.map(|e| e as u32));
            let pending = inner
                .pending
                .get(k)
                .into_iter()
                .flatten()
                .filter(|(_, until)| *until > now)
                .map(|(e, _)| *e);
            let mut any = false;
            for e in stored.chain(pending) {
                if let Some(Some(run)) = out.get_mut(e as usize) {
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

    /// What the events did to `endpoint`.
    pub fn status(&self, endpoint: usize, now: Instant) -> Option<KvEndpointStatus> {
        let inner = self.lock();
        let ep = inner.endpoints.get(endpoint)?;
        Some(KvEndpointStatus {
            blocks: ep.by_engine.len(),
            fresh: ep.is_fresh(now),
            ..ep.status
        })
    }
}

impl Endpoint {
    fn is_fresh(&self, now: Instant) -> bool {
        self.connected && self.stale_until.is_none_or(|t| now >= t)
    }
}

impl Inner {
    fn clear(&mut self, endpoint: usize) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        ep.status.resets += 1;
        let keys: Vec<u64> = ep.by_engine.drain().map(|(_, k)| k).collect();
        for k in keys {
            self.drop_holder(k, endpoint as u32);
        }
        let id = endpoint as u32;
        self.pending.retain(|_, holders| {
            holders.retain(|(e, _)| *e != id);
            !holders.is_empty()
        });
    }

    fn drop_pending(&mut self, key: u64, id: u32) {
        if let Some(holders) = self.pending.get_mut(&key) {
            holders.retain(|(e, _)| *e != id);
            if holders.is_empty() {
                self.pending.remove(&key);
            }
        }
    }

    /// Drops expired pending entries, and the oldest beyond [`MAX_PENDING`].
    fn expire_pending(&mut self, now: Instant) {
        while let Some(&(until, key, id)) = self.pending_order.front() {
            if until > now && self.pending_order.len() <= MAX_PENDING {
                break;
            }
            self.pending_order.pop_front();
            // Only if this queue entry is the holder's latest (a re-record moved it on).
            if let Some(holders) = self.pending.get_mut(&key) {
                if let Some(p) = holders.iter().position(|&(e, u)| e == id && u == until) {
                    holders.swap_remove(p);
                }
                if holders.is_empty() {
                    self.pending.remove(&key);
                }
            }
        }
    }

    fn drop_holder(&mut self, key: u64, id: u32) {
        if let Some(holders) = self.blocks.get_mut(&key) {
            if let Some(p) = holders.iter().position(|&e| e == id) {
                holders.swap_remove(p);
            }
            if holders.is_empty() {
                self.blocks.remove(&key);
            }
        }
    }

    fn stored(&mut self, endpoint: usize, s: &BlockStored, block_size: usize) {
        let id = endpoint as u32;
        let ep = &mut self.endpoints[endpoint];
        // A chain continues from its parent's key; an unknown parent (its event was before our
        // time, or lost) leaves nothing to key the chain from. Another block size cannot match
        // requests keyed with ours, offloaded copies are not GPU hits, and LoRA blocks belong to
        // an adapter (requests for adapters are scored approximately).
        let prev = match s.parent_block_hash {
            None => Some(chain_start(0)),
            Some(h) => ep.by_engine.get(&h).copied(),
        };
        let base_model = s.lora_id.is_none() && s.lora_name.is_none();
        let Some(mut prev) = prev
            .filter(|_| s.block_size == block_size && is_gpu(s.medium.as_deref()) && base_model)
        else {
            ep.status.skipped += 1;
            return;
        };
        for (i, &h) in s.block_hashes.iter().enumerate() {
            let Some(block) = s.token_ids.get(i * block_size..(i + 1) * block_size) else {
                break;
            };
            let key = chain(prev, block);
            prev = key;
            self.drop_pending(key, id);
            if let Some(old) = self.endpoints[endpoint].by_engine.insert(h, key) {
                if old == key {
                    continue;
                }
                self.drop_holder(old, id);
            }
            let holders = self.blocks.entry(key).or_default();
            if !holders.contains(&id) {
                holders.push(id);
            }
        }
    }

    fn removed(&mut self, endpoint: usize, hashes: &[EngineHash]) {
        for h in hashes {
            if let Some(key) = self.endpoints[endpoint].by_engine.remove(h) {
                self.drop_holder(key, endpoint as u32);
                self.drop_pending(key, endpoint as u32);
            }
        }
    }
}

#[cfg(test)]
#[path = "kv_index_tests.rs"]
mod tests;
