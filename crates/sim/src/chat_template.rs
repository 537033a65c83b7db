//! A model's chat template: the Jinja in its `tokenizer_config.json`, rendered as Hugging Face's
//! `apply_chat_template` renders it for vLLM (`trim_blocks`, `lstrip_blocks`, loop controls,
//! Python's string methods, `raise_exception`, the special tokens as variables, and
//! `add_generation_prompt`). vLLM tokenizes the rendered text without adding special tokens, so
//! a gateway that renders the same template keys a chat request's blocks as the engine does.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, Value};

/// Template instructions one render may run: a long conversation costs a few hundred per
/// message; the bound stops a template that loops without end.
const FUEL: u64 = 5_000_000;

/// One model's chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ...: the special tokens transformers passes to the template.
    specials: Vec<(String, String)>,
}

impl ChatTemplate {
    /// The template of a `tokenizer_config.json` (its `chat_template`: a string, or a list of
    /// named templates of which `default` is the chat one); `Ok(None)` when it has none.
    pub fn from_tokenizer_config(config: &serde_json::Value) -> Result<Option<Self>, String> {
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .ok_or("chat_template: a list without a `default` template")?
                .to_string(),
            Some(_) => return Err("chat_template: expected a string or a list".into()),
        };
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| format!("chat_template: {e}"))?,
        );
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source)
            .map_err(|e| format!("chat_template: {e}"))?;
        let specials = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|k| {
                // A string, or an AddedToken object whose `content` is the token.
                let v = config.get(k)?;
                let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
                Some((k.to_string(), s.to_string()))
            })
            .collect();
        Ok(Some(Self { env, specials }))
    }

    /// The conversation (role, content) as the engine renders it, with the assistant's turn
    /// opened for the reply.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(role.as_str())),
                    ("content", Value::from(content.as_str())),
                ]))
            })
            .collect();
        let mut ctx: BTreeMap<&str, Value> = self
            .specials
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(true));
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(Value::from(ctx))
            .map_err(|e| format!("chat_template: {e}"))
    }
}

/// The messages of a chat request as (role, content): text parts of an array content joined
/// by newlines, as vLLM joins them. Errors name the message at fault.
pub fn chat_messages(
    messages: Option<&serde_json::Value>,
) -> Result<Vec<(String, String)>, String> {
    use serde_json::Value as J;
    let Some(messages) = messages else {
        return Err("Field required: 'messages'.".into());
    };
    let Some(list) = messages.as_array().filter(|l| !l.is_empty()) else {
        return Err("'messages' must be a non-empty array.".into());
    };
    let mut parts = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Some(role) = m.get("role").and_then(J::as_str) else {
            return Err(format!(
                "messages[{i}].role is required and must be a string."
            ));
        };
        let content = match m.get("content") {
            None | Some(J::Null) => String::new(),
            Some(J::String(s)) => s.clone(),
            Some(J::Array(items)) => {
                let texts: Vec<&str> = items
                    .iter()
                    .filter_map(|item| item.get("text").and_then(J::as_str))
                    .collect();
                texts.join("\n")
            }
            Some(_) => {
                return Err(format!(
                    "messages[{i}].content must be a string or an array."
                ))
            }
        };
        parts.push((role.to_string(), content));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(m: &[(&str, &str)]) -> Vec<(String, String)> {
        m.iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn renders_as_transformers_does() {
        // trim_blocks: the newline after a block tag goes; Python's str methods work.
        let cfg = serde_json::json!({
            "chat_template": "{{ bos_token }}{% for m in messages %}\n{{ m['role'] | upper }}: {{ m['content'].strip() }}\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}",
            "bos_token": {"content": "<s>", "special": true},
        });
        let t = ChatTemplate::from_tokenizer_config(&cfg).unwrap().unwrap();
        let out = t
            .render(&msgs(&[("user", "  hi  "), ("assistant", "yo")]))
            .unwrap();
        assert_eq!(out, "<s>USER: hi\nASSISTANT: yo\nASSISTANT:");
    }

    #[test]
    fn named_templates_errors_and_runaway_loops() {
        let cfg = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}ok"},
        ]});
        let t = ChatTemplate::from_tokenizer_config(&cfg).unwrap().unwrap();
        assert_eq!(t.render(&msgs(&[("user", "a")])).unwrap(), "ok");
        let e = t
            .render(&msgs(&[("user", "a"), ("user", "b")]))
            .unwrap_err();
        assert!(e.contains("one message only"), "{e}");
        assert!(ChatTemplate::from_tokenizer_config(&serde_json::json!({}))
            .unwrap()
            .is_none());
        let bad = serde_json::json!({"chat_template": "{% for %}"});
        assert!(ChatTemplate::from_tokenizer_config(&bad).is_err());
        let endless = serde_json::json!({"chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"});
        let t = ChatTemplate::from_tokenizer_config(&endless)
            .unwrap()
            .unwrap();
        assert!(t.render(&msgs(&[("user", "a")])).is_err());
    }

    #[test]
    fn message_contents() {
        let v = serde_json::json!([
            {"role": "system", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]},
        ]);
        assert_eq!(
            chat_messages(Some(&v)).unwrap(),
            msgs(&[("system", ""), ("user", "a\nb")])
        );
        let e = chat_messages(Some(&serde_json::json!([{"role": "user", "content": 3}])));
        assert_eq!(
            e.unwrap_err(),
            "messages[0].content must be a string or an array."
        );
    }
}
