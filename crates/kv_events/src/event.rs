//! The events a vLLM (or SGLang) engine publishes about its prefix cache, as the gateway keeps
//! them: only what an index needs, whatever shape they arrived in.

/// An engine's name for a block. vLLM sends an integer (older releases, SGLang) or bytes (a
/// SHA-256 digest, newer releases); both fold to 64 bits here. They are seeded per engine
/// process, so they only ever name blocks *of that engine*: the gateway keys its index by its own
/// hashes of the blocks' tokens and uses these only to find what a removal refers to.
pub type EngineHash = u64;

/// Folds a bytes-valued engine hash to an [`EngineHash`] (FNV-1a; the digest is already
/// uniform, so any fold will do).
pub fn engine_hash_of_bytes(bytes: &[u8]) -> EngineHash {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One published message: `[ts, events, data_parallel_rank]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventBatch {
    /// The engine's wall clock when it published, in seconds.
    pub ts: f64,
    pub events: Vec<KvEvent>,
    pub dp_rank: Option<i64>,
    /// Events of a type this decoder does not know, skipped.
    pub unknown: usize,
}

/// One cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    BlockStored(BlockStored),
    BlockRemoved {
        block_hashes: Vec<EngineHash>,
        medium: Option<String>,
    },
    /// The engine dropped its whole prefix cache (`reset_prefix_cache`).
    AllBlocksCleared,
}

/// Blocks that became cached: consecutive blocks of one sequence, the first one following
/// `parent_block_hash` (none for a sequence's first block).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    pub block_hashes: Vec<EngineHash>,
    pub parent_block_hash: Option<EngineHash>,
    /// `block_size` tokens per block, all blocks' tokens in order.
    pub token_ids: Vec<u32>,
    pub block_size: usize,
    pub lora_id: Option<i64>,
    pub lora_name: Option<String>,
    pub medium: Option<String>,
}

/// Whether `medium` is the GPU cache that prefix hits come from (vLLM leaves it unset, or says
/// `GPU`; offloaded copies say `CPU`, `DISK`, ...).
pub fn is_gpu(medium: Option<&str>) -> bool {
    medium.is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
}

/// The two wire shapes. vLLM encoded events as positional arrays tagged by their first element
/// until mid-2026 and as maps tagged by a `type` key since (vllm PR #42892); subscribers that
/// knew one shape broke on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Array,
    Map,
}

impl Shape {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "array" => Some(Self::Array),
            "map" => Some(Self::Map),
            _ => None,
        }
    }
}
