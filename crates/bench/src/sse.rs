//! Incremental server-sent-events parsing for streamed completions.
//!
//! Timing is only honest if each event is seen the moment its bytes arrive, so the response body
//! is never buffered whole: [`SseScanner::feed`] takes each body frame, finds `\n\n` (or
//! `\r\n\r\n`) event boundaries, and hands the `data:` payload of every complete event to a
//! callback, keeping only an unfinished tail between frames. When a frame holds whole events
//! (the common case) nothing is copied.
//!
//! [`classify`] then decides what a payload means without a JSON parse on the per-token path:
//! a non-empty `"content"`, `"reasoning_content"` or `"text"` string marks a token chunk, and only
//! payloads that carry a `"usage"` object or an `"error"` are parsed with serde_json. Inside a JSON
//! string a quote is always escaped, so a byte pattern like `"content":"` can only match a key.

/// Splits a byte stream into SSE events and yields each event's `data` payload.
#[derive(Debug, Default)]
pub struct SseScanner {
    tail: Vec<u8>,
}

impl SseScanner {
    /// A scanner with no buffered bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the body and calls `on_data` with the data payload of every event
    /// that is now complete. Events without a `data:` field (comments, keep-alives) are skipped;
    /// several `data:` lines in one event are joined with `\n` as the SSE spec says.
    pub fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        if self.tail.is_empty() {
            let used = scan(chunk, &mut on_data);
            self.tail.extend_from_slice(&chunk[used..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let used = scan(&self.tail, &mut on_data);
            self.tail.drain(..used);
        }
    }

    /// Bytes received after the last complete event (a stream that ends with some is truncated).
    pub fn pending(&self) -> &[u8] {
        &self.tail
    }
}

/// Processes every complete event in `buf`; returns how many bytes were consumed.
fn scan(buf: &[u8], on_data: &mut impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let rest = &buf[nl + 1..];
        let boundary = if rest.first() == Some(&b'\n') {
            Some(nl + 2)
        } else if rest.starts_with(b"\r\n") {
            Some(nl + 3)
        } else {
            None
        };
        match boundary {
            Some(end) => {
                event(&buf[start..nl], on_data);
                start = end;
                i = end;
            }
            None => i = nl + 1,
        }
    }
    start
}

/// Extracts the data payload of one event (its lines, without the blank terminator line).
fn event(ev: &[u8], on_data: &mut impl FnMut(&[u8])) {
    let mut single: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    for line in ev.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(v) = line.strip_prefix(b"data:") else {
            continue;
        };
        let v = v.strip_prefix(b" ").unwrap_or(v);
        match (&mut joined, single) {
            (Some(j), _) => {
                j.push(b'\n');
                j.extend_from_slice(v);
            }
            (None, Some(first)) => {
                let mut j = first.to_vec();
                j.push(b'\n');
                j.extend_from_slice(v);
                joined = Some(j);
            }
            (None, None) => single = Some(v),
        }
    }
    match (joined, single) {
        (Some(j), _) => on_data(&j),
        (None, Some(s)) => on_data(s),
        (None, None) => {}
    }
}

/// Token usage reported by the server in the final chunk (`stream_options.include_usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`, if present.
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens`, if present.
    pub completion_tokens: Option<u32>,
}

/// What one SSE data payload means to the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `[DONE]`: the stream is complete.
    Done,
    /// A JSON chunk. `token` is true when it carries non-empty generated text.
    Json { token: bool, usage: Option<Usage> },
    /// A JSON object with an `error` member: the server failed mid-stream.
    Error,
    /// Not JSON and not `[DONE]`.
    Invalid,
}

/// Classifies a data payload (see the module docs for why this avoids a full JSON parse).
pub fn classify(data: &[u8]) -> Chunk {
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return Chunk::Done;
    }
    if !(data.starts_with(b"{") && data.ends_with(b"}")) {
        return Chunk::Invalid;
    }
    let token = has_nonempty_string(data, b"\"content\"")
        || has_nonempty_string(data, b"\"text\"")
        || has_nonempty_string(data, b"\"reasoning_content\"");
    let usage = if value_starts_with(data, b"\"usage\"", b'{') {
        match parse_usage(data) {
            Some(u) => Some(u),
            None => return Chunk::Invalid,
        }
    } else {
        None
    };
    if !token && usage.is_none() && value_starts_with(data, b"\"error\"", b'{') {
        return Chunk::Error;
    }
    Chunk::Json { token, usage }
}

/// Returns the generated text of a chunk (`choices[0].delta.content`, `.text` or
/// `.delta.reasoning_content`). This one does parse JSON; it is only used when a multi-turn
/// workload needs the reply text.
pub fn chunk_text(data: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let choice = v.get("choices")?.get(0)?;
    let pick = |x: Option<&serde_json::Value>| x.and_then(|s| s.as_str()).map(str::to_owned);
    pick(choice.get("delta").and_then(|d| d.get("content")))
        .or_else(|| pick(choice.get("text")))
        .or_else(|| pick(choice.get("delta").and_then(|d| d.get("reasoning_content"))))
}

fn parse_usage(data: &[u8]) -> Option<Usage> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let u = v.get("usage")?;
    let get = |k: &str| {
        u.get(k)
            .and_then(|x| x.as_u64())
            .map(|x| x.min(u32::MAX as u64) as u32)
    };
    Some(Usage {
        prompt_tokens: get("prompt_tokens"),
        completion_tokens: get("completion_tokens"),
    })
}

/// Finds every occurrence of `key` and checks whether its value is a string with at least one
/// character.
fn has_nonempty_string(data: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(pos) = find(&data[from..], key) {
        let after = skip_colon(&data[from + pos + key.len()..]);
        if let Some(rest) = after {
            if rest.first() == Some(&b'"') && rest.get(1).is_some_and(|&b| b != b'"') {
                return true;
            }
        }
        from += pos + key.len();
    }
    false
}

/// True when some `key` has a value whose first byte is `first`.
fn value_starts_with(data: &[u8], key: &[u8], first: u8) -> bool {
    let mut from = 0;
    while let Some(pos) = find(&data[from..], key) {
        if skip_colon(&data[from + pos + key.len()..]).and_then(|r| r.first()) == Some(&first) {
            return true;
        }
        from += pos + key.len();
    }
    false
}

/// Skips `ws : ws` after a key; `None` when the key is not followed by a colon (it was a value).
fn skip_colon(s: &[u8]) -> Option<&[u8]> {
    let s = s.trim_ascii_start();
    let s = s.strip_prefix(b":")?;
    Some(s.trim_ascii_start())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let off = hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)?;
        i += off;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let mut s = SseScanner::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |d| out.push(String::from_utf8(d.to_vec()).unwrap()));
        }
        (out, s.pending().to_vec())
    }

    const STREAM: &str =
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\r\n\r\n\
        data: [DONE]\n\n";

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        let (whole, rest) = collect(&[STREAM.as_bytes()]);
        assert_eq!(whole.len(), 4);
        assert!(rest.is_empty());
        assert_eq!(whole[3], "[DONE]");
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let (parts, rest) = collect(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(parts, whole, "cut at {cut}");
            assert!(rest.is_empty());
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(collect(&singles).0, whole);
    }

    #[test]
    fn unfinished_event_stays_pending_and_multiline_data_joins() {
        let (ev, rest) = collect(&[b"data: a\ndata: b\n\ndata: {\"x\""]);
        assert_eq!(ev, vec!["a\nb".to_string()]);
        assert_eq!(rest, b"data: {\"x\"");
        let (ev, _) = collect(&[b"event: message\nid: 3\ndata:{}\n\n"]);
        assert_eq!(ev, vec!["{}".to_string()]);
    }

    #[test]
    fn classifies_tokens_usage_done_error_and_garbage() {
        let tok = |s: &str| classify(s.as_bytes());
        assert_eq!(tok("[DONE]"), Chunk::Done);
        assert_eq!(
            tok(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#),
            Chunk::Json {
                token: true,
                usage: None
            }
        );
        assert_eq!(
            tok(r#"{"choices":[{"delta": {"content" : "x"}}]}"#),
            Chunk::Json {
                token: true,
                usage: None
            }
        );
        assert_eq!(
            tok(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            Chunk::Json {
                token: false,
                usage: None
            }
        );
        assert_eq!(
            tok(r#"{"choices":[{"delta":{"content":null}}],"usage":null}"#),
            Chunk::Json {
                token: false,
                usage: None
            }
        );
        assert_eq!(
            tok(r#"{"choices":[{"text":" the","index":0}]}"#),
            Chunk::Json {
                token: true,
                usage: None
            }
        );
        assert_eq!(
            tok(r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#),
            Chunk::Json {
                token: true,
                usage: None
            }
        );
        // A value that merely mentions "content": it is escaped, so no match.
        assert_eq!(
            tok(r#"{"choices":[{"delta":{"content":""}}],"x":"\"content\":\"a"}"#),
            Chunk::Json {
                token: false,
                usage: None
            }
        );
        assert_eq!(
            tok(
                r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#
            ),
            Chunk::Json {
                token: false,
                usage: Some(Usage {
                    prompt_tokens: Some(7),
                    completion_tokens: Some(3)
                })
            }
        );
        assert_eq!(tok(r#"{"error":{"message":"boom"}}"#), Chunk::Error);
        assert_eq!(tok("hello"), Chunk::Invalid);
        assert_eq!(tok(r#"{"usage":{"completion_tokens":3}"#), Chunk::Invalid);
        assert_eq!(tok(r#"{"usage":{"completion_tokens":3},}"#), Chunk::Invalid);
    }

    #[test]
    fn chunk_text_reads_chat_and_completions() {
        assert_eq!(
            chunk_text(br#"{"choices":[{"delta":{"content":"a\"b"}}]}"#).as_deref(),
            Some("a\"b")
        );
        assert_eq!(
            chunk_text(br#"{"choices":[{"text":"x"}]}"#).as_deref(),
            Some("x")
        );
        assert_eq!(chunk_text(br#"{"choices":[]}"#), None);
    }
}
