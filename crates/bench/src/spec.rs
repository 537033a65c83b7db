//! [`LoadSpec`]: everything that defines one load run, as plain data.
//!
//! The CLI and programmatic callers (`switchyard demo`) both build a `LoadSpec` and hand it to
//! [`crate::run_load`]; the spec is echoed into the JSON report so a result file says exactly
//! what produced it.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::stats::Slo;
use crate::workload::WorkloadSpec;

/// No run issues more requests than this, whatever the bounds say.
pub const HARD_MAX_REQUESTS: u64 = 10_000_000;
/// No run lasts longer than this, whatever the bounds say.
pub const HARD_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// One endpoint under test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// Label used in reports.
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8080`; the API path is appended.
    pub url: String,
}

impl Target {
    /// A target named `name` at base URL `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
        }
    }

    /// Parses `NAME=URL`, or a bare URL (named `default`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (name, url) = match s.split_once('=') {
            Some((n, u)) if !n.contains("://") => (n.trim(), u.trim()),
            _ => ("default", s.trim()),
        };
        if name.is_empty() {
            bail!("target `{s}` has an empty name");
        }
        let t = Target::new(name, url);
        t.uri(Endpoint::Chat)?;
        Ok(t)
    }

    /// The full request URI for `endpoint`.
    pub fn uri(&self, endpoint: Endpoint) -> anyhow::Result<http::Uri> {
        let full = format!("{}{}", self.url.trim_end_matches('/'), endpoint.path());
        let uri: http::Uri = full
            .parse()
            .with_context(|| format!("target `{}`: bad URL `{}`", self.name, self.url))?;
        match uri.scheme_str() {
            Some("http" | "https") => Ok(uri),
            Some(other) => bail!(
                "target `{}`: scheme `{other}` is not supported (use http:// or https://)",
                self.name
            ),
            None => bail!(
                "target `{}`: URL `{}` needs http:// or https://",
                self.name,
                self.url
            ),
        }
    }
}

/// Which OpenAI API the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/chat/completions` with `messages`.
    Chat,
    /// `POST /v1/completions` with `prompt`.
    Completions,
}

impl Endpoint {
    /// The URL path appended to a target's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// How inter-arrival gaps are drawn in open-loop mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Exponential gaps (a Poisson process): realistic, bursty.
    Poisson,
    /// Evenly spaced arrivals.
    Constant,
}

/// The load model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Load {
    /// Open loop: requests arrive at `rate` per second regardless of how the server keeps up
    /// (trace workloads use the trace's timestamps instead).
    Open { rate: f64, arrival: Arrival },
    /// Closed loop: `concurrency` virtual users each send a request, wait for it, repeat.
    Closed { concurrency: usize },
}

/// How each arrival picks a target when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetOrder {
    /// Arrival i goes to target i mod n.
    RoundRobin,
    /// Each arrival picks a target uniformly at random (seeded).
    Random,
}

/// Everything that defines one run. Build with [`LoadSpec::new`] and adjust the public fields.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSpec {
    /// Endpoints under test; arrivals are spread over them (see `target_order`).
    pub targets: Vec<Target>,
    /// Chat or text completions.
    pub endpoint: Endpoint,
    /// The `model` field sent; omitted when `None`.
    pub model: Option<String>,
    /// Open or closed loop.
    pub load: Load,
    /// Stop issuing requests after this long (in-flight requests still finish).
    #[serde(with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Stop after issuing this many requests (over all targets).
    pub max_requests: Option<u64>,
    /// How arrivals pick targets.
    pub target_order: TargetOrder,
    /// The targets are replicas of one service: one workload, its arrivals spread over them
    /// (a conversation's next turn goes wherever its arrival lands), rather than the same
    /// workload sent to each for comparison.
    pub spread: bool,
    /// What each request asks for.
    pub workload: WorkloadSpec,
    /// Latency objectives for goodput.
    pub slo: Slo,
    /// Per-request limit, from sending to the end of the stream.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Use HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1; over TLS for `https://`
    /// targets.
    pub http2: bool,
    /// Use HTTP/3 (`https://` targets only).
    #[serde(default)]
    pub http3: bool,
    /// The CA that signs `https://` targets' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<std::path::PathBuf>,
    /// Stream completions (SSE). When false, each reply is one JSON document (`stream: false`).
    pub stream: bool,
    /// Seeds every random choice (prompts, lengths, arrivals, target picks).
    pub seed: u64,
    /// Open loop only: arrivals that find this many requests in flight are dropped and counted.
    pub max_in_flight: usize,
    /// Extra headers on every request (e.g. authorization).
    pub headers: Vec<(String, String)>,
    /// A simulator's `/sim/oracle/cached` URL: each request's body is posted there first and
    /// the answer sent along as `x-switchyard-oracle-cached` (a gateway's oracle routing mode,
    /// for benchmarks; the TTFT clock starts after the lookup).
    #[serde(skip)]
    pub prefix_oracle: Option<http::Uri>,
    /// Completions prompts go as token ids, from this tokenizer.
    #[serde(skip)]
    pub prompt_ids: Option<switchyard_sim::prompt_tokenizer::PromptTokenizer>,
}

impl LoadSpec {
    /// A spec with the defaults: chat endpoint, one request per second Poisson, 60 s timeout,
    /// seed 0, no bounds (set `duration` or `max_requests`, or cancel the run's token).
    pub fn new(targets: Vec<Target>, workload: WorkloadSpec) -> Self {
        Self {
            targets,
            endpoint: Endpoint::Chat,
            model: None,
            load: Load::Open {
                rate: 1.0,
                arrival: Arrival::Poisson,
            },
            duration: None,
            max_requests: None,
            target_order: TargetOrder::RoundRobin,
            spread: false,
            workload,
            slo: Slo::default(),
            timeout: Duration::from_secs(60),
            http2: false,
            http3: false,
            cacert: None,
            stream: true,
            seed: 0,
            max_in_flight: 10_000,
            headers: Vec::new(),
            prefix_oracle: None,
            prompt_ids: None,
        }
    }

    /// Checks the spec for values that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("at least one target is needed");
        }
        for t in &self.targets {
            t.uri(self.endpoint)?;
        }
        match self.load {
            Load::Open { rate, .. } if !(rate.is_finite() && rate > 0.0) => {
                bail!("rate must be > 0")
            }
            Load::Closed { concurrency: 0 } => bail!("concurrency must be at least 1"),
            _ => {}
        }
        if self.max_in_flight == 0 {
            bail!("max_in_flight must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("timeout must be > 0");
        }
        for (k, v) in &self.headers {
            http::HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("bad header name `{k}`"))?;
            http::HeaderValue::from_str(v)
                .with_context(|| format!("bad value for header `{k}`"))?;
        }
        self.workload.validate()
    }

    /// The effective request bound (the hard cap applies when none or a larger one is set).
    pub fn request_bound(&self) -> u64 {
        self.max_requests
            .unwrap_or(HARD_MAX_REQUESTS)
            .min(HARD_MAX_REQUESTS)
    }

    /// The effective duration bound.
    pub fn duration_bound(&self) -> Duration {
        self.duration
            .unwrap_or(HARD_MAX_DURATION)
            .min(HARD_MAX_DURATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8000").unwrap(),
            Target::new("default", "http://127.0.0.1:8000")
        );
        assert_eq!(
            Target::parse("vllm=http://127.0.0.1:8000/").unwrap(),
            Target::new("vllm", "http://127.0.0.1:8000/")
        );
        let t = Target::parse("gw=http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            t.uri(Endpoint::Completions).unwrap().to_string(),
            "http://127.0.0.1:8080/v1/completions"
        );
        assert!(Target::parse("=http://x").is_err());
        assert!(Target::parse("x=https://127.0.0.1").is_ok());
        assert!(Target::parse("x=ftp://127.0.0.1").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
    }
}
