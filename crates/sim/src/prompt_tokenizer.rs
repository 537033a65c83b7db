//! Which tokenizer turns a prompt into token ids: the simulator's stand-in
//! ([`crate::tokenizer`]), or a Hugging Face `tokenizer.json` read from a local file.
//!
//! A gateway that keys KV blocks from an engine's events must tokenize a prompt exactly as that
//! engine does, or no block it computes will ever match one the engine stored (issue 18). vLLM
//! tokenizes a completions prompt with the model's `tokenizer.json` and special tokens added
//! (BOS for Llama-style models), so [`PromptTokenizer::encode`] does the same; a chat request it
//! renders with the model's chat template (`tokenizer_config.json` beside the tokenizer file,
//! [`crate::chat_template`]) and tokenizes without adding special tokens, as
//! [`PromptTokenizer::encode_chat`] does. The simulator
//! takes the same file (`tokenizer:` in its fleet config), so tests and benchmarks can run a
//! fleet that tokenizes as a real model's engines would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chat_template::ChatTemplate;

/// Largest `tokenizer.json` read: Llama 3's is 9 MB, Qwen's 7 MB; the bound keeps a wrong path
/// (a model's weights) from being read into memory.
pub const MAX_TOKENIZER_FILE: u64 = 64 << 20;

/// A prompt tokenizer; cheap to clone.
#[derive(Clone, Default)]
pub enum PromptTokenizer {
    /// The simulator's deterministic stand-in.
    #[default]
    Sim,
    /// A model's Hugging Face tokenizer.
    HuggingFace(Arc<HfTokenizer>),
}

/// A model's `tokenizer.json`, its chat template when it has one, and the file it came from.
pub struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    path: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sim => f.write_str("sim"),
            Self::HuggingFace(hf) => write!(f, "huggingface:{}", hf.path.display()),
        }
    }
}

impl PromptTokenizer {
    /// Reads a `tokenizer.json`, and the chat template of the `tokenizer_config.json` beside it
    /// if there is one (a model directory's layout). Truncation and padding set in the file are
    /// turned off: an engine keys every token of a prompt, and a truncated prompt would key
    /// fewer blocks.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let bytes = read_bounded(path).map_err(|e| format!("tokenizer {shown}: {e}"))?;
        let mut tk = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("tokenizer {shown}: not a Hugging Face tokenizer.json: {e}"))?;
        tk.with_truncation(None)
            .map_err(|e| format!("tokenizer {shown}: {e}"))?;
        tk.with_padding(None);
        let config = path.with_file_name("tokenizer_config.json");
        let chat = match read_bounded(&config) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", config.display())),
            Ok(bytes) => {
                let json: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", config.display()))?;
                ChatTemplate::from_tokenizer_config(&json)
                    .map_err(|e| format!("{}: {e}", config.display()))?
            }
        };
        Ok(Self::HuggingFace(Arc::new(HfTokenizer {
            tokenizer: tk,
            chat,
            path: path.to_path_buf(),
        })))
    }

    /// The `tokenizer.json` it was read from.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Sim => None,
            Self::HuggingFace(hf) => Some(&hf.path),
        }
    }

    /// Token ids of a chat conversation as the engine computes them: the chat template
    /// rendered ([`Self::render_chat`]), then tokenized without special tokens added (they are
    /// in the template). `None` when there is no model chat template; an error when the
    /// template refuses the conversation.
    pub fn encode_chat(&self, messages: &[(String, String)]) -> Option<Result<Vec<u32>, String>> {
        Some(self.render_chat(messages)?.and_then(|text| {
            self.encode_rendered(&text)
                .ok_or_else(|| "tokenizer: the rendered conversation".to_string())
        }))
    }

    /// The conversation as the model's chat template renders it; `None` when there is no
    /// model chat template (the simulator's, or a model without `tokenizer_config.json`).
    pub fn render_chat(&self, messages: &[(String, String)]) -> Option<Result<String, String>> {
        let Self::HuggingFace(hf) = self else {
            return None;
        };
        Some(hf.chat.as_ref()?.render(messages))
    }

    /// Token ids of text a chat template rendered: no special tokens added.
    pub fn encode_rendered(&self, text: &str) -> Option<Vec<u32>> {
        match self {
            Self::Sim => Some(crate::tokenizer::tokenize(text)),
            Self::HuggingFace(hf) => hf
                .tokenizer
                .encode_fast(text, false)
                .ok()
                .map(|e| e.get_ids().to_vec()),
        }
    }

    /// Token ids of a completions prompt, as the engine computes them; `None` when the
    /// tokenizer refuses the text (the caller falls back to whatever it does without tokens).
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        match self {
            Self::Sim => Some(crate::tokenizer::tokenize(text)),
            Self::HuggingFace(hf) => hf
                .tokenizer
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

/// A file of at most [`MAX_TOKENIZER_FILE`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TOKENIZER_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TOKENIZER_FILE {
        return Err(std::io::Error::other(format!(
            "more than the {MAX_TOKENIZER_FILE} bytes a tokenizer file may have"
        )));
    }
    Ok(bytes)
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
