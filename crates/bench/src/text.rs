//! Deterministic prompt text.
//!
//! Servers tokenize what we send, so a "512-token prompt" must be real text that tokenizes to
//! roughly 512 tokens: common short English words are about one token each in the tokenizers of
//! current open models. Random token ids or repeated characters would either be rejected or
//! tokenize very differently (and a repeated string hits the prefix cache, which would flatter
//! the server). Words are drawn from a seeded RNG so runs are reproducible.

/// Common English words that are single tokens in the GPT/Llama/Qwen tokenizers.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "but",
    "who",
    "not",
    "they",
    "have",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "also",
    "people",
    "three",
    "name",
    "film",
    "team",
    "game",
    "water",
    "river",
    "house",
    "music",
    "north",
    "south",
    "east",
    "west",
    "light",
    "small",
    "large",
    "number",
    "system",
    "part",
    "work",
    "life",
    "group",
    "line",
    "power",
    "book",
    "war",
    "party",
    "place",
    "home",
    "road",
    "year",
    "day",
    "night",
    "data",
    "model",
    "paper",
    "field",
    "market",
    "story",
    "family",
    "energy",
    "table",
    "window",
    "garden",
    "summer",
    "winter",
    "station",
    "bridge",
    "island",
    "forest",
    "mountain",
    "village",
    "history",
    "science",
    "language",
    "question",
    "answer",
    "reason",
    "result",
    "change",
    "figure",
    "level",
    "office",
    "letter",
    "plant",
];

/// Appends `n` space-separated words to `out`.
pub fn append_words(out: &mut String, rng: &mut fastrand::Rng, n: u32) {
    out.reserve(n as usize * 6);
    for i in 0..n {
        if i > 0 || !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
}

/// Returns `n` space-separated words, i.e. text of roughly `n` tokens.
pub fn words(rng: &mut fastrand::Rng, n: u32) -> String {
    let mut s = String::new();
    append_words(&mut s, rng, n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_count_and_determinism() {
        let a = words(&mut fastrand::Rng::with_seed(5), 300);
        let b = words(&mut fastrand::Rng::with_seed(5), 300);
        assert_eq!(a, b);
        assert_eq!(a.split(' ').count(), 300);
        assert_ne!(a, words(&mut fastrand::Rng::with_seed(6), 300));
        assert_eq!(words(&mut fastrand::Rng::with_seed(5), 0), "");
    }
}
