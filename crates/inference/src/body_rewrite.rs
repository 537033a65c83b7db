//! Rewrites of a top-level field of an OpenAI-style JSON request body, and nothing else: the
//! per-target model rewrite (aliases, version splits) replaces the value of `model`; a request
//! predicted late everywhere gets the engine `priority` that lets on-time requests go first.
//!
//! Re-serializing the parsed body would be simpler and wrong: it reorders keys, drops
//! duplicates, renormalizes numbers (`1.0` → `1`) and escapes, and turns a body the client
//! signed or hashed into a different one. So the body is scanned once as JSON text, the byte
//! ranges of the top-level `model` string values are found, and only those ranges are replaced
//! with the new name as a JSON string literal. Keys nested anywhere else (`messages[].model`,
//! `metadata.model`, tool arguments) are skipped as opaque values. Every other byte, whitespace
//! included, reaches the upstream as the client sent it.

use std::ops::Range;

/// The body with every top-level `"model": "<string>"` value replaced by `model` (escaped as a
/// JSON string). `None` when there is nothing to change: the body is not a JSON object, has no
/// top-level `model` string, or already names exactly `model`. The caller fixes `Content-Length`.
pub fn rewrite_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let spans = top_level_values(body, "model")?;
    if spans.is_empty() || spans.iter().any(|s| body[s.start] != b'"') {
        return None;
    }
    let literal = serde_json::to_string(model).expect("a string always serializes");
    if spans.iter().all(|s| body[s.clone()] == *literal.as_bytes()) {
        return None;
    }
    let removed: usize = spans.iter().map(|s| s.len()).sum();
    let mut out = Vec::with_capacity(body.len() - removed + spans.len() * literal.len());
    let mut at = 0;
    for s in spans {
        out.extend_from_slice(&body[at..s.start]);
        out.extend_from_slice(literal.as_bytes());
        at = s.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

/// The body with `"priority": priority` added as its first member (vLLM's and SGLang's request
/// field: the order of an engine's waiting queue under priority scheduling). `None` when the
/// body is not one JSON object or already sets a top-level `priority`: a client's own stays.
/// The caller fixes `Content-Length`.
pub fn add_priority(body: &[u8], priority: i64) -> Option<Vec<u8>> {
    if !top_level_values(body, "priority")?.is_empty() {
        return None;
    }
    let open = skip_ws(body, 0);
    let empty = body[skip_ws(body, open + 1)] == b'}';
    let member = format!("\"priority\":{priority}{}", if empty { "" } else { "," });
    let mut out = Vec::with_capacity(body.len() + member.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&body[open + 1..]);
    Some(out)
}

/// Byte ranges of the values of top-level `key` keys (strings with their quotes). `None` when
/// the body is not one well-formed JSON object (as far as its structure goes).
fn top_level_values(b: &[u8], key: &str) -> Option<Vec<Range<usize>>> {
    let mut spans = Vec::new();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = skip_string(b, i)?;
            let name = &b[i..key_end];
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let value_start = skip_ws(b, i + 1);
            let value_end = skip_value(b, value_start)?;
            if is_key(name, key) {
                spans.push(value_start..value_end);
            }
            i = skip_ws(b, value_end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    Some(spans)
}

/// Whether a key literal (quotes included) decodes to `key`; escaped spellings count.
fn is_key(literal: &[u8], key: &str) -> bool {
    if literal.len() == key.len() + 2 && &literal[1..literal.len() - 1] == key.as_bytes() {
        return true;
    }
    literal.contains(&b'\\') && serde_json::from_slice::<String>(literal).is_ok_and(|k| k == key)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// `b[i]` is an opening quote; the index just past the closing one.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index just past the JSON value starting at `b[i]`. Objects and arrays are skipped by
/// bracket depth (strings inside them skipped whole); scalars run to the next delimiter.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let start = i;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{add_priority, rewrite_model};

    fn prio(body: &str, p: i64) -> Option<String> {
        add_priority(body.as_bytes(), p).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn priority_is_added_first_and_every_other_byte_kept() {
        let body = " {\"model\":\"m\", \"metadata\":{\"priority\":3},\"prompt\":\"priority\"}\n";
        let out = prio(body, 10).unwrap();
        assert_eq!(
            out,
            " {\"priority\":10,\"model\":\"m\", \"metadata\":{\"priority\":3},\"prompt\":\"priority\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["priority"], 10);
        assert_eq!(prio("{ }", -2).unwrap(), r#"{"priority":-2 }"#);
    }

    #[test]
    fn a_clients_own_priority_stays_and_non_objects_are_left_alone() {
        assert_eq!(prio(r#"{"model":"m","priority":0}"#, 10), None);
        assert_eq!(prio(r#"{"model":"m","pri\u006frity":-5}"#, 10), None);
        for body in ["[1]", "\"s\"", "{\"model\":\"m\"} x", "{\"model\":", ""] {
            assert_eq!(prio(body, 1), None, "{body:?}");
        }
    }

    fn rw(body: &str, model: &str) -> Option<String> {
        rewrite_model(body.as_bytes(), model).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn replaces_only_the_value_and_keeps_every_other_byte() {
        let body = "{\n  \"messages\" : [ {\"role\":\"user\", \"content\":\"hi\"} ],\n  \"model\"\t:  \"gpt-4\" ,\"temperature\": 1.0e0,\"stream\":true }\n";
        assert_eq!(
            rw(body, "llama-3-8b-instruct").unwrap(),
            "{\n  \"messages\" : [ {\"role\":\"user\", \"content\":\"hi\"} ],\n  \"model\"\t:  \"llama-3-8b-instruct\" ,\"temperature\": 1.0e0,\"stream\":true }\n"
        );
    }

    #[test]
    fn escapes_the_new_name() {
        let out = rw(r#"{"model":"a"}"#, "we\"ird\\name\n\u{1}é").unwrap();
        assert_eq!(out, r#"{"model":"we\"ird\\name\n\u0001é"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "we\"ird\\name\n\u{1}é");
    }

    #[test]
    fn old_value_with_escapes_is_replaced_whole() {
        assert_eq!(
            rw(r#"{"model":"gpt\"-4\\","n":1}"#, "x").unwrap(),
            r#"{"model":"x","n":1}"#
        );
        // An escaped spelling of the key is still the key.
        assert_eq!(
            rw(r#"{"mod\u0065l":"gpt-4"}"#, "x").unwrap(),
            r#"{"mod\u0065l":"x"}"#
        );
    }

    #[test]
    fn nested_model_keys_are_not_touched() {
        let body = r#"{"messages":[{"role":"user","content":"{\"model\":\"gpt-4\"}","model":"gpt-4"}],"metadata":{"model":"gpt-4","x":[{"model":"gpt-4"}]},"tools":[],"model":"gpt-4","user":"model"}"#;
        let out = rw(body, "llama").unwrap();
        assert_eq!(
            out,
            body.replacen(
                r#","model":"gpt-4","user""#,
                r#","model":"llama","user""#,
                1
            )
        );
        assert_eq!(out.matches("gpt-4").count(), 4);
    }

    #[test]
    fn duplicate_top_level_keys_are_all_rewritten() {
        assert_eq!(
            rw(r#"{"model":"a","x":{},"model":"b"}"#, "c").unwrap(),
            r#"{"model":"c","x":{},"model":"c"}"#
        );
    }

    #[test]
    fn non_json_or_model_less_bodies_are_left_alone() {
        for body in [
            "",
            "model=gpt-4",
            "[{\"model\":\"gpt-4\"}]",
            "{\"model\":\"gpt-4\"",
            "{\"model\":\"gpt-4\"} trailing",
            "{\"model\":5}",
            "{\"model\":null}",
            "{\"prompt\":\"model\"}",
            "{\"a\":{\"model\":\"gpt-4\"}}",
            "{\"model\" \"gpt-4\"}",
            "{\"a\":1,}",
            "\u{0}\u{ff}",
        ] {
            assert_eq!(rw(body, "x"), None, "{body:?}");
        }
        // Already the target name: nothing to copy.
        assert_eq!(rw(r#"{"model":"x"}"#, "x"), None);
    }

    proptest::proptest! {
        /// Whatever the new name, the result parses to the same document with only `model`
        /// changed; arbitrary bytes never panic.
        #[test]
        fn rewrite_is_exact(name in ".{0,20}", content in ".{0,40}", junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let body = serde_json::json!({"model": "orig", "messages": [{"role": "user", "content": content, "model": "orig"}], "max_tokens": 7}).to_string();
            let out = rewrite_model(body.as_bytes(), &name);
            let mut want: serde_json::Value = serde_json::from_str(&body).unwrap();
            want["model"] = serde_json::Value::from(name.clone());
            match out {
                Some(out) => {
                    let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
                    proptest::prop_assert_eq!(got, want);
                }
                None => proptest::prop_assert_eq!(name, "orig"),
            }
            let _ = rewrite_model(&junk, "x");
        }
    }
}
