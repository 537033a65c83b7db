//! Usage accounting from responses, as they pass: the OpenAI `usage` object (prompt and
//! completion tokens) of a JSON response or of the last chunk of an SSE stream, and, for
//! streams without `usage`, a count of the events that carry generated text.
//!
//! The proxy never holds a response to account for it. OpenAI, vLLM, SGLang and TGI's OpenAI
//! API all write `usage` at the end of the document (and in the last data event of a stream with
//! `stream_options.include_usage`), so [`UsageTail`] keeps only the last
//! [`USAGE_TAIL_BYTES`] of the body and looks for the last `"usage": {...}` in them when the body
//! ends. A response whose `usage` sits earlier than that is not counted.

use std::collections::VecDeque;

use serde::Deserialize;

/// How much of a response's end is kept to find `usage` in.
pub const USAGE_TAIL_BYTES: usize = 64 * 1024;

/// Token counts of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    /// Absent in embeddings responses.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The last bytes of a response body, bounded.
#[derive(Debug)]
pub struct UsageTail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Default for UsageTail {
    fn default() -> Self {
        Self::new(USAGE_TAIL_BYTES)
    }
}

impl UsageTail {
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            cap,
        }
    }

    /// Keep `chunk`, dropping the oldest bytes beyond the cap.
    pub fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.cap)..];
        let over = (self.buf.len() + chunk.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.buf.extend(chunk);
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The usage reported in the kept tail.
    pub fn usage(&mut self) -> Option<Usage> {
        find_usage(self.buf.make_contiguous())
    }
}

/// `usage` read from a server-sent event stream line by line as it passes, keeping only the
/// unfinished last line between chunks.
///
/// A stream's `usage` is one `data:` line (compact JSON, the last event before `[DONE]`), so
/// nothing before the current line needs keeping. A [`UsageTail`] kept up to
/// [`USAGE_TAIL_BYTES`] of every stream for its whole life: 64 KiB per long token stream, most
/// of a gateway's memory at 10k streams (issue 19). Between events this holds nothing.
#[derive(Debug, Default)]
pub struct UsageLines {
    partial: Vec<u8>,
    /// The unfinished line outgrew the bound: skip to the next line break.
    skipping: bool,
    found: Option<Usage>,
}

impl UsageLines {
    /// Longest line read for `usage`.
    const MAX_LINE: usize = USAGE_TAIL_BYTES;

    pub fn push(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() && !self.skipping {
                self.line(&rest[..i]);
            } else {
                if !self.skipping {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&rest[..i]);
                    self.line(&line);
                }
                self.partial = Vec::new();
                self.skipping = false;
            }
            rest = &rest[i + 1..];
        }
        if rest.is_empty() || self.skipping {
            return;
        }
        if self.partial.len() + rest.len() > Self::MAX_LINE {
            self.partial = Vec::new();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        if let Some(u) = find_usage(line) {
            self.found = Some(u);
        }
    }

    /// The last usage the stream reported.
    pub fn usage(&self) -> Option<Usage> {
        self.found
    }

    /// Bytes held between chunks.
    pub fn held(&self) -> usize {
        self.partial.capacity()
    }
}

/// The last `"usage": {...}` object in `text` that has token counts. Keys inside JSON strings
/// (escaped quotes) are skipped; `"usage": null` (OpenAI's streamed chunks before the last) is
/// passed over for an earlier one.
pub fn find_usage(text: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = text.len();
    for _ in 0..8 {
        let at = text[..end].windows(KEY.len()).rposition(|w| w == KEY)?;
        end = at;
        let escaped = text[..at].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1;
        if escaped {
            continue;
        }
        let rest = text[at + KEY.len()..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        if !rest.starts_with(b"{") {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(rest);
        if let Ok(u) = Usage::deserialize(&mut de) {
            return Some(u);
        }
    }
    None
}

/// Server-sent events in `chunk` that carry generated text: a non-empty `"content"` (chat) or
/// `"text"` (completions) string. One such event is one token in vLLM's and OpenAI's streams
/// (engines that batch several tokens per event are undercounted); the role-only opening chunk,
/// the `finish_reason` chunk, the `usage` chunk and `[DONE]` are not counted.
pub fn token_events(chunk: &[u8]) -> u64 {
    chunk
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"data:"))
        .filter(|line| has_text(line, b"\"content\"") || has_text(line, b"\"text\""))
        .count() as u64
}

/// [`token_events`] over a stream whose chunks may split an event anywhere: the unfinished last
/// line of a chunk is kept (bounded) and counted when the next chunk completes it, so an event cut
/// in two by a TCP read is counted once, not lost.
#[derive(Debug, Default)]
pub struct TokenEvents {
    partial: Vec<u8>,
    /// The unfinished line outgrew the bound: skip to the next line break.
    skipping: bool,
}

impl TokenEvents {
    /// Longest unfinished line kept; a longer one is not a token event worth counting.
    const MAX_LINE: usize = 16 * 1024;

    /// Text-carrying events completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> u64 {
        let Some(first_break) = chunk.iter().position(|&b| b == b'\n') else {
            self.keep(chunk);
            return 0;
        };
        let mut count = 0;
        if !self.partial.is_empty() || self.skipping {
            if !self.skipping {
                self.partial.extend_from_slice(&chunk[..first_break]);
                count += token_events(&self.partial);
            }
            // Let the allocation go: a stream holds nothing between whole events.
            self.partial = Vec::new();
            self.skipping = false;
        } else {
            count += token_events(&chunk[..first_break]);
        }
        let rest = &chunk[first_break + 1..];
        let last_break = rest.iter().rposition(|&b| b == b'\n');
        let (complete, tail) = match last_break {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&rest[..0], rest),
        };
        count += token_events(complete);
        self.keep(tail);
        count
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > Self::MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

/// Whether `line` has `key` followed by `:` and a non-empty string.
fn has_text(line: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(pos) = line[from..].windows(key.len()).position(|w| w == key) {
        let after = &line[from + pos + key.len()..];
        let after = after.trim_ascii_start();
        if let Some(v) = after.strip_prefix(b":") {
            let v = v.trim_ascii_start();
            if v.len() >= 2 && v[0] == b'"' && v[1] != b'"' {
                return true;
            }
        }
        from += pos + key.len();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_events_split_anywhere_are_counted_once() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(token_events(stream), 2);
        for cut in 0..stream.len() {
            for cut2 in cut..stream.len() {
                let mut t = TokenEvents::default();
                let n =
                    t.push(&stream[..cut]) + t.push(&stream[cut..cut2]) + t.push(&stream[cut2..]);
                assert_eq!(n, 2, "cut at {cut} and {cut2}");
            }
        }
        // An endless line is dropped, bounded, and counting resumes after it.
        let mut t = TokenEvents::default();
        for _ in 0..10 {
            assert_eq!(t.push(&[b'x'; 4096]), 0);
        }
        assert!(t.partial.len() <= TokenEvents::MAX_LINE);
        assert_eq!(t.push(b"\ndata: {\"text\":\"z\"}\n"), 1);
    }

    #[test]
    fn finds_usage_at_the_end_of_a_json_response() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;
        assert_eq!(
            find_usage(body),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 7
            })
        );
        // Embeddings: no completion tokens.
        assert_eq!(
            find_usage(br#"{"data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 0
            })
        );
        // Only the escaped key inside a string: nothing.
        assert_eq!(
            find_usage(br#"{"content":"\"usage\": {\"prompt_tokens\": 99}"}"#),
            None
        );
        assert_eq!(find_usage(br#"{"usage": null}"#), None);
        assert_eq!(find_usage(b"not json at all"), None);
    }

    #[test]
    fn last_usage_of_a_stream_wins_over_nulls_and_running_counts() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            find_usage(stream),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn tail_is_bounded_and_finds_usage_split_across_chunks() {
        let mut tail = UsageTail::new(64);
        tail.push(&[b'x'; 1000]);
        assert_eq!(tail.len(), 64);
        let end = br#"],"usage":{"prompt_tokens":4,"completion_tokens":9}}"#;
        for part in end.chunks(5) {
            tail.push(part);
            assert!(tail.len() <= 64);
        }
        assert_eq!(
            tail.usage(),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 9
            })
        );
        // A usage object that scrolled out of the tail is not found.
        let mut tail = UsageTail::new(16);
        tail.push(end);
        tail.push(&[b' '; 16]);
        assert_eq!(tail.usage(), None);
    }

    #[test]
    fn counts_events_with_generated_text() {
        let chat = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\": \" there\"}}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(token_events(chat), 2);
        let completion = b"data: {\"choices\":[{\"text\":\" a\",\"index\":0}]}\n\ndata: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(token_events(completion), 1);
        assert_eq!(token_events(b": keep-alive\n\n"), 0);
    }

    #[test]
    fn stream_usage_line_by_line_holds_nothing_between_events() {
        let mut u = UsageLines::default();
        let stream: &[u8] =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":4}}\n\n\
            data: [DONE]\n\n";
        // Every split point: the event cut by a read is still read whole.
        for cut in 0..stream.len() {
            let mut u2 = UsageLines::default();
            u2.push(&stream[..cut]);
            u2.push(&stream[cut..]);
            let got = u2.usage().map(|u| (u.prompt_tokens, u.completion_tokens));
            assert_eq!(got, Some((7, 4)), "cut at {cut}");
            assert_eq!(u2.held(), 0);
        }
        u.push(&stream[..40]);
        assert!(u.held() > 0);
        u.push(&stream[40..]);
        assert_eq!(u.held(), 0);
    }

    #[test]
    fn stream_usage_line_is_bounded() {
        let mut u = UsageLines::default();
        u.push(b"data: {\"x\":\"");
        for _ in 0..100 {
            u.push(&[b'a'; 4096]);
            // The line's length is bounded; its allocation grows by doubling up to twice that.
            assert!(u.held() <= 2 * USAGE_TAIL_BYTES);
        }
        u.push(b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        assert_eq!(u.usage().map(|u| u.completion_tokens), Some(2));
        assert_eq!(u.held(), 0);
    }
}
