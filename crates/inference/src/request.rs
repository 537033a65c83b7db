//! OpenAI request understanding: what an inference router needs from a request body, read once.
//!
//! A model-aware router has to look inside the body: the `model` picks the pool (and, because vLLM
//! serves LoRA adapters under their own model names, the adapter), the prompt text drives
//! prefix-cache affinity, and `max_tokens` bounds the work. The Gateway API Inference Extension's
//! endpoint picker (EPP) and the llm-d scheduler parse the same fields for the same reasons. We
//! parse with `serde_json` into a struct that keeps only those fields (everything else is skipped,
//! not built), and walk the three variable-shape fields (`prompt`, `messages`, `input`) by hand
//! ([`crate::prompt_walk`]), straight from the body into the prompt text, so that a body costs at
//! most its own size again whatever its shape, and an error can say exactly which field is wrong.
//!
//! No tokenizer is loaded. [`estimate_tokens`] and [`prompt_block_hashes`] approximate tokens
//! as 4-character units, which is close to BPE tokenizers on English text and, more importantly,
//! deterministic: two prompts with the same leading text always produce the same leading block
//! hashes, which is all prefix affinity needs.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::prompt_walk::{line_column, too_deep, PromptWalk, MAX_DEPTH};

/// Which OpenAI API a request targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/completions`
    Completions,
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/embeddings`
    Embeddings,
}

impl ApiKind {
    /// The API for a request path (query string ignored), or `None` for other paths.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        match path.trim_end_matches('/') {
            "/v1/completions" => Some(Self::Completions),
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }
}

/// The routing-relevant view of one OpenAI request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub kind: ApiKind,
    /// The requested model; with vLLM this may name a LoRA adapter.
    pub model: String,
    /// An explicit `lora` field, when the client sent one.
    pub lora: Option<String>,
    /// The prompt text: completions `prompt` strings joined by newlines, chat messages rendered as
    /// `role\ncontent\n` each, embeddings `input` strings joined by newlines. Token-id prompts
    /// contribute nothing (their length still counts in `prompt_tokens`).
    pub prompt: String,
    /// Estimated prompt tokens ([`estimate_tokens`] on `prompt`, or the id count for token prompts).
    pub prompt_tokens: u32,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub user: Option<String>,
    /// Chat messages (0 for other APIs): each adds its chat template's tokens on the server.
    pub messages: u32,
    /// The prompt's KV block keys as the pool's engines compute them, when the gateway keyed
    /// them before the pick, off the event loop ([`crate::KvIndex::costly_keys`]); `None`: the
    /// pick keys the prompt itself if it needs to.
    pub engine_keys: Option<Vec<u64>>,
}

impl InferenceRequest {
    /// The LoRA adapter this request needs: the explicit `lora` field, else the model name when
    /// `is_base_model` says it is not a base model (vLLM names adapters as models).
    pub fn adapter(&self, is_base_model: impl Fn(&str) -> bool) -> Option<&str> {
        match &self.lora {
            Some(lora) => Some(lora),
            None if !is_base_model(&self.model) => Some(&self.model),
            None => None,
        }
    }
}

impl InferenceRequest {
    /// Estimated total tokens for load accounting: prompt plus `max_tokens`, or plus
    /// `default_output` when the client set no limit.
    pub fn est_tokens(&self, default_output: u32) -> u32 {
        self.prompt_tokens
            .saturating_add(self.max_tokens.unwrap_or(default_output))
    }

    /// The prompt's prefix block hashes ([`prompt_block_hashes_seeded`]), seeded with the model
    /// and any explicit adapter, so different models and adapters never share blocks (vLLM seeds
    /// its chain with the LoRA adapter for the same reason).
    pub fn block_hashes(&self, block_tokens: usize) -> Vec<u64> {
        let mut seed = seed_for(&self.model);
        if let Some(lora) = &self.lora {
            seed ^= seed_for(lora).rotate_left(1);
        }
        prompt_block_hashes_seeded(seed, &self.prompt, block_tokens)
    }
}

/// Why a body could not be understood. Every variant is the client's fault (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The path is not one of the three OpenAI APIs this module reads.
    UnsupportedPath(String),
    /// The body is not JSON (or not a JSON object).
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    /// A required field is absent.
    MissingField(&'static str),
    /// A field has the wrong type or value; `field` is its path (`messages[2].content`).
    InvalidField { field: String, message: String },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedPath(p) => write!(f, "unsupported path {p}"),
            Self::InvalidJson {
                line,
                column,
                message,
            } => write!(f, "invalid JSON at line {line} column {column}: {message}"),
            Self::MissingField(name) => write!(f, "missing field {name}"),
            Self::InvalidField { field, message } => write!(f, "invalid field {field}: {message}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    /// The HTTP status to answer with (always 400; a body over the size limit is the caller's 413).
    pub fn status(&self) -> u16 {
        400
    }

    /// The field the error is about, for OpenAI's `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::MissingField(f) => Some(f),
            Self::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// An OpenAI-style error body: `{"error":{"message","type","param","code"}}`.
    pub fn to_openai_json(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": "invalid_request_error",
                "param": self.param(),
                "code": null,
            }
        })
        .to_string()
    }
}

/// The fields we read; serde skips the rest without building them. The variable-shape and
/// free-text fields are kept as borrowed raw JSON (slices of the body) and read by
/// [`PromptWalk`], so no field of any size or shape is built as a tree or copied twice.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    model: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    input: Option<&'a RawValue>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream: Option<bool>,
    #[serde(borrow, default, deserialize_with = "string_or_null")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "string_or_null")]
    lora: Option<&'a RawValue>,
}

/// Any value; `null` is `None`, as for an absent field.
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    let raw = <&RawValue>::deserialize(d)?;
    Ok((raw.get() != "null").then_some(raw))
}

/// A string (`null` is `None`), failing as `Option<String>` would on anything else.
fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    let raw = <&RawValue>::deserialize(d)?;
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(Some(raw)),
        Some(b'n') => Ok(None),
        _ => match String::deserialize(raw) {
            Err(e) => Err(de::Error::custom(strip_position(&e))),
            Ok(_) => Err(de::Error::custom("expected a string")),
        },
    }
}

/// Bodies larger than this are better parsed off an async worker (on a blocking pool): parsing
/// costs 2–8 ms per MiB (docs/benchmarks.md), and a worker parsing 16 MiB inline would hold up
/// every other request on it for ~100 ms. The gateway and `switchyard epp` both go by it.
pub const INLINE_PARSE_BYTES: usize = 256 * 1024;

/// Parse an OpenAI request body for `path`.
pub fn parse_openai(path: &str, body: &[u8]) -> Result<InferenceRequest, RequestError> {
    let kind =
        ApiKind::from_path(path).ok_or_else(|| RequestError::UnsupportedPath(path.to_string()))?;
    if let Some(i) = body.iter().position(|b| !b.is_ascii_whitespace()) {
        if body[i] != b'{' {
            let (line, column) = line_column(body, i);
            return Err(RequestError::InvalidJson {
                line,
                column,
                message: "expected a JSON object".into(),
            });
        }
    }
    if let Some(i) = too_deep(body, MAX_DEPTH) {
        let (line, column) = line_column(body, i);
        return Err(RequestError::InvalidJson {
            line,
            column,
            message: "recursion limit exceeded".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Body<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && field != "." {
            RequestError::InvalidField {
                field,
                message: strip_position(&inner),
            }
        } else {
            RequestError::InvalidJson {
                line: inner.line(),
                column: inner.column(),
                message: strip_position(&inner),
            }
        }
    })?;
    de.end().map_err(|e| RequestError::InvalidJson {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e),
    })?;
    // Its scratch buffer (escaped keys) is no longer needed while we walk.
    drop(de);

    let mut walk = PromptWalk::new(body);
    let model = match parsed.model {
        None => return Err(RequestError::MissingField("model")),
        Some(m) if m.get().starts_with('"') && m.get() != "\"\"" => walk.owned_str(m)?,
        Some(_) => return Err(invalid("model", "expected a non-empty string")),
    };
    let user = parsed.user.map(|u| walk.owned_str(u)).transpose()?;
    let lora = parsed.lora.map(|l| walk.owned_str(l)).transpose()?;
    match kind {
        ApiKind::Completions => {
            let v = parsed.prompt.ok_or(RequestError::MissingField("prompt"))?;
            walk.text_input(v, "prompt")?;
        }
        ApiKind::Embeddings => {
            let v = parsed.input.ok_or(RequestError::MissingField("input"))?;
            walk.text_input(v, "input")?;
        }
        ApiKind::ChatCompletions => {
            let v = parsed
                .messages
                .ok_or(RequestError::MissingField("messages"))?;
            walk.chat_messages(v)?;
        }
    }
    let prompt = walk.prompt;
    let prompt_tokens =
        estimate_tokens(&prompt).saturating_add(u32::try_from(walk.token_ids).unwrap_or(u32::MAX));
    Ok(InferenceRequest {
        kind,
        model,
        lora,
        prompt,
        prompt_tokens,
        max_tokens: parsed.max_completion_tokens.or(parsed.max_tokens),
        stream: parsed.stream.unwrap_or(false),
        user,
        messages: u32::try_from(walk.messages).unwrap_or(u32::MAX),
        engine_keys: None,
    })
}

fn invalid(field: &str, message: &str) -> RequestError {
    RequestError::InvalidField {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// serde_json appends " at line L column C"; we report position separately.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Characters per approximate token. BPE tokenizers for English average about four.
pub const CHARS_PER_TOKEN: usize = 4;

/// Estimated tokens in `text`: characters / 4, rounded up. An approximation for load accounting
/// and block counting, not a tokenizer; it over-counts code and under-counts CJK text.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(CHARS_PER_TOKEN)).unwrap_or(u32::MAX)
}

/// Block hashes of `prompt`, seeded with 0. See [`prompt_block_hashes_seeded`].
pub fn prompt_block_hashes(prompt: &str, block_tokens: usize) -> Vec<u64> {
    prompt_block_hashes_seeded(0, prompt, block_tokens)
}

/// A hash chain over the full blocks of `prompt`, like vLLM's automatic prefix caching: a block is
/// `block_tokens` approximate tokens of 4 bytes each (so `4 × block_tokens` bytes; a trailing
/// partial block is not hashed, as vLLM only caches full blocks), and block *i*'s hash folds in
/// block *i−1*'s, so a hash names its whole prefix. Two prompts therefore share exactly the hashes
/// of the full blocks inside their common byte prefix. Bytes rather than characters keep this
/// fast and allocation-free per block; for non-ASCII text a "token" is then fewer characters.
/// `seed` separates models and adapters (vLLM seeds the chain with the LoRA adapter).
pub fn prompt_block_hashes_seeded(seed: u64, prompt: &str, block_tokens: usize) -> Vec<u64> {
    let block_bytes = block_tokens.max(1) * CHARS_PER_TOKEN;
    let mut prev = mix(seed ^ 0x5157_4954_4348_5944, block_bytes as u64);
    prompt
        .as_bytes()
        .chunks_exact(block_bytes)
        .map(|block| {
            prev = hash_block(prev, block);
            prev
        })
        .collect()
}

/// A seed for [`prompt_block_hashes_seeded`] from a model or adapter name.
pub fn seed_for(name: &str) -> u64 {
    hash_block(0x243F_6A88_85A3_08D3, name.as_bytes())
}

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31)
}

/// Word-at-a-time multiply-rotate over the block, then the murmur3 finalizer.
fn hash_block(prev: u64, block: &[u8]) -> u64 {
    let mut h = mix(prev, block.len() as u64);
    let mut words = block.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(b) ^ 0xFF);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
