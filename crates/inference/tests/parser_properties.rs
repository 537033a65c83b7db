//! Property tests over the parsers of untrusted bytes (issue 12), on the stable toolchain so they
//! run in CI; `fuzz/` holds the coverage-guided targets for the same entry points.

use proptest::prelude::*;
use switchyard_inference::{parse_openai, prom_text};

/// Text with the characters that need escaping in JSON and in Prometheus label values.
fn text() -> impl Strategy<Value = String> {
    r#"[a-z \n\t"\\/{}\[\],:é😀\u{1}]{0,12}"#
}

/// A Prometheus sample value that prints and parses back exactly (`{}` of an `f64` does).
fn sample_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i32>().prop_map(f64::from),
        (-1e12f64..1e12),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
    ]
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

fn prom_value(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => format!("{v}"),
    }
}

proptest! {
    #[test]
    fn openai_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for path in ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"] {
            let _ = parse_openai(path, &body);
        }
    }

    /// A chat body written by a JSON serializer reads back as its model and `role\ncontent\n`
    /// text, whatever the characters (escapes, non-BMP) and however the content is split into
    /// text parts among image parts.
    #[test]
    fn chat_bodies_round_trip(
        model in "[a-z0-9/._-]{1,12}",
        messages in prop::collection::vec((text(), prop::collection::vec(text(), 0..3), any::<bool>()), 1..4),
        max_tokens in prop::option::of(any::<u32>()),
    ) {
        let mut expected = String::new();
        let json_messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|(role, texts, as_parts)| {
                expected.push_str(role);
                expected.push('\n');
                expected.push_str(&texts.concat());
                expected.push('\n');
                let content = if *as_parts {
                    let mut parts = vec![serde_json::json!({"type": "image_url", "image_url": {"url": "x"}})];
                    parts.extend(texts.iter().map(|t| serde_json::json!({"type": "text", "text": t})));
                    serde_json::Value::Array(parts)
                } else {
                    serde_json::Value::String(texts.concat())
                };
                serde_json::json!({"content": content, "role": role, "name": "n"})
            })
            .collect();
        let body = serde_json::json!({
            "model": model, "messages": json_messages, "max_tokens": max_tokens, "temperature": 0.5,
        });
        let r = parse_openai("/v1/chat/completions", body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(r.model, model);
        prop_assert_eq!(r.prompt, expected);
        prop_assert_eq!(r.max_tokens, max_tokens);
    }

    /// Completions and embeddings: strings joined by newlines, token ids counted.
    #[test]
    fn text_inputs_round_trip(
        strings in prop::collection::vec(text(), 1..5),
        ids in prop::collection::vec(prop::collection::vec(0u32..100_000, 0..5), 0..3),
    ) {
        let body = serde_json::json!({"model": "m", "prompt": strings, "input": strings});
        for path in ["/v1/completions", "/v1/embeddings"] {
            let r = parse_openai(path, body.to_string().as_bytes()).unwrap();
            prop_assert_eq!(&r.prompt, &strings.join("\n"));
        }
        let body = serde_json::json!({"model": "m", "prompt": ids});
        let r = parse_openai("/v1/completions", body.to_string().as_bytes()).unwrap();
        let count: usize = ids.iter().map(Vec::len).sum();
        prop_assert_eq!(r.prompt_tokens as usize, count);
    }

    #[test]
    fn prom_parser_never_panics_on_bytes(page in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = prom_text::parse(&String::from_utf8_lossy(&page));
    }

    /// A page written in the exposition format reads back as the samples it was written from:
    /// names, labels (escaped values unescaped) and values, with comments and timestamps around.
    #[test]
    fn prom_pages_round_trip(
        samples in prop::collection::vec((
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,15}",
            prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", text()), 0..4),
            sample_value(),
            prop::option::of(any::<i64>()),
        ), 0..6),
    ) {
        let mut page = String::from("# HELP x something\n");
        for (name, labels, value, ts) in &samples {
            page.push_str(name);
            if !labels.is_empty() {
                let labels: Vec<_> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                page.push_str(&format!("{{{}}}", labels.join(",")));
            }
            page.push_str(&format!(" {}", prom_value(*value)));
            if let Some(ts) = ts {
                page.push_str(&format!(" {ts}"));
            }
            page.push_str("\n# TYPE x gauge\n\n");
        }
        let parsed = prom_text::parse(&page).unwrap();
        prop_assert_eq!(parsed.len(), samples.len());
        for (s, (name, labels, value, _)) in parsed.iter().zip(&samples) {
            prop_assert_eq!(s.name, name.as_str());
            prop_assert_eq!(s.value, *value);
            let got: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
            let want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
