//! The per-replica engine loop: the one place where simulated time meets real time.
//!
//! Each replica runs one tokio task that repeatedly asks the [`Scheduler`] for a step, sleeps for
//! the step's modelled duration ([`crate::cost_model`]), then completes the step, which sends each
//! request the token it produced. One timer per step serves the whole batch, so the simulator's
//! own cost is per step and per token-send, not per timer; that is what lets one core carry many
//! replicas.
//!
//! Tokio timers have millisecond resolution and fire late rather than early. If every step waited
//! for `now + duration`, the lateness would add up and the replica would run slow. Instead, when
//! the loop is already behind the previous step's deadline by less than [`CATCH_UP`], the next
//! step starts *at that deadline*: individual tokens may jitter by a millisecond, but token rates
//! match the model.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cost_model::Profile;
use crate::faults::FaultConfig;
use crate::metrics::EngineMetrics;
use crate::scheduler::{Scheduler, SchedulerConfig, SeqSpec};
use switchyard_kv_events::{EventBatch, Publisher};

/// How far behind schedule the loop may be and still chain steps back to back.
pub const CATCH_UP: Duration = Duration::from_millis(5);

/// How soon to retry when queued work could not be scheduled.
const IDLE_RETRY: Duration = Duration::from_millis(1);

/// What the engine needs to know about its replica.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Batch and cache limits.
    pub scheduler: SchedulerConfig,
    /// Cost model.
    pub profile: Profile,
    /// Speed multiplier.
    pub speed: f64,
    /// LoRA adapter names, indexed by adapter id.
    pub adapter_names: Vec<String>,
    /// Where this life's KV-cache events go (`--kv-events`).
    pub kv_events: Option<Arc<Publisher>>,
    /// Where the cache mirrors what it holds, for `/sim/oracle/cached`.
    pub truth: Option<Arc<crate::oracle::CacheView>>,
}

/// What the engine is asked to do.
#[derive(Debug)]
enum Work {
    Seq(SeqSpec),
    /// Drop the prefix cache (vLLM's `/reset_prefix_cache`).
    ResetPrefixCache,
}

/// Submits requests to a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: UnboundedSender<Work>,
}

impl EngineHandle {
    /// Queues a request; fails if the engine has stopped (replica crashed or shut down).
    pub fn submit(&self, spec: SeqSpec) -> Result<(), ()> {
        self.tx.send(Work::Seq(spec)).map_err(|_| ())
    }

    /// Drops the prefix cache before the next step; fails if the engine has stopped.
    pub fn reset_prefix_cache(&self) -> Result<(), ()> {
        self.tx.send(Work::ResetPrefixCache).map_err(|_| ())
    }
}

/// Starts an engine task that runs until `cancel` fires. It reads `faults` for the slow factor
/// and writes `metrics` once per step.
pub fn spawn(
    cfg: EngineConfig,
    faults: Arc<Mutex<FaultConfig>>,
    metrics: Arc<Mutex<EngineMetrics>>,
    cancel: CancellationToken,
) -> (EngineHandle, JoinHandle<()>) {
    let (tx, rx) = unbounded_channel();
    let task = tokio::spawn(run(cfg, rx, faults, metrics, cancel));
    (EngineHandle { tx }, task)
}

async fn run(
    cfg: EngineConfig,
    mut rx: UnboundedReceiver<Work>,
    faults: Arc<Mutex<FaultConfig>>,
    metrics: Arc<Mutex<EngineMetrics>>,
    cancel: CancellationToken,
) {
    let mut sched = Scheduler::new(cfg.scheduler);
    if cfg.kv_events.is_some() {
        sched.kv_mut().enable_events(fastrand::u64(..));
    }
    if let Some(view) = &cfg.truth {
        sched.kv_mut().mirror_into(view.clone());
    }
    let add = |sched: &mut Scheduler, w: Work| match w {
        Work::Seq(spec) => sched.add(spec),
        Work::ResetPrefixCache => sched.kv_mut().reset_prefix_cache(),
    };
    let mut prev_deadline: Option<Instant> = None;
    loop {
        while let Ok(w) = rx.try_recv() {
            add(&mut sched, w);
        }
        let work = {
            let mut m = metrics.lock().expect("metrics lock");
            let work = if sched.has_work() {
                sched.schedule(&mut m)
            } else {
                Default::default()
            };
            sched.update_gauges(&mut m, &cfg.adapter_names);
            work
        };
        publish(&cfg, &mut sched);
        if work.scheduled_tokens == 0 && work.lora_loads == 0 {
            // Idle: wait for a new request. (Queued work that cannot be scheduled should not
            // exist — admission control rejects requests larger than the cache — but if it did,
            // retry shortly instead of stalling.)
            prev_deadline = None;
            let stuck = sched.has_work();
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => add(&mut sched, w),
                    None => return,
                },
                _ = tokio::time::sleep(IDLE_RETRY), if stuck => {}
                _ = cancel.cancelled() => return,
            }
            continue;
        }
        let slow = faults.lock().expect("faults lock").effective_slow_factor();
        let duration = cfg.profile.step_time(&work, cfg.speed, slow);
        let now = Instant::now();
        let start = match prev_deadline {
            Some(d) if now >= d && now - d < CATCH_UP => d,
            _ => now,
        };
        let deadline = start + duration;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = cancel.cancelled() => return,
        }
        prev_deadline = Some(deadline);
        let mut m = metrics.lock().expect("metrics lock");
        sched.complete_step(Instant::now().max(deadline), &mut m);
        drop(m);
        publish(&cfg, &mut sched);
    }
}

/// Publishes the cache events of the step just planned or completed, as one batch.
fn publish(cfg: &EngineConfig, sched: &mut Scheduler) {
    let Some(publisher) = &cfg.kv_events else {
        return;
    };
    let events = sched.kv_mut().take_events();
    if events.is_empty() {
        return;
    }
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    publisher.publish(&EventBatch {
        ts,
        events,
        dp_rank: Some(0),
        unknown: 0,
    });
}
