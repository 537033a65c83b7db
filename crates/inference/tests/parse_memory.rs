//! Memory and time of `parse_openai` under adversarial bodies (issue 12): a body of many small
//! JSON objects used to become a `serde_json::Value` tree 86 times its size. The parse may
//! allocate at most twice the body, counted by a global allocator that tracks the peak.
//!
//! `cargo test -p switchyard-inference --release --test parse_memory -- --nocapture` prints the
//! measurements recorded in docs/benchmarks.md.

use std::sync::Mutex;
use std::time::Instant;

use peak_alloc::PeakAlloc;
use switchyard_inference::parse_openai;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The peak counter is process-wide: one test at a time, bodies built inside the lock too (the
/// test harness runs tests on parallel threads, and another test's 16 MiB body counts as this
/// one's allocation otherwise).
static MEASURE: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(|e| e.into_inner())
}

const BODY: usize = 16 << 20;

/// Repeat `item` (comma-separated) between `head` and `tail` until the body is about `BODY` bytes.
fn body(head: &str, item: &str, tail: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(BODY + 64);
    b.extend_from_slice(head.as_bytes());
    let n = (BODY - head.len() - tail.len()) / (item.len() + 1);
    for i in 0..n {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(item.as_bytes());
    }
    b.extend_from_slice(tail.as_bytes());
    b
}

struct Measured {
    ok: bool,
    peak: usize,
    millis: f64,
}

/// Parse `body` for `path`, returning whether it parsed, the peak bytes allocated above what was
/// live before the parse (the body itself is not counted), and the wall time.
fn measure(name: &str, path: &str, body: &[u8]) -> Measured {
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let start = Instant::now();
    let result = parse_openai(path, body);
    let millis = start.elapsed().as_secs_f64() * 1e3;
    let peak = ALLOC.peak_usage() - base;
    let ok = result.is_ok();
    let outcome = match &result {
        Ok(r) => format!("ok, prompt {} bytes", r.prompt.len()),
        Err(e) => format!("error: {}", truncate(&e.to_string())),
    };
    drop(result);
    let mib = body.len() as f64 / f64::from(1 << 20);
    eprintln!(
        "{name}: body {mib:.1} MiB, peak {:.2}x body, {millis:.1} ms ({:.2} ms/MiB), {outcome}",
        peak as f64 / body.len() as f64,
        millis / mib,
    );
    Measured { ok, peak, millis }
}

fn truncate(s: &str) -> &str {
    s.get(..s.len().min(100)).unwrap_or(s)
}

fn assert_bounded(m: &Measured, body: &[u8]) {
    assert!(
        m.peak <= 2 * body.len(),
        "parse allocated {} bytes at peak for a {}-byte body ({} ms)",
        m.peak,
        body.len(),
        m.millis
    );
}

#[test]
fn many_small_objects_in_content_parts() {
    let _one = one_at_a_time();
    let b = body(
        r#"{"model":"m","messages":[{"role":"user","content":["#,
        r#"{"type":"text","text":"a"},{"type":"image_url","image_url":{}}"#,
        "]}]}",
    );
    let m = measure("content parts", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn many_small_objects_in_an_ignored_message_field() {
    let _one = one_at_a_time();
    let b = body(
        r#"{"model":"m","messages":[{"role":"user","content":"hi","tool_calls":["#,
        "{}",
        "]}]}",
    );
    let m = measure("ignored field in a message", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn many_small_objects_in_an_ignored_top_level_field() {
    let _one = one_at_a_time();
    let b = body(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":["#,
        r#"{"a":[1]}"#,
        "]}",
    );
    let m = measure("ignored top-level field", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn many_small_objects_in_a_field_of_another_api() {
    let _one = one_at_a_time();
    // `prompt` means nothing to chat; it used to be built as a tree all the same.
    let b = body(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"prompt":["#,
        "{}",
        "]}",
    );
    let m = measure("prompt on the chat path", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn many_small_objects_as_a_prompt_fail_cleanly() {
    let _one = one_at_a_time();
    let b = body(r#"{"model":"m","prompt":["#, "{}", "]}");
    let m = measure("objects as a prompt", "/v1/completions", &b);
    assert!(!m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn many_messages() {
    let _one = one_at_a_time();
    let b = body(
        r#"{"model":"m","messages":["#,
        r#"{"role":"user","content":"x"}"#,
        "]}",
    );
    let m = measure("many messages", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn one_long_escaped_string() {
    let _one = one_at_a_time();
    let b = body(r#"{"model":"m","input":""#, r"\n\u00e9", r#""}"#);
    let m = measure("escaped input", "/v1/embeddings", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn one_long_escaped_key() {
    let _one = one_at_a_time();
    let b = body(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],""#,
        r"\u0061",
        r#"":1}"#,
    );
    let m = measure("escaped key", "/v1/chat/completions", &b);
    assert!(m.ok);
    assert_bounded(&m, &b);
}

#[test]
fn deep_nesting_fails_cleanly() {
    let _one = one_at_a_time();
    let depth = BODY / 2 - 128;
    let nested = |head: &str, tail: &str| {
        let mut b = head.as_bytes().to_vec();
        b.resize(b.len() + depth, b'[');
        b.resize(b.len() + depth, b']');
        b.extend_from_slice(tail.as_bytes());
        b
    };
    let b = nested(r#"{"model":"m","prompt":"#, "}");
    let m = measure("deep prompt", "/v1/completions", &b);
    assert!(!m.ok);
    assert_bounded(&m, &b);
    let b = nested(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","x":"#,
        "}]}]}",
    );
    let m = measure("deep field in a content part", "/v1/chat/completions", &b);
    assert!(!m.ok);
    assert_bounded(&m, &b);
}
