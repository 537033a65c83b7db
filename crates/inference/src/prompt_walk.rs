//! The prompt of an OpenAI body, read without building the body.
//!
//! `prompt`, `messages` and `input` have variable shapes (a string, an array of strings, token
//! ids, messages whose content is a string or an array of parts), which is why they used to be
//! read as `serde_json::Value` trees. A tree costs some 24 bytes of allocation per byte of a body
//! made of small objects (`[{},{},...]`), so an 8 MiB body cost hundreds of MiB and a second of a
//! worker. Here each of those fields is held as borrowed raw JSON (a `RawValue`: a validated
//! slice of the body, no allocation), then walked one level at a time with visitors that take
//! every element as raw JSON again and look only at its first byte. The text we keep is unescaped
//! straight from the body into the one prompt `String`; everything else is skipped by serde's
//! `ignore_value`, which allocates nothing but one byte per nesting level and never recurses.
//!
//! What this costs and guarantees:
//!
//! * memory: the prompt, which is never longer than the body (unescaping only shortens text and
//!   every separator we add stands for at least two bytes of JSON punctuation), grown by doubling
//!   but never past the body's length. Nothing else grows with the body.
//! * time: a byte of a message is scanned at most about four times (validation of the whole body,
//!   the messages array, the message, its content parts), each a tight `serde_json` skip.
//! * depth: our walk has a fixed depth (messages → message → parts → part) and what it skips is
//!   skipped iteratively, so no input can overflow the stack; a body nested deeper than
//!   `serde_json`'s limit of 128 is refused by one scan before anything else (see [`too_deep`]).

use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::request::RequestError;

const EXPECTED_TEXT: &str = "expected a string, an array of strings, or token ids";

/// The prompt being assembled from one body, and the body it borrows from (for its length, the
/// prompt's bound, and for positions in errors).
pub(crate) struct PromptWalk<'b> {
    body: &'b [u8],
    pub(crate) prompt: String,
    /// Token ids seen in token prompts (they contribute no text).
    pub(crate) token_ids: usize,
    /// Chat messages walked.
    pub(crate) messages: usize,
}

impl<'b> PromptWalk<'b> {
    pub(crate) fn new(body: &'b [u8]) -> Self {
        Self {
            body,
            prompt: String::new(),
            token_ids: 0,
            messages: 0,
        }
    }

    /// Completions `prompt` and embeddings `input`: a string, an array of strings (joined by
    /// newlines), an array of token ids, or an array of token-id arrays.
    pub(crate) fn text_input(&mut self, raw: &RawValue, field: &str) -> Result<(), RequestError> {
        match first_byte(raw) {
            b'"' => self.push_json_str(raw),
            b'[' => each_element(raw, |i, item| match first_byte(item) {
                b'"' => {
                    if i > 0 {
                        self.push_text("\n");
                    }
                    self.push_json_str(item)
                }
                b'-' | b'0'..=b'9' => {
                    self.token_ids += 1;
                    Ok(())
                }
                b'[' => {
                    let mut ids = 0;
                    each_element(item, |_, id| {
                        ids += 1;
                        match first_byte(id) {
                            b'-' | b'0'..=b'9' => Ok(()),
                            _ => Err(invalid(&format!("{field}[{i}]"), EXPECTED_TEXT)),
                        }
                    })?;
                    self.token_ids += ids;
                    Ok(())
                }
                _ => Err(invalid(&format!("{field}[{i}]"), EXPECTED_TEXT)),
            }),
            _ => Err(invalid(field, EXPECTED_TEXT)),
        }
    }

    /// Chat `messages`: each `{role, content}` rendered as `role\ncontent\n`, content a string,
    /// null, or an array of parts of which the `text` ones count.
    pub(crate) fn chat_messages(&mut self, raw: &RawValue) -> Result<(), RequestError> {
        if first_byte(raw) != b'[' {
            return Err(invalid("messages", "expected an array of messages"));
        }
        let mut count = 0;
        each_element(raw, |i, message| {
            count += 1;
            self.message(i, message)
        })?;
        if count == 0 {
            return Err(invalid("messages", "expected at least one message"));
        }
        self.messages = count;
        Ok(())
    }

    fn message(&mut self, i: usize, raw: &RawValue) -> Result<(), RequestError> {
        if first_byte(raw) != b'{' {
            return Err(invalid(&format!("messages[{i}]"), "expected an object"));
        }
        // The role is written first whatever the key order, so both are held (borrowed) until
        // the object ends. A repeated key keeps its last value, as a JSON object would.
        let (mut role, mut content) = (None, None);
        each_entry(raw, &["role", "content"], |key, value| {
            match key {
                0 => role = Some(value),
                _ => content = Some(value),
            }
            Ok(())
        })?;
        match role {
            Some(role) if first_byte(role) == b'"' => self.push_json_str(role)?,
            _ => return Err(invalid(&format!("messages[{i}].role"), "expected a string")),
        }
        self.push_text("\n");
        match content.map(first_byte) {
            None | Some(b'n') => {}
            Some(b'"') => self.push_json_str(content.unwrap_or(raw))?,
            Some(b'[') => each_element(content.unwrap_or(raw), |j, part| self.part(i, j, part))?,
            Some(_) => {
                return Err(invalid(
                    &format!("messages[{i}].content"),
                    "expected a string or an array of content parts",
                ))
            }
        }
        self.push_text("\n");
        Ok(())
    }

    /// One content part: `{"type":"text","text":...}` adds its text; images, audio and other
    /// parts carry no prefix text we can hash.
    fn part(&mut self, i: usize, j: usize, raw: &RawValue) -> Result<(), RequestError> {
        let bad_type = || {
            invalid(
                &format!("messages[{i}].content[{j}].type"),
                "expected a string",
            )
        };
        if first_byte(raw) != b'{' {
            return Err(bad_type());
        }
        let (mut kind, mut text) = (None, None);
        each_entry(raw, &["type", "text"], |key, value| {
            match key {
                0 => kind = Some(value),
                _ => text = Some(value),
            }
            Ok(())
        })?;
        let kind = match kind {
            Some(kind) if first_byte(kind) == b'"' => kind,
            _ => return Err(bad_type()),
        };
        if !self.json_str_eq(kind, "text")? {
            return Ok(());
        }
        match text {
            Some(text) if first_byte(text) == b'"' => self.push_json_str(text),
            _ => Err(invalid(
                &format!("messages[{i}].content[{j}].text"),
                "expected a string",
            )),
        }
    }

    /// A JSON string value as an owned `String` of exactly its unescaped size.
    pub(crate) fn owned_str(&self, raw: &RawValue) -> Result<String, RequestError> {
        let mut out = String::with_capacity(raw.get().len().saturating_sub(2));
        unescape_into(raw.get(), &mut out).map_err(|at| self.escape_error(raw, at))?;
        Ok(out)
    }

    /// Whether JSON string `raw` is `want` once unescaped.
    fn json_str_eq(&self, raw: &RawValue, want: &str) -> Result<bool, RequestError> {
        let s = raw.get();
        if !s.contains('\\') {
            return Ok(s.get(1..s.len() - 1) == Some(want));
        }
        Ok(self.owned_str(raw)? == want)
    }

    fn push_text(&mut self, text: &str) {
        self.reserve(text.len());
        self.prompt.push_str(text);
    }

    /// Append JSON string `raw`, unescaped, to the prompt.
    fn push_json_str(&mut self, raw: &RawValue) -> Result<(), RequestError> {
        // The unescaped text is never longer than the quoted JSON.
        self.reserve(raw.get().len().saturating_sub(2));
        unescape_into(raw.get(), &mut self.prompt).map_err(|at| self.escape_error(raw, at))
    }

    /// Grow the prompt by doubling, but never past the body's length: the prompt cannot be longer
    /// than the body, so a body's worth is always enough.
    fn reserve(&mut self, additional: usize) {
        let need = self.prompt.len() + additional;
        if need > self.prompt.capacity() {
            let target = (2 * self.prompt.capacity())
                .max(need)
                .min(self.body.len().max(need));
            self.prompt.reserve_exact(target - self.prompt.len());
        }
    }

    /// An unpaired UTF-16 surrogate in a `\u` escape (which `serde_json` validates only when it
    /// builds a string), reported at its line and column in the body.
    fn escape_error(&self, raw: &RawValue, at: usize) -> RequestError {
        let offset = (raw.get().as_ptr() as usize)
            .checked_sub(self.body.as_ptr() as usize)
            .filter(|&o| o <= self.body.len())
            .map_or(0, |o| o + at);
        let (line, column) = line_column(self.body, offset);
        RequestError::InvalidJson {
            line,
            column,
            message: "unpaired surrogate in hex escape".into(),
        }
    }
}

/// How deep arrays and objects may nest in a body: `serde_json`'s own recursion limit, which
/// the tree-building parser relied on.
pub(crate) const MAX_DEPTH: usize = 128;

/// The offset of the first `[` or `{` nested deeper than `limit` in `body`, outside strings.
///
/// `serde_json` skips values it is not asked to build without recursion but keeps one byte per
/// open bracket, and every level of our walk has its own deserializer doing that: a body one
/// bracket deep per two bytes would cost several times its size. One scan up front bounds all
/// of them, and keeps the limit the tree parser had, for the whole body.
pub(crate) fn too_deep(body: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                i += 1;
                while i < body.len() {
                    match body[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `(line, column)` of byte `offset` in `body`, both 1-based.
pub(crate) fn line_column(body: &[u8], offset: usize) -> (usize, usize) {
    let before = &body[..offset.min(body.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1)
        + 1;
    (line, column)
}

fn invalid(field: &str, message: &str) -> RequestError {
    RequestError::InvalidField {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The first byte of a raw value: its type (`"`, `[`, `{`, `n`, `t`, `f`, `-` or a digit).
/// `serde_json` trims whitespace around raw values, so this is never a space.
fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Append the contents of the (already validated) JSON string literal `quoted` to `out`,
/// resolving escapes. `Err` holds the byte offset in `quoted` of an unpaired surrogate escape.
fn unescape_into(quoted: &str, out: &mut String) -> Result<(), usize> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let offset = (quoted.len() - rest.len()).saturating_sub(1) + at;
        let (ch, len) = match escape.as_bytes().get(1) {
            Some(b'n') => ('\n', 2),
            Some(b't') => ('\t', 2),
            Some(b'r') => ('\r', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'u') => {
                let high = hex4(escape, 2).ok_or(offset)?;
                if (0xD800..0xDC00).contains(&high) {
                    let low = match escape.get(6..8) {
                        Some("\\u") => hex4(escape, 8).ok_or(offset)?,
                        _ => return Err(offset),
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(offset);
                    }
                    let code = 0x1_0000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    (char::from_u32(code).ok_or(offset)?, 12)
                } else {
                    (char::from_u32(high).ok_or(offset)?, 6)
                }
            }
            // `"`, `\` and `/` stand for themselves.
            Some(&c) if c.is_ascii() => (char::from(c), 2),
            _ => return Err(offset),
        };
        out.push(ch);
        rest = escape.get(len..).ok_or(offset)?;
    }
    out.push_str(rest);
    Ok(())
}

/// The four hex digits at `s[at..at + 4]`.
fn hex4(s: &str, at: usize) -> Option<u32> {
    u32::from_str_radix(s.get(at..at + 4)?, 16).ok()
}

/// Call `f` with the index and raw JSON of each element of array `raw`, stopping at its first
/// error.
fn each_element<'a>(
    raw: &'a RawValue,
    f: impl FnMut(usize, &'a RawValue) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    struct Elements<F> {
        f: F,
        error: Option<RequestError>,
    }
    impl<'a, F> Visitor<'a> for &mut Elements<F>
    where
        F: FnMut(usize, &'a RawValue) -> Result<(), RequestError>,
    {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(item) = seq.next_element::<&'a RawValue>()? {
                if let Err(e) = (self.f)(i, item) {
                    self.error = Some(e);
                    return Err(de::Error::custom("stopped"));
                }
                i += 1;
            }
            Ok(())
        }
    }
    let mut elements = Elements { f, error: None };
    let walked = serde_json::Deserializer::from_str(raw.get()).deserialize_seq(&mut elements);
    finish(walked, elements.error)
}

/// Call `f` with the index in `keys` and the raw JSON value of each entry of object `raw` whose
/// key is one of `keys`; other entries are skipped unread.
fn each_entry<'a>(
    raw: &'a RawValue,
    keys: &'static [&'static str],
    f: impl FnMut(usize, &'a RawValue) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    struct Entries<F> {
        keys: &'static [&'static str],
        f: F,
        error: Option<RequestError>,
    }
    impl<'a, F> Visitor<'a> for &mut Entries<F>
    where
        F: FnMut(usize, &'a RawValue) -> Result<(), RequestError>,
    {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key_seed(KeyIndex(self.keys))? {
                let Some(key) = key else {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                };
                let value = map.next_value::<&'a RawValue>()?;
                if let Err(e) = (self.f)(key, value) {
                    self.error = Some(e);
                    return Err(de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut entries = Entries {
        keys,
        f,
        error: None,
    };
    let walked = serde_json::Deserializer::from_str(raw.get()).deserialize_map(&mut entries);
    finish(walked, entries.error)
}

/// A walk's result: the error our callback stopped it with, else `serde_json`'s. The raw JSON
/// was validated when the body was read, so the latter is not expected.
fn finish(
    walked: Result<(), serde_json::Error>,
    stopped: Option<RequestError>,
) -> Result<(), RequestError> {
    match (walked, stopped) {
        (_, Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(RequestError::InvalidJson {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }),
    }
}

/// An object key as its index in a list of wanted keys, without allocating (an escaped key is
/// unescaped into `serde_json`'s reused scratch buffer).
struct KeyIndex(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for KeyIndex {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIndex {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(s: &str) -> Result<String, usize> {
        let mut out = String::new();
        unescape_into(s, &mut out).map(|()| out)
    }

    #[test]
    fn unescapes_like_serde_json() {
        for s in [
            r#""plain""#,
            r#""a\nb\t\"q\"\\\/\b\f\r""#,
            r#""\u00e9\u4e2d\ud83d\ude00 x""#,
            r#""""#,
        ] {
            let want: String = serde_json::from_str(s).unwrap();
            assert_eq!(unescape(s).unwrap(), want, "{s}");
        }
        assert!(unescape(r#""\ud83d""#).is_err());
        assert!(unescape(r#""\ude00""#).is_err());
        assert!(unescape(r#""\ud83d\u0041""#).is_err());
    }
}
