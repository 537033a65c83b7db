//! The continuous-batching scheduler, after vLLM v1's unified scheduler.
//!
//! vLLM v1 does not separate "prefill" and "decode" phases: each request has `num_tokens` (prompt +
//! generated so far) and `num_computed` (tokens whose KV is in the cache), and every step gives
//! each scheduled request `min(num_tokens - num_computed, budget)` tokens. A decoding request needs
//! 1; a new request needs its uncached prompt, cut into chunks by the per-step token budget
//! (`max_num_batched_tokens`, chunked prefill). When a request's `num_computed` reaches
//! `num_tokens` at the end of a step, the step samples one new token for it.
//!
//! Order of a step, as in vLLM:
//! 1. running requests first, in admission order; if one needs a KV block and none is free, the
//!    most recently admitted running request is preempted (its blocks freed, its progress reset
//!    to zero: recompute) and put back at the head of the queue;
//! 2. then queued requests, first come first served, while there is token budget, a free batch
//!    slot (`max_num_seqs`) and enough KV blocks — none are admitted in a step that preempted.
//!    Admission looks the prompt's block hashes up in the prefix cache and computes only the rest.
//!    A request whose LoRA adapter cannot be made resident is passed over, not blocking others.
//!
//! The scheduler is synchronous and clock-free (time is passed in), so it is tested without
//! sockets or sleeps; [`crate::engine`] drives it with real timers.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::cost_model::StepWork;
use crate::kv_cache::{blocks_for, BlockId, KvCache, BLOCK_SIZE};
use crate::lora::{AdapterId, LoraManager, Residency};
use crate::metrics::EngineMetrics;

/// Why a request stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Hit `max_tokens`.
    Length,
    /// Reached its natural end (the simulated EOS).
    Stop,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// What the engine tells a request after a step that produced a token for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// Tokens generated so far (the new one included).
    pub generated: u32,
    /// Set on the last token.
    pub finish: Option<FinishReason>,
    /// Prompt tokens found in the prefix cache when the request was (last) admitted.
    pub cached_tokens: usize,
}

/// A request as submitted to the engine.
#[derive(Debug)]
pub struct SeqSpec {
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Hash chain of the prompt's full blocks ([`crate::kv_cache::block_hashes`]).
    pub block_hashes: Vec<u64>,
    /// The prompt's tokens (published with its blocks when KV events are on).
    pub tokens: Vec<u32>,
    /// Tokens to generate.
    pub output_len: u32,
    /// Reported when `output_len` is reached.
    pub finish: FinishReason,
    /// LoRA adapter, if any.
    pub adapter: Option<AdapterId>,
    /// Where tokens go; a closed receiver aborts the request.
    pub sink: UnboundedSender<Emitted>,
    /// When the request arrived (for TTFT and e2e latency).
    pub arrival: Instant,
    /// vLLM's request `priority`: lower runs first under [`Policy::Priority`].
    pub priority: i64,
}

impl SeqSpec {
    /// The order of [`Policy::Priority`]: priority, then arrival (vLLM's).
    fn rank(&self) -> (i64, Instant) {
        (self.priority, self.arrival)
    }
}

/// Which waiting request a replica admits first (vLLM `--scheduling-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Arrival order; a request asking for a priority other than 0 is refused, as vLLM does.
    #[default]
    Fcfs,
    /// Lowest `priority` first, then arrival; when the cache runs out, the running request
    /// ranked last is preempted (not the newest).
    Priority,
}

#[derive(Debug)]
struct Seq {
    spec: SeqSpec,
    generated: u32,
    num_computed: usize,
    blocks: Vec<BlockId>,
    hashed_blocks: usize,
    scheduled: usize,
    last_token_at: Option<Instant>,
    cached_tokens: usize,
}

impl Seq {
    fn num_tokens(&self) -> usize {
        self.spec.prompt_len + self.generated as usize
    }
}

/// Batch and cache limits of one replica.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Running requests at most.
    pub max_num_seqs: usize,
    /// Tokens per step at most.
    pub max_num_batched_tokens: usize,
    /// KV cache blocks.
    pub num_gpu_blocks: usize,
    /// Resident LoRA adapters at most.
    pub max_loras: usize,
    /// Admission order.
    pub policy: Policy,
}

/// Queue, batch and KV cache of one replica.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCache,
    lora: LoraManager,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
}

impl Scheduler {
    /// An idle scheduler.
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            kv: KvCache::new(cfg.num_gpu_blocks),
            lora: LoraManager::new(cfg.max_loras),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues a request.
    pub fn add(&mut self, spec: SeqSpec) {
        self.enqueue(
            Seq {
                spec,
                generated: 0,
                num_computed: 0,
                blocks: Vec::new(),
                hashed_blocks: 0,
                scheduled: 0,
                last_token_at: None,
                cached_tokens: 0,
            },
            false,
        );
    }

    /// Puts a new or preempted request in the waiting queue: at the back (a preempted one at
    /// the front) in arrival order; by rank under [`Policy::Priority`].
    fn enqueue(&mut self, seq: Seq, preempted: bool) {
        match (self.cfg.policy, preempted) {
            (Policy::Priority, _) => {
                let rank = seq.spec.rank();
                let at = self.waiting.partition_point(|w| w.spec.rank() <= rank);
                self.waiting.insert(at, seq);
            }
            (Policy::Fcfs, false) => self.waiting.push_back(seq),
            (Policy::Fcfs, true) => self.waiting.push_front(seq),
        }
    }

    /// The running request to preempt when the cache runs out: the newest, or the one ranked
    /// last under [`Policy::Priority`].
    fn victim(&self) -> usize {
        match self.cfg.policy {
            Policy::Fcfs => self.running.len() - 1,
            Policy::Priority => (0..self.running.len())
                .max_by_key(|&j| self.running[j].spec.rank())
                .expect("a request is running"),
        }
    }

    /// Whether any request is queued or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Plans the next step: picks requests and token counts, allocates their KV blocks, and
    /// returns what the step costs. Prefix-cache and preemption counters go to `m`.
    pub fn schedule(&mut self, m: &mut EngineMetrics) -> StepWork {
        self.drop_cancelled(m);
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;
        let mut lora_loads = 0;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let n = (seq.num_tokens() - seq.num_computed).min(budget);
            let need = blocks_for(seq.num_computed + n).saturating_sub(seq.blocks.len());
            let mut fits = true;
            while !self.kv.allocate(&mut self.running[i].blocks, &[], 0, need) {
                let v = self.victim();
                let victim = self.running.remove(v);
                preempted = true;
                let was_self = v == i;
                if v < i {
                    // Already given its tokens this step: they go back to the budget.
                    budget += victim.scheduled;
                    i -= 1;
                }
                self.preempt(victim, m);
                if was_self {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            self.running[i].scheduled = n;
            budget -= n;
            i += 1;
        }

        let mut passed_over = Vec::new();
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if let Some(a) = seq.spec.adapter {
                let running = &self.running;
                match self
                    .lora
                    .ensure(a, |x| running.iter().any(|s| s.spec.adapter == Some(x)))
                {
                    Residency::Resident => {}
                    Residency::Loaded => lora_loads += 1,
                    Residency::Blocked => {
                        passed_over.push(seq);
                        continue;
                    }
                }
            }
            let num_tokens = seq.num_tokens();
            // At least one token is always computed, so a fully cached prompt still runs a step.
            let max_hit = (num_tokens - 1) / BLOCK_SIZE;
            let hit = self.kv.cached_prefix_len(&seq.spec.block_hashes, max_hit);
            let cached = hit * BLOCK_SIZE;
            let n = (num_tokens - cached).min(budget);
            let new_blocks = blocks_for(cached + n) - hit;
            if !self
                .kv
                .allocate(&mut seq.blocks, &seq.spec.block_hashes, hit, new_blocks)
            {
                self.waiting.push_front(seq);
                break;
            }
            m.prefix_queries += num_tokens as u64;
            m.prefix_hits += cached as u64;
            seq.num_computed = cached;
            seq.cached_tokens = cached;
            seq.hashed_blocks = hit;
            seq.scheduled = n;
            budget -= n;
            self.running.push(seq);
        }
        for seq in passed_over.into_iter().rev() {
            self.waiting.push_front(seq);
        }

        let mut work = StepWork {
            lora_loads,
            ..Default::default()
        };
        for seq in self.running.iter().filter(|s| s.scheduled > 0) {
            let end = seq.num_computed + seq.scheduled;
            work.scheduled_tokens += seq.scheduled;
            work.context_tokens += end;
            if end == seq.num_tokens() {
                work.decode_seqs += 1;
            }
            if seq.num_computed < seq.num_tokens().saturating_sub(1) {
                work.prefill_tokens += seq.scheduled;
            }
        }
        work
    }

    fn preempt(&mut self, mut seq: Seq, m: &mut EngineMetrics) {
        self.kv.free(&mut seq.blocks);
        seq.num_computed = 0;
        seq.hashed_blocks = 0;
        seq.scheduled = 0;
        m.preemptions += 1;
        self.enqueue(seq, true);
    }

    fn drop_cancelled(&mut self, m: &mut EngineMetrics) {
        let kv = &mut self.kv;
        let mut drop_if_closed = |s: &mut Seq| {
            if s.spec.sink.is_closed() {
                kv.free(&mut s.blocks);
                m.finished[2] += 1;
                false
            } else {
                true
            }
        };
        self.running.retain_mut(&mut drop_if_closed);
        self.waiting.retain_mut(drop_if_closed);
    }

    /// Finishes the step planned by [`Scheduler::schedule`] at time `now`: advances progress,
    /// caches newly full prompt blocks, samples a token for every request whose KV is complete,
    /// and retires finished requests.
    pub fn complete_step(&mut self, now: Instant, m: &mut EngineMetrics) {
        m.observe_busy(self.running.len(), now);
        let mut i = 0;
        while i < self.running.len() {
            let seq = &mut self.running[i];
            if seq.scheduled == 0 {
                i += 1;
                continue;
            }
            seq.num_computed += seq.scheduled;
            seq.scheduled = 0;
            let full = (seq.num_computed.min(seq.spec.prompt_len) / BLOCK_SIZE)
                .min(seq.spec.block_hashes.len());
            let mut fresh = Vec::new();
            while seq.hashed_blocks < full {
                if self.kv.register(
                    seq.blocks[seq.hashed_blocks],
                    seq.spec.block_hashes[seq.hashed_blocks],
                ) && self.kv.events_enabled()
                {
                    fresh.push(seq.hashed_blocks);
                }
                seq.hashed_blocks += 1;
            }
            if !fresh.is_empty() {
                self.kv.note_stored(
                    &seq.spec.block_hashes,
                    &seq.spec.tokens,
                    &fresh,
                    seq.spec.adapter,
                );
            }
            if seq.num_computed < seq.num_tokens() {
                i += 1;
                continue;
            }
            seq.generated += 1;
            m.generation_tokens += 1;
            match seq.last_token_at {
                None => {
                    m.ttft
                        .observe(now.duration_since(seq.spec.arrival).as_secs_f64());
                    m.prompt_tokens += seq.spec.prompt_len as u64;
                }
                Some(t) => m.itl.observe(now.duration_since(t).as_secs_f64()),
            }
            seq.last_token_at = Some(now);
            let finish = (seq.generated >= seq.spec.output_len).then_some(seq.spec.finish);
            let delivered = seq
                .spec
                .sink
                .send(Emitted {
                    generated: seq.generated,
                    finish,
                    cached_tokens: seq.cached_tokens,
                })
                .is_ok();
            if finish.is_none() && delivered {
                i += 1;
                continue;
            }
            let mut seq = self.running.remove(i);
            self.kv.free(&mut seq.blocks);
            match finish {
                Some(reason) if delivered => {
                    m.e2e
                        .observe(now.duration_since(seq.spec.arrival).as_secs_f64());
                    m.finished[usize::from(reason == FinishReason::Stop)] += 1;
                }
                _ => m.finished[2] += 1,
            }
        }
    }

    /// Writes queue, batch, KV and LoRA gauges into `m`; `adapter_names` maps adapter ids.
    pub fn update_gauges(&self, m: &mut EngineMetrics, adapter_names: &[String]) {
        m.running = self.running.len();
        m.waiting = self.waiting.len();
        m.kv_usage = self.kv.usage();
        m.evicted_blocks = self.kv.evicted();
        if adapter_names.is_empty() {
            return;
        }
        let names = |ids: &mut dyn Iterator<Item = AdapterId>| {
            let mut v: Vec<AdapterId> = ids.collect();
            v.sort_unstable();
            v.dedup();
            v.into_iter()
                .map(|a| adapter_names[usize::from(a)].clone())
                .collect()
        };
        m.running_loras = names(&mut self.running.iter().filter_map(|s| s.spec.adapter));
        m.waiting_loras = names(&mut self.waiting.iter().filter_map(|s| s.spec.adapter));
    }

    /// The KV cache, to publish its events and reset it.
    pub fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// The KV cache (read-only, for tests).
    #[cfg(test)]
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
