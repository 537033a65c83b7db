//! Which tokenizer turns a prompt into token ids: the simulator's stand-in
//! ([`crate::tokenizer`]), or a Hugging Face `tokenizer.json` read from a local file.
//!
//! A gateway that keys KV blocks from an engine's events must tokenize a prompt exactly as that
//! engine does, or no block it computes will ever match one the engine stored (issue 18). vLLM
//! tokenizes a completions prompt with the model's `tokenizer.json` and special tokens added
//! (BOS for Llama-style models), so [`PromptTokenizer::encode`] does the same. The simulator
//! takes the same file (`tokenizer:` in its fleet config), so tests and benchmarks can run a
//! fleet that tokenizes as a real model's engines would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest `tokenizer.json` read: Llama 3's is 9 MB, Qwen's 7 MB; the bound keeps a wrong path
/// (a model's weights) from being read into memory.
pub const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// A prompt tokenizer; cheap to clone.
#[derive(Clone, Default)]
pub enum PromptTokenizer {
    /// The simulator's deterministic stand-in.
    #[default]
    Sim,
    /// A Hugging Face tokenizer, and the file it came from (for messages).
    HuggingFace(Arc<tokenizers::Tokenizer>, Arc<PathBuf>),
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sim => f.write_str("sim"),
            Self::HuggingFace(_, path) => write!(f, "huggingface:{}", path.display()),
        }
    }
}

impl PromptTokenizer {
    /// Reads a `tokenizer.json`. Truncation and padding set in the file are turned off: an
    /// engine keys every token of a prompt, and a truncated prompt would key fewer blocks.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("tokenizer {shown}: {e}"))?
            .len();
        if len > MAX_TOKENIZER_FILE {
            return Err(format!(
                "tokenizer {shown}: {len} bytes, more than the {MAX_TOKENIZER_FILE} a tokenizer.json may have"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("tokenizer {shown}: {e}"))?;
        let mut tk = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("tokenizer {shown}: not a Hugging Face tokenizer.json: {e}"))?;
        tk.with_truncation(None)
            .map_err(|e| format!("tokenizer {shown}: {e}"))?;
        tk.with_padding(None);
        Ok(Self::HuggingFace(
            Arc::new(tk),
            Arc::new(path.to_path_buf()),
        ))
    }

    /// Token ids of a completions prompt, as the engine computes them; `None` when the
    /// tokenizer refuses the text (the caller falls back to whatever it does without tokens).
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        match self {
            Self::Sim => Some(crate::tokenizer::tokenize(text)),
            Self::HuggingFace(tk, _) => tk
                .encode_fast(text, true)
                .ok()
                .map(|e| e.get_ids().to_vec()),
        }
    }

    /// Whether this is the simulator's stand-in.
    pub fn is_sim(&self) -> bool {
        matches!(self, Self::Sim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_matches_the_stand_in() {
        let t = PromptTokenizer::Sim;
        assert_eq!(
            t.encode("hello world, again").unwrap(),
            crate::tokenizer::tokenize("hello world, again")
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sy-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.json");
        let e = PromptTokenizer::load(&missing).unwrap_err();
        assert!(e.contains("missing.json"), "{e}");
        let junk = dir.join("junk.json");
        std::fs::write(&junk, b"{\"not\": \"a tokenizer\"}").unwrap();
        let e = PromptTokenizer::load(&junk).unwrap_err();
        assert!(e.contains("not a Hugging Face tokenizer.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
