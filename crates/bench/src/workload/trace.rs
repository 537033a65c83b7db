//! Trace replay: one JSON object per line, each a request to send at a given time.
//!
//! ```text
//! {"timestamp": 0.0, "prompt": "Summarise ...", "max_tokens": 128}
//! {"timestamp": 0.25, "prompt_tokens": 2048, "max_tokens": 64, "model": "llama", "headers": {"x-tenant": "a"}}
//! ```
//!
//! `timestamp` is seconds from the start of the run (non-decreasing); exactly one of `prompt`
//! (sent as is) or `prompt_tokens` (generated text of that many words) is required. Unknown
//! fields are ignored so traces exported by other tools load. Any bad line fails the whole load
//! with `FILE:LINE: reason`, because silently skipping lines would change the offered load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{Input, RequestPlan};
use crate::text;

/// Where the trace comes from.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSpec {
    /// The JSONL file (recorded in reports).
    pub path: PathBuf,
    /// Parsed entries; when empty, [`TraceSpec::entries`] loads `path`.
    #[serde(skip)]
    pub loaded: Arc<Vec<TraceEntry>>,
}

impl TraceSpec {
    /// A trace read from `path` when the run starts.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Arc::default(),
        }
    }

    /// Checks that the trace loads.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.entries().map(|_| ())
    }

    /// The entries: the preloaded ones, or parsed from `path`.
    pub fn entries(&self) -> anyhow::Result<Arc<Vec<TraceEntry>>> {
        if !self.loaded.is_empty() {
            return Ok(self.loaded.clone());
        }
        Ok(Arc::new(load(&self.path)?))
    }
}

/// One trace line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TraceEntry {
    /// Seconds from the start of the run.
    pub timestamp: f64,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    pub max_tokens: u32,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Reads and validates a JSONL trace file.
pub fn load(path: &Path) -> anyhow::Result<Vec<TraceEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace `{}`", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

/// Parses JSONL trace text; errors read `LINE: reason`. Blank lines are skipped.
pub fn parse(text: &str) -> anyhow::Result<Vec<TraceEntry>> {
    let mut out = Vec::new();
    let mut last = 0.0f64;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let e: TraceEntry = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
        if !e.timestamp.is_finite() || e.timestamp < 0.0 {
            bail!("{n}: timestamp must be a non-negative number of seconds");
        }
        match (&e.prompt, e.prompt_tokens) {
            (Some(_), Some(_)) => bail!("{n}: give either `prompt` or `prompt_tokens`, not both"),
            (None, None) => bail!("{n}: missing `prompt` or `prompt_tokens`"),
            _ => {}
        }
        if e.max_tokens == 0 {
            bail!("{n}: max_tokens must be at least 1");
        }
        for (k, v) in &e.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                bail!("{n}: invalid header `{k}`");
            }
        }
        if e.timestamp < last {
            bail!(
                "{n}: timestamp {} is earlier than the previous line's {last}",
                e.timestamp
            );
        }
        last = e.timestamp;
        out.push(e);
    }
    if out.is_empty() {
        bail!("1: the trace has no requests");
    }
    Ok(out)
}

/// Running state: a cursor over the entries (shared by all targets: arrival i is line i).
#[derive(Debug)]
pub struct Trace {
    entries: Arc<Vec<TraceEntry>>,
    cursor: usize,
    rng: fastrand::Rng,
}

impl Trace {
    /// Replays `entries`; generated prompts are seeded by `seed`.
    pub fn new(entries: Arc<Vec<TraceEntry>>, seed: u64) -> Self {
        Self {
            entries,
            cursor: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next line, sent to `target`; `None` at the end of the trace.
    pub fn next(&mut self, target: usize) -> Option<RequestPlan> {
        let e = self.entries.get(self.cursor)?;
        self.cursor += 1;
        let prompt = match (&e.prompt, e.prompt_tokens) {
            (Some(p), _) => p.clone(),
            (None, n) => text::words(&mut self.rng, n.unwrap_or(1)),
        };
        Some(RequestPlan {
            target,
            input: Input::Text(prompt),
            max_tokens: e.max_tokens,
            model: e.model.clone(),
            headers: e
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session: None,
        })
    }

    /// Offsets of every line from the start of the run.
    pub fn arrival_times(&self) -> Vec<Duration> {
        self.entries
            .iter()
            .map(|e| Duration::from_secs_f64(e.timestamp))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_lines() {
        let t = parse(
            "{\"timestamp\":0,\"prompt\":\"hi\",\"max_tokens\":4}\n\n\
             {\"timestamp\":0.5,\"prompt_tokens\":10,\"max_tokens\":8,\"model\":\"m\",\"headers\":{\"x-a\":\"b\"},\"extra\":1}\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].model.as_deref(), Some("m"));
        let mut tr = Trace::new(Arc::new(t), 1);
        assert_eq!(
            tr.arrival_times(),
            vec![Duration::ZERO, Duration::from_millis(500)]
        );
        let a = tr.next(0).unwrap();
        assert_eq!(a.input, Input::Text("hi".into()));
        let b = tr.next(1).unwrap();
        let Input::Text(p) = &b.input else {
            panic!("text")
        };
        assert_eq!(p.split(' ').count(), 10);
        assert_eq!(
            (b.target, b.max_tokens, b.headers.clone()),
            (1, 8, vec![("x-a".into(), "b".into())])
        );
        assert!(tr.next(0).is_none());
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let ok = "{\"timestamp\":1,\"prompt\":\"a\",\"max_tokens\":1}\n";
        let cases = [
            ("not json", "expected"),
            ("{\"timestamp\":0,\"prompt\":\"a\"}", "missing field `max_tokens`"),
            ("{\"timestamp\":0,\"max_tokens\":3}", "missing `prompt` or `prompt_tokens`"),
            ("{\"timestamp\":0,\"prompt\":\"a\",\"prompt_tokens\":3,\"max_tokens\":3}", "not both"),
            ("{\"timestamp\":-1,\"prompt\":\"a\",\"max_tokens\":3}", "non-negative"),
            ("{\"timestamp\":0.5,\"prompt\":\"a\",\"max_tokens\":3}", "earlier than"),
            ("{\"timestamp\":2,\"prompt\":\"a\",\"max_tokens\":0}", "at least 1"),
            ("{\"timestamp\":2,\"prompt\":\"a\",\"max_tokens\":1,\"headers\":{\"bad header\":\"x\"}}", "invalid header"),
        ];
        for (bad, want) in cases {
            let err = parse(&format!("{ok}\n{bad}\n")).unwrap_err().to_string();
            assert!(err.starts_with("3: "), "{bad}: {err}");
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert!(parse("\n").unwrap_err().to_string().contains("no requests"));
    }

    #[test]
    fn load_prefixes_the_path() {
        let dir = std::env::temp_dir().join(format!("bench-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t.jsonl");
        std::fs::write(&f, "{\"timestamp\":0}\n").unwrap();
        let err = TraceSpec::from_path(&f).validate().unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:1: ", f.display())), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
