use super::*;
use proptest::prelude::*;
use serde_json::Value;

#[path = "request_oracle.rs"]
mod oracle;

#[test]
fn chat_with_string_and_parts() {
    let body = br#"{"model":"sql-lora","messages":[{"role":"system","content":"be brief"},
        {"role":"user","content":[{"type":"text","text":"hi "},{"type":"image_url","image_url":{}},{"type":"text","text":"there"}]}],
        "max_tokens":10,"max_completion_tokens":20,"stream":true,"user":"u1","temperature":0.2}"#;
    let r = parse_openai("/v1/chat/completions", body).unwrap();
    assert_eq!(r.kind, ApiKind::ChatCompletions);
    assert_eq!(r.model, "sql-lora");
    assert_eq!(r.prompt, "system\nbe brief\nuser\nhi there\n");
    assert_eq!(r.max_tokens, Some(20));
    assert!(r.stream);
    assert_eq!(r.user.as_deref(), Some("u1"));
    assert_eq!(r.adapter(|m| m == "llama"), Some("sql-lora"));
    assert_eq!(r.adapter(|_| true), None);
}

#[test]
fn completions_and_embeddings_inputs() {
    let r = parse_openai(
        "/v1/completions?x=1",
        br#"{"model":"m","prompt":["ab","cd"],"max_tokens":5,"lora":"a1"}"#,
    )
    .unwrap();
    assert_eq!(r.prompt, "ab\ncd");
    assert_eq!(r.max_tokens, Some(5));
    assert!(!r.stream);
    assert_eq!(r.adapter(|_| true), Some("a1"));
    assert_eq!(r.est_tokens(100), 2 + 5);
    let mut other = r.clone();
    other.lora = None;
    assert_ne!(r.block_hashes(1), other.block_hashes(1));
    let r = parse_openai("/v1/completions", br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
    assert_eq!((r.prompt.as_str(), r.prompt_tokens), ("", 3));
    let r = parse_openai("/v1/embeddings", br#"{"model":"e","input":"hello world"}"#).unwrap();
    assert_eq!(r.kind, ApiKind::Embeddings);
    assert_eq!(r.prompt_tokens, 3);
}

#[test]
fn errors_say_what_is_wrong() {
    let e = parse_openai("/v1/completions", b"{\"model\":\n  ]").unwrap_err();
    assert!(
        matches!(
            e,
            RequestError::InvalidJson {
                line: 2,
                column: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("invalid JSON at line 2 column 3"));
    let e = parse_openai("/v1/completions", br#"{"prompt":"x"}"#).unwrap_err();
    assert_eq!(e.to_string(), "missing field model");
    let json: Value = serde_json::from_str(&e.to_openai_json()).unwrap();
    assert_eq!(json["error"]["param"], "model");
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(e.status(), 400);
    let e = parse_openai(
        "/v1/completions",
        br#"{"model":"m","prompt":"x","max_tokens":"a"}"#,
    )
    .unwrap_err();
    assert_eq!(e.param(), Some("max_tokens"));
    let e = parse_openai(
        "/v1/chat/completions",
        br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.param(), Some("messages[0].content[0].text"));
    let e = parse_openai("/v1/chat/completions", br#"{"model":"m"}"#).unwrap_err();
    assert_eq!(e, RequestError::MissingField("messages"));
    assert!(matches!(
        parse_openai("/v1/models", b"{}"),
        Err(RequestError::UnsupportedPath(_))
    ));
    assert!(matches!(
        parse_openai("/v1/completions", br#"{"model":"m","prompt":"x"} trailing"#),
        Err(RequestError::InvalidJson { .. })
    ));
    assert!(matches!(
        parse_openai("/v1/completions", b"[1]"),
        Err(RequestError::InvalidJson { .. })
    ));
}

#[test]
fn token_estimate_and_blocks() {
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("abcde"), 2);
    let text = "x".repeat(4 * 16 * 3 + 10);
    assert_eq!(prompt_block_hashes(&text, 16).len(), 3);
    assert_ne!(
        prompt_block_hashes_seeded(seed_for("a"), &text, 16),
        prompt_block_hashes_seeded(seed_for("b"), &text, 16)
    );
}

#[test]
fn role_is_written_first_whatever_the_key_order() {
    let body = br#"{"messages":[{"content":"x","name":"n","role":"user"}],"model":"m"}"#;
    let r = parse_openai("/v1/chat/completions", body).unwrap();
    assert_eq!(r.prompt, "user\nx\n");
    // A repeated key keeps its last value, as a JSON object does.
    let body =
        br#"{"model":"m","messages":[{"role":"a","role":"b","content":[1],"content":null}]}"#;
    let r = parse_openai("/v1/chat/completions", body).unwrap();
    assert_eq!(r.prompt, "b\n\n");
}

#[test]
fn escapes_in_keys_and_values_are_read() {
    let body = br#"{"m\u006fdel":"m\u00e9","user":"u\"1","messages":[{"r\u006fle":"us\u0065r",
        "content":[{"t\u0079pe":"t\u0065xt","text":"a\nb\ud83d\ude00"}]}]}"#;
    let r = parse_openai("/v1/chat/completions", body).unwrap();
    assert_eq!(r.model, "m\u{e9}");
    assert_eq!(r.user.as_deref(), Some("u\"1"));
    assert_eq!(r.prompt, "user\na\nb\u{1F600}\n");
}

#[test]
fn unpaired_surrogates_are_invalid_json_with_a_position() {
    let body = b"{\"model\":\"m\",\n\"prompt\":\"ab\\ud83d\"}";
    let e = parse_openai("/v1/completions", body).unwrap_err();
    assert_eq!(
        e,
        RequestError::InvalidJson {
            line: 2,
            column: 13,
            message: "unpaired surrogate in hex escape".into()
        }
    );
    // The tree-building parser rejected them too (in its own words).
    assert!(matches!(
        oracle::parse_with_tree("/v1/completions", body),
        Err(RequestError::InvalidJson { line: 2, .. })
    ));
}

#[test]
fn free_text_fields_fail_as_strings_would() {
    let e = parse_openai("/v1/completions", br#"{"model":"m","prompt":"x","user":1}"#);
    assert_eq!(
        e,
        oracle::parse_with_tree("/v1/completions", br#"{"model":"m","prompt":"x","user":1}"#)
    );
    assert_eq!(e.unwrap_err().param(), Some("user"));
    for model in ["1", "\"\"", "[]"] {
        let body = format!(r#"{{"model":{model},"prompt":"x"}}"#);
        let e = parse_openai("/v1/completions", body.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid field model: expected a non-empty string"
        );
    }
}

#[test]
fn nesting_deeper_than_serde_json_allows_is_refused_anywhere() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for (path, body) in [
        (
            "/v1/completions",
            format!(r#"{{"model":"m","prompt":{}}}"#, deep(100_000)),
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"m","messages":[{{"role":"u","content":"x","tool_calls":{}}}]}}"#,
                deep(200)
            ),
        ),
        (
            "/v1/embeddings",
            format!(r#"{{"model":"m","input":"x","x":{}}}"#, deep(128)),
        ),
    ] {
        let e = parse_openai(path, body.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, RequestError::InvalidJson { line: 1, message, .. } if message == "recursion limit exceeded"),
            "{e:?}"
        );
    }
    // Brackets inside strings do not count; 128 levels in all is the limit.
    let body = format!(r#"{{"model":"m","input":"[[[[\"{{{{","x":{}}}"#, deep(127));
    assert!(parse_openai("/v1/embeddings", body.as_bytes()).is_ok());
}

#[test]
fn the_prompt_never_holds_more_than_the_body() {
    let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(5000));
    let r = parse_openai("/v1/completions", body.as_bytes()).unwrap();
    assert_eq!(r.prompt.len(), 5000);
    assert!(r.prompt.capacity() <= body.len());
    let items = vec![r#""abcdefgh""#; 1000].join(",");
    let body = format!(r#"{{"model":"m","input":[{items}]}}"#);
    let r = parse_openai("/v1/embeddings", body.as_bytes()).unwrap();
    assert_eq!(r.prompt.len(), 1000 * 9 - 1);
    assert!(r.prompt.capacity() <= body.len());
}

/// JSON text shaped like an OpenAI body: objects whose keys are the ones the parser looks for,
/// in any order and possibly repeated, and leaves of every type.
fn request_like_json() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "model",
        "prompt",
        "messages",
        "input",
        "role",
        "content",
        "type",
        "text",
        "user",
        "lora",
        "max_tokens",
        "stream",
        "image_url",
        "x",
    ]);
    let string = prop_oneof![
        prop::sample::select(vec!["text", "user", "m", "", "image_url"]).prop_map(str::to_string),
        r#"[a-c \n"\\é😀]{0,5}"#,
    ]
    .prop_map(|s| serde_json::to_string(&s).unwrap());
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        (-2i64..70_000).prop_map(|n| n.to_string()),
        Just("1.5".to_string()),
        string.clone(),
    ];
    let value = leaf.prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((keys.clone(), inner), 0..4).prop_map(|entries| {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    });
    // Well-formed messages too, or the random ones above would almost never parse.
    let part = (
        prop::sample::select(vec!["text", "image_url"]),
        value.clone(),
    )
        .prop_map(|(kind, text)| format!(r#"{{"type":"{kind}","text":{text}}}"#));
    let content = prop_oneof![
        value.clone(),
        prop::collection::vec(part, 0..3).prop_map(|p| format!("[{}]", p.join(","))),
    ];
    let role = prop_oneof![3 => string.clone(), 1 => value.clone()];
    let message = (role, content, prop::bool::ANY).prop_map(|(role, content, swap)| {
        if swap {
            format!(r#"{{"content":{content},"role":{role}}}"#)
        } else {
            format!(r#"{{"role":{role},"content":{content}}}"#)
        }
    });
    let messages = prop::collection::vec(message, 1..4).prop_map(|m| format!("[{}]", m.join(",")));
    let top_keys = prop::sample::select(vec![
        "prompt",
        "messages",
        "input",
        "user",
        "lora",
        "max_tokens",
        "stream",
        "x",
    ]);
    let text_item = prop_oneof![
        string.clone(),
        (0u32..70_000).prop_map(|n| n.to_string()),
        prop::collection::vec(0u32..9, 0..3).prop_map(|ids| format!("{ids:?}").replace(' ', "")),
    ];
    let text = prop_oneof![
        string,
        prop::collection::vec(text_item, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
    ];
    let entry = prop_oneof![
        (top_keys, value),
        messages.prop_map(|m| ("messages", m)),
        (prop::sample::select(vec!["prompt", "input"]), text),
    ];
    (prop::collection::vec(entry, 0..4), prop::bool::ANY).prop_map(|(entries, escape)| {
        let mut body = String::from(r#"{"model":"m""#);
        for (k, v) in entries {
            body.push_str(&format!(",\"{k}\":{v}"));
        }
        body.push('}');
        if escape {
            // The same text as `\u` escapes, a surrogate pair for the non-BMP character.
            body = body
                .replace('\u{e9}', r"\u00e9")
                .replace('\u{1F600}', r"\ud83d\ude00");
        }
        body
    })
}

proptest! {
    #[test]
    fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_openai("/v1/chat/completions", &body);
        let _ = parse_openai("/v1/completions", &body);
    }

    #[test]
    fn parser_never_panics_on_jsonish(body in r#"\{"model":"m","(prompt|messages|input)":[\[\]{}"a-z:,0-9 ]{0,40}\}"#) {
        let _ = parse_openai("/v1/chat/completions", body.as_bytes());
        let _ = parse_openai("/v1/embeddings", body.as_bytes());
    }

    /// The parser reads bodies exactly as the tree-building parser it replaced: the same request,
    /// or the same error, on every path.
    #[test]
    fn reads_bodies_as_the_tree_parser_did(body in request_like_json()) {
        for path in ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"] {
            prop_assert_eq!(
                parse_openai(path, body.as_bytes()),
                oracle::parse_with_tree(path, body.as_bytes()),
                "{} {}", path, body
            );
        }
    }

    #[test]
    fn chains_share_exactly_the_common_prefix_blocks(
        common in "[a-c ]{0,300}", a in "[a-c ]{0,200}", b in "[a-c ]{0,200}", block in 1usize..8
    ) {
        let (pa, pb) = (format!("{common}{a}"), format!("{common}{b}"));
        let common_len = pa.bytes().zip(pb.bytes()).take_while(|(x, y)| x == y).count();
        let (ha, hb) = (prompt_block_hashes(&pa, block), prompt_block_hashes(&pb, block));
        let shared = ha.iter().zip(&hb).take_while(|(x, y)| x == y).count();
        let expected = (common_len / (block * CHARS_PER_TOKEN)).min(ha.len()).min(hb.len());
        prop_assert_eq!(shared, expected);
        // After the first difference, nothing lines up again: the chain names whole prefixes.
        prop_assert!(ha.iter().zip(&hb).skip(shared).all(|(x, y)| x != y));
    }
}
