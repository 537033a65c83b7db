//! Workloads: what each request asks for.
//!
//! A workload is a source of [`RequestPlan`]s. Three are built in, chosen by a plain `match`
//! over [`WorkloadSpec`]: [`synthetic`] (independent prompts of sampled lengths), [`shared_prefix`]
//! (groups sharing a system prompt, multi-turn conversations that grow, which is what prefix
//! caching and cache-aware routing are for) and [`trace`] (JSONL replay with timestamps).
//!
//! Every target gets its own copy of the per-target state, seeded identically, so with several
//! targets each one sees the same sequence of prompts: differences in the report come from the
//! servers, not from the draw.

pub mod shared_prefix;
pub mod synthetic;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use shared_prefix::SharedPrefixSpec;
pub use synthetic::SyntheticSpec;
pub use trace::{TraceEntry, TraceSpec};

/// Which workload to run, with its parameters.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkloadSpec {
    /// Independent requests with sampled prompt and output lengths.
    Synthetic(SyntheticSpec),
    /// Groups sharing system prompts, multi-turn conversations.
    SharedPrefix(SharedPrefixSpec),
    /// Replay of a JSONL trace.
    Trace(TraceSpec),
}

impl WorkloadSpec {
    /// Checks parameters that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            WorkloadSpec::Synthetic(_) => Ok(()),
            WorkloadSpec::SharedPrefix(s) => s.validate(),
            WorkloadSpec::Trace(t) => t.validate(),
        }
    }
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message. Contents are shared (`Arc<str>`) because conversations resend history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Arc<str>,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: Role, content: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The request input: plain text or a conversation. The client adapts either to the endpoint
/// (text becomes one user message for chat; a conversation is joined for text completions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Chat(Vec<Message>),
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct RequestPlan {
    /// Index into the spec's targets.
    pub target: usize,
    pub input: Input,
    /// `max_tokens` sent (with `ignore_eos`, the expected output length).
    pub max_tokens: u32,
    /// Overrides the run's model for this request.
    pub model: Option<String>,
    /// Extra headers for this request.
    pub headers: Vec<(String, String)>,
    /// Set when the workload needs the reply back ([`Workload::complete`]).
    pub session: Option<usize>,
}

/// A running workload: the state behind a [`WorkloadSpec`].
#[derive(Debug)]
pub enum Workload {
    Synthetic(synthetic::Synthetic),
    SharedPrefix(shared_prefix::SharedPrefix),
    Trace(trace::Trace),
}

impl Workload {
    /// Builds the workload for `targets` targets (loads a trace file).
    pub fn new(spec: &WorkloadSpec, targets: usize, seed: u64) -> anyhow::Result<Self> {
        Ok(match spec {
            WorkloadSpec::Synthetic(s) => {
                Workload::Synthetic(synthetic::Synthetic::new(s.clone(), targets, seed))
            }
            WorkloadSpec::SharedPrefix(s) => {
                Workload::SharedPrefix(shared_prefix::SharedPrefix::new(s.clone(), targets, seed))
            }
            WorkloadSpec::Trace(t) => Workload::Trace(trace::Trace::new(t.entries()?, seed)),
        })
    }

    /// The next request for `target`; `None` when the workload is exhausted (end of trace).
    pub fn next(&mut self, target: usize) -> Option<RequestPlan> {
        match self {
            Workload::Synthetic(w) => Some(w.next(target)),
            Workload::SharedPrefix(w) => Some(w.next(target)),
            Workload::Trace(w) => w.next(target),
        }
    }

    /// Reports how a request with a `session` ended: its reply text, or `None` if it failed.
    pub fn complete(&mut self, target: usize, session: usize, reply: Option<&str>) {
        if let Workload::SharedPrefix(w) = self {
            w.complete(target, session, reply);
        }
    }

    /// Arrival offsets from the start, for workloads that bring their own schedule (traces).
    pub fn arrival_times(&self) -> Option<Vec<Duration>> {
        match self {
            Workload::Trace(w) => Some(w.arrival_times()),
            _ => None,
        }
    }
}
