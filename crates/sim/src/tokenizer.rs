//! A deterministic stand-in for a BPE tokenizer.
//!
//! The simulator never runs a model, but two things about tokens matter to a router: how many there
//! are (cost, usage, metrics) and whether two prompts share a token *prefix* (prefix caching). A
//! real tokenizer is a large download; this approximation keeps both properties without one:
//!
//! * text splits into word pieces: runs of letters/digits, and each other non-space character on
//!   its own; whitespace only separates pieces (as BPE folds the leading space into the next word);
//! * a piece longer than 4 characters is cut into 4-character chunks, giving the familiar "about 4
//!   characters per token" rate on long words;
//! * each chunk's token id is an FNV-1a hash of its text (plus a flag for "starts after a space"),
//!   reduced to a 128k vocabulary like Llama 3's.
//!
//! The same text therefore always yields the same ids, and texts sharing a leading part share the
//! leading ids, so their KV blocks hash the same.
//!
//! Generated text comes from [`generated_word`]: one word of a fixed vocabulary per token, chosen by
//! a hash of the request seed and the token index, so a client can count tokens by counting words.

/// Vocabulary size the ids are reduced to (Llama 3 has 128,256 tokens).
pub const VOCAB_SIZE: u32 = 128_000;

const MAX_CHUNK_CHARS: usize = 4;

/// FNV-1a over bytes; small, fast and stable across runs and platforms.
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Mixes a 64-bit value (splitmix64 finaliser); used to derive per-token choices from a seed.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn piece_id(piece: &str, after_space: bool) -> u32 {
    (fnv1a(piece.as_bytes(), u64::from(after_space)) % u64::from(VOCAB_SIZE)) as u32
}

/// Appends the token ids of `text` to `out`.
pub fn tokenize_into(text: &str, out: &mut Vec<u32>) {
    let mut after_space = false;
    let mut word_start: Option<usize> = None;
    let flush = |start: usize, end: usize, after_space: bool, out: &mut Vec<u32>| {
        let word = &text[start..end];
        let mut chars = word.char_indices().peekable();
        let mut first = true;
        while let Some(&(s, _)) = chars.peek() {
            let mut e = word.len();
            for _ in 0..MAX_CHUNK_CHARS {
                match chars.next() {
                    Some(_) => e = chars.peek().map_or(word.len(), |&(i, _)| i),
                    None => break,
                }
            }
            out.push(piece_id(&word[s..e], first && after_space));
            first = false;
        }
    };
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            if word_start.is_none() {
                word_start = Some(i);
            }
            continue;
        }
        if let Some(s) = word_start.take() {
            flush(s, i, after_space, out);
            after_space = false;
        }
        if c.is_whitespace() {
            after_space = true;
        } else {
            let end = i + c.len_utf8();
            out.push(piece_id(&text[i..end], after_space));
            after_space = false;
        }
    }
    if let Some(s) = word_start {
        flush(s, text.len(), after_space, out);
    }
}

/// Token ids of `text`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    tokenize_into(text, &mut out);
    out
}

/// Fixed ids for chat-template markers, outside the hashed range so they never collide with text.
pub mod special {
    /// Start of a message header (Llama 3: `<|start_header_id|>`).
    pub const START_HEADER: u32 = super::VOCAB_SIZE;
    /// End of a message header.
    pub const END_HEADER: u32 = super::VOCAB_SIZE + 1;
    /// End of a turn (`<|eot_id|>`).
    pub const END_OF_TURN: u32 = super::VOCAB_SIZE + 2;
    /// Beginning of text.
    pub const BEGIN_OF_TEXT: u32 = super::VOCAB_SIZE + 3;
}

/// Tokenizes a chat conversation with a Llama-3-like template: begin-of-text, then per message
/// `<header> role </header> content <eot>`, then an open assistant header for the reply.
pub fn tokenize_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut out = vec![special::BEGIN_OF_TEXT];
    for (role, content) in messages {
        out.push(special::START_HEADER);
        tokenize_into(role, &mut out);
        out.push(special::END_HEADER);
        tokenize_into(content, &mut out);
        out.push(special::END_OF_TURN);
    }
    out.push(special::START_HEADER);
    tokenize_into("assistant", &mut out);
    out.push(special::END_HEADER);
    out
}

/// Words generated text is drawn from: short, common, ASCII, needing no JSON escaping.
const WORDS: [&str; 64] = [
    "the", "model", "server", "request", "token", "batch", "cache", "prefix", "route", "queue",
    "latency", "through", "simple", "answer", "because", "which", "their", "would", "there",
    "could", "other", "about", "many", "then", "them", "these", "some", "time", "into", "more",
    "first", "water", "been", "call", "who", "now", "find", "long", "down", "day", "did", "get",
    "come", "made", "may", "part", "over", "new", "sound", "take", "only", "little", "work",
    "know", "place", "year", "live", "back", "give", "most", "very", "after", "thing", "just",
];

/// The `index`-th generated word of the request with `seed`, with its leading space (none for the
/// first word). One word is one token.
pub fn generated_word(seed: u64, index: u32) -> (&'static str, &'static str) {
    let w = WORDS[(mix64(seed ^ (u64::from(index) << 32)) % WORDS.len() as u64) as usize];
    (if index == 0 { "" } else { " " }, w)
}

/// The full generated text of `count` tokens for `seed`.
pub fn generated_text(seed: u64, count: u32) -> String {
    let mut s = String::with_capacity(count as usize * 6);
    for i in 0..count {
        let (sep, w) = generated_word(seed, i);
        s.push_str(sep);
        s.push_str(w);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_prefix_preserving() {
        let a = tokenize("You are a helpful assistant. Tell me about routing.");
        let b = tokenize("You are a helpful assistant. Tell me about caching!");
        assert_eq!(
            a,
            tokenize("You are a helpful assistant. Tell me about routing.")
        );
        assert_eq!(a[..8], b[..8]);
        assert_ne!(a, b);
    }

    #[test]
    fn long_words_cost_about_four_chars_per_token() {
        assert_eq!(tokenize("internationalization").len(), 5);
        assert_eq!(tokenize("a b, c").len(), 4);
        assert_eq!(tokenize("").len(), 0);
        assert_eq!(tokenize("héllo wörld").len(), 4);
    }

    #[test]
    fn generated_text_has_one_word_per_token() {
        let t = generated_text(7, 25);
        assert_eq!(t.split_whitespace().count(), 25);
        assert_eq!(t, generated_text(7, 25));
        assert_ne!(t, generated_text(8, 25));
    }

    #[test]
    fn chat_shares_system_prompt_prefix() {
        let a = tokenize_chat([("system", "be brief"), ("user", "hi there")]);
        let b = tokenize_chat([("system", "be brief"), ("user", "what now")]);
        assert_eq!(a[..6], b[..6]);
    }
}
