use super::*;
use proptest::prelude::*;

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
