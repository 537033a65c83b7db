//! The tree-building parser that `parse_openai` replaced (issue 12), kept as the oracle of a
//! differential property test: on any body both must give the same request or the same error.
//! It builds `prompt`, `messages` and `input` as `serde_json::Value` trees, which is what made it
//! cost ~24 bytes of allocation per body byte; a test can afford that on small bodies.

use serde::Deserialize;
use serde_json::Value;

use super::super::{estimate_tokens, invalid, strip_position};
use super::super::{ApiKind, InferenceRequest, RequestError};

#[derive(Deserialize)]
struct Body {
    model: Option<Value>,
    prompt: Option<Value>,
    messages: Option<Value>,
    input: Option<Value>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream: Option<bool>,
    user: Option<String>,
    lora: Option<String>,
}

/// Parse an OpenAI request body for `path`.
pub fn parse_with_tree(path: &str, body: &[u8]) -> Result<InferenceRequest, RequestError> {
    let kind =
        ApiKind::from_path(path).ok_or_else(|| RequestError::UnsupportedPath(path.to_string()))?;
    if let Some(i) = body.iter().position(|b| !b.is_ascii_whitespace()) {
        if body[i] != b'{' {
            let line = 1 + body[..i].iter().filter(|&&b| b == b'\n').count();
            let column = i - body[..i]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |n| n + 1)
                + 1;
            return Err(RequestError::InvalidJson {
                line,
                column,
                message: "expected a JSON object".into(),
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Body = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && field != "." {
            RequestError::InvalidField {
                field,
                message: strip_position(&inner),
            }
        } else {
            RequestError::InvalidJson {
                line: inner.line(),
                column: inner.column(),
                message: strip_position(&inner),
            }
        }
    })?;
    de.end().map_err(|e| RequestError::InvalidJson {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e),
    })?;

    let model = match parsed.model {
        None | Some(Value::Null) => return Err(RequestError::MissingField("model")),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(invalid("model", "expected a non-empty string")),
    };
    let mut prompt = String::new();
    let mut token_ids = 0usize;
    let mut messages = 0usize;
    match kind {
        ApiKind::Completions => {
            let v = parsed.prompt.ok_or(RequestError::MissingField("prompt"))?;
            text_input(&v, "prompt", &mut prompt, &mut token_ids)?;
        }
        ApiKind::Embeddings => {
            let v = parsed.input.ok_or(RequestError::MissingField("input"))?;
            text_input(&v, "input", &mut prompt, &mut token_ids)?;
        }
        ApiKind::ChatCompletions => {
            let v = parsed
                .messages
                .ok_or(RequestError::MissingField("messages"))?;
            chat_messages(&v, &mut prompt)?;
            messages = v.as_array().map_or(0, Vec::len);
        }
    }
    let prompt_tokens =
        estimate_tokens(&prompt).saturating_add(u32::try_from(token_ids).unwrap_or(u32::MAX));
    Ok(InferenceRequest {
        messages: u32::try_from(messages).unwrap_or(u32::MAX),
        kind,
        model,
        lora: parsed.lora,
        prompt,
        prompt_tokens,
        max_tokens: parsed.max_completion_tokens.or(parsed.max_tokens),
        stream: parsed.stream.unwrap_or(false),
        user: parsed.user,
        engine_keys: None,
    })
}
/// A string, an array of strings, an array of token ids, or an array of token-id arrays.
fn text_input(
    v: &Value,
    field: &str,
    out: &mut String,
    token_ids: &mut usize,
) -> Result<(), RequestError> {
    const EXPECTED: &str = "expected a string, an array of strings, or token ids";
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => {
                        if i > 0 {
                            out.push('\n');
                        }
                        out.push_str(s);
                    }
                    Value::Number(_) => *token_ids += 1,
                    Value::Array(ids) if ids.iter().all(Value::is_number) => {
                        *token_ids += ids.len();
                    }
                    _ => return Err(invalid(&format!("{field}[{i}]"), EXPECTED)),
                }
            }
        }
        _ => return Err(invalid(field, EXPECTED)),
    }
    Ok(())
}

/// `messages[]`: each `{role, content}` with content a string, null, or text parts.
fn chat_messages(v: &Value, out: &mut String) -> Result<(), RequestError> {
    let Value::Array(messages) = v else {
        return Err(invalid("messages", "expected an array of messages"));
    };
    if messages.is_empty() {
        return Err(invalid("messages", "expected at least one message"));
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(invalid(&format!("messages[{i}]"), "expected an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => return Err(invalid(&format!("messages[{i}].role"), "expected a string")),
        };
        out.push_str(role);
        out.push('\n');
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text") {
                            Some(Value::String(t)) => out.push_str(t),
                            _ => {
                                return Err(invalid(
                                    &format!("messages[{i}].content[{j}].text"),
                                    "expected a string",
                                ))
                            }
                        },
                        // Images, audio and other parts carry no prefix text we can hash.
                        Some(_) => {}
                        None => {
                            return Err(invalid(
                                &format!("messages[{i}].content[{j}].type"),
                                "expected a string",
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(invalid(
                    &format!("messages[{i}].content"),
                    "expected a string or an array of content parts",
                ))
            }
        }
        out.push('\n');
    }
    Ok(())
}
