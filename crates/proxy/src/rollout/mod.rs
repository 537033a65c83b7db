//! Canary rollouts driven by the gateway (`routes[].rollout`). Every `interval` the controller
//! takes what each arm saw since the last analysis (`judge.rs`), compares canary with baseline on
//! each check, and moves: a pass advances to the next step (reaching 100% is promotion), a
//! failure holds the step, and `failure_limit` failures in a row roll the canary back to 0%. Too
//! few requests in either arm is inconclusive: the step holds and nothing is counted. The split
//! reads the canary's share per request (`pipeline/split.rs`); the admin API pauses, resumes,
//! promotes or aborts. A rollout whose block is unchanged survives a reload with its state, and
//! with `runtime.state_dir` a restart too (`<state_dir>/rollouts/<route>.json`, written on every
//! change of phase or step, restored when its block is the same).

pub mod judge;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use switchyard_telemetry::metrics::{RolloutCheckLabels, RolloutLabels, RouteNameLabels};
use switchyard_telemetry::Metrics;

use judge::{ArmSample, ArmWindow, CheckResult};

/// Analyses kept for the admin API.
const HISTORY: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }
}

/// What an operator asks of a rollout through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "promote" => Some(Self::Promote),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }
}

/// One interval's judgement.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub at_unix_ms: u64,
    pub canary_percent: u32,
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: &'static str,
    pub baseline_requests: u64,
    pub canary_requests: u64,
    pub checks: Vec<CheckResult>,
}

struct State {
    phase: Phase,
    /// Index into `steps`.
    step: usize,
    failures: u32,
    analyses: VecDeque<Analysis>,
}

/// What a restart restores: the phase and step of a rollout whose block is unchanged.
#[derive(Serialize, serde::Deserialize)]
struct Saved {
    config: switchyard_config::rollout::Rollout,
    phase: Phase,
    step: usize,
    failures: u32,
    canary_percent: u32,
}

/// One route's rollout.
pub struct Rollout {
    pub route: String,
    pub config: switchyard_config::rollout::Rollout,
    /// The baseline's and the canary's indices among the route's targets.
    pub baseline: usize,
    pub canary: usize,
    /// What each arm saw since the last analysis: baseline, canary.
    pub arms: [Arc<ArmWindow>; 2],
    canary_percent: AtomicU32,
    state: Mutex<State>,
    percent_gauge: Gauge,
    analyses: Family<RolloutLabels, Counter>,
    transitions: Family<RolloutLabels, Counter>,
    check_values: Family<RolloutCheckLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Where the state is saved, if anywhere.
    state_file: Option<std::path::PathBuf>,
}

impl Rollout {
    /// A rollout at its first step; `pools` are the route's target pools, in order.
    pub fn new(
        route: &str,
        config: &switchyard_config::rollout::Rollout,
        pools: &[&str],
        metrics: &Metrics,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Arc<Self>, String> {
        let index = |pool: &str| {
            pools
                .iter()
                .position(|p| *p == pool)
                .ok_or_else(|| format!("route `{route}`: rollout pool `{pool}` is not a backend"))
        };
        let state_file = state_dir.map(|d| d.join("rollouts").join(format!("{route}.json")));
        let saved = state_file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice::<Saved>(&bytes).ok())
            .filter(|s| s.config == *config && s.step < config.steps.len().max(1));
        let first = config.steps.first().copied().unwrap_or(100);
        let (phase, step, failures, percent) = saved
            .as_ref()
            .map_or((Phase::Progressing, 0, 0, first), |s| {
                (s.phase, s.step, s.failures, s.canary_percent.min(100))
            });
        let rollout = Arc::new(Self {
            route: route.to_string(),
            config: config.clone(),
            baseline: index(&config.baseline)?,
            canary: index(&config.canary)?,
            arms: [Arc::default(), Arc::default()],
            canary_percent: AtomicU32::new(percent),
            state: Mutex::new(State {
                phase,
                step,
                failures,
                analyses: VecDeque::new(),
            }),
            percent_gauge: metrics
                .rollout_canary_percent
                .get_or_create(&RouteNameLabels {
                    route: route.to_string(),
                })
                .clone(),
            analyses: metrics.rollout_analyses.clone(),
            transitions: metrics.rollout_transitions.clone(),
            check_values: metrics.rollout_check_value.clone(),
            state_file,
        });
        rollout.percent_gauge.set(i64::from(percent));
        let what = if saved.is_some() {
            "restored"
        } else {
            "started"
        };
        event(route, phase, percent, what);
        Ok(rollout)
    }

    /// The canary's share of the route's requests now, in percent.
    pub fn canary_percent(&self) -> u32 {
        self.canary_percent.load(Ordering::Relaxed)
    }

    /// The target for a request placed at `at` in `0..100`: the canary owns the top of the
    /// range, so a sticky user already in the canary stays there as it grows.
    pub fn target_at(&self, at: u32) -> usize {
        if at >= 100 - self.canary_percent().min(100) {
            self.canary
        } else {
            self.baseline
        }
    }

    /// The arm window of target `index`, if it is one of the two arms.
    pub fn arm(&self, index: usize) -> Option<&Arc<ArmWindow>> {
        if index == self.baseline {
            Some(&self.arms[0])
        } else if index == self.canary {
            Some(&self.arms[1])
        } else {
            None
        }
    }

    /// Analyse every `interval` while anything still holds the rollout.
    pub fn spawn(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.config.interval;
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rollout) = weak.upgrade() else {
                    return;
                };
                rollout.analyse();
            }
        });
    }

    /// One analysis: judge the interval and move.
    pub fn analyse(&self) {
        let baseline = self.arms[0].take();
        let canary = self.arms[1].take();
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.phase != Phase::Progressing {
            return;
        }
        let min = self.config.min_requests;
        let checks: Vec<CheckResult> = if baseline.requests < min || canary.requests < min {
            Vec::new()
        } else {
            self.config
                .checks
                .iter()
                .map(|c| judge::judge(c, &baseline, &canary))
                .collect()
        };
        let verdict = if checks.is_empty() {
            "inconclusive"
        } else if checks.iter().all(|c| c.passed) {
            "pass"
        } else {
            "fail"
        };
        for c in &checks {
            self.check_values
                .get_or_create(&RolloutCheckLabels {
                    route: self.route.clone(),
                    check: c.metric,
                })
                .set(c.value);
        }
        self.count(&self.analyses, verdict);
        self.remember(&mut s, verdict, &baseline, &canary, checks);
        match verdict {
            "pass" => {
                s.failures = 0;
                let next = s.step + 1;
                match self.config.steps.get(next) {
                    Some(&p) if p >= 100 => self.finish(&mut s, Phase::Promoted, 100),
                    Some(_) => {
                        s.step = next;
                        self.set_percent(&s);
                        self.save(&s);
                        event(&self.route, s.phase, self.canary_percent(), "stepped");
                    }
                    None if self.config.on_success
                        == switchyard_config::rollout::OnSuccess::Promote =>
                    {
                        self.finish(&mut s, Phase::Promoted, 100);
                    }
                    None => self.finish(&mut s, Phase::Paused, self.canary_percent()),
                }
            }
            "fail" => {
                s.failures += 1;
                if s.failures >= self.config.failure_limit {
                    self.finish(&mut s, Phase::RolledBack, 0);
                } else {
                    self.save(&s);
                }
            }
            _ => {}
        }
    }

    /// Apply an operator's action.
    pub fn act(&self, action: Action) -> Result<Phase, String> {
        let Ok(mut s) = self.state.lock() else {
            return Err("rollout state unavailable".into());
        };
        match (action, s.phase) {
            (Action::Pause, Phase::Progressing) => {
                let p = self.canary_percent();
                self.finish(&mut s, Phase::Paused, p);
            }
            (Action::Resume, Phase::Paused) => {
                s.failures = 0;
                self.transition(&mut s, Phase::Progressing);
                self.set_percent(&s);
                // Measure the resumed step from now, not from before the pause.
                self.arms[0].take();
                self.arms[1].take();
            }
            (Action::Promote, Phase::Progressing | Phase::Paused) => {
                self.finish(&mut s, Phase::Promoted, 100);
            }
            (Action::Abort, Phase::Progressing | Phase::Paused) => {
                self.finish(&mut s, Phase::Aborted, 0);
            }
            (a, p) => return Err(format!("cannot {a:?} a rollout that is {}", p.as_str())),
        }
        Ok(s.phase)
    }

    /// The admin API's view.
    pub fn view(&self) -> serde_json::Value {
        let Ok(s) = self.state.lock() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "route": self.route,
            "baseline": self.config.baseline,
            "canary": self.config.canary,
            "phase": s.phase,
            "step": s.step,
            "steps": self.config.steps,
            "canary_percent": self.canary_percent(),
            "consecutive_failures": s.failures,
            "analyses": s.analyses,
        })
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().map_or(Phase::Paused, |s| s.phase)
    }

    fn set_percent(&self, s: &State) {
        let p = self
            .config
            .steps
            .get(s.step)
            .copied()
            .unwrap_or(100)
            .min(100);
        self.canary_percent.store(p, Ordering::Relaxed);
        self.percent_gauge.set(i64::from(p));
    }

    /// Leave `Progressing` (or `Paused`) for `phase`, with the canary at `percent`.
    fn finish(&self, s: &mut State, phase: Phase, percent: u32) {
        self.canary_percent.store(percent, Ordering::Relaxed);
        self.percent_gauge.set(i64::from(percent));
        self.transition(s, phase);
    }

    fn transition(&self, s: &mut State, phase: Phase) {
        s.phase = phase;
        self.count(&self.transitions, phase.as_str());
        self.save(s);
        event(&self.route, phase, self.canary_percent(), "transition");
    }

    /// Write the state where a restart finds it: to a temporary file, then renamed over the old
    /// one, so a crash mid-write leaves the previous state, never half of one. A failure is
    /// logged; the rollout goes on.
    fn save(&self, s: &State) {
        let Some(file) = &self.state_file else {
            return;
        };
        let saved = Saved {
            config: self.config.clone(),
            phase: s.phase,
            step: s.step,
            failures: s.failures,
            canary_percent: self.canary_percent(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = file.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&saved).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            tracing::warn!(route = %self.route, file = %file.display(), error = %e, "rollout state not saved");
        }
    }

    fn count(&self, family: &Family<RolloutLabels, Counter>, what: &'static str) {
        family
            .get_or_create(&RolloutLabels {
                route: self.route.clone(),
                what,
            })
            .inc();
    }

    fn remember(
        &self,
        s: &mut State,
        verdict: &'static str,
        baseline: &ArmSample,
        canary: &ArmSample,
        checks: Vec<CheckResult>,
    ) {
        let at_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let analysis = Analysis {
            at_unix_ms,
            canary_percent: self.canary_percent(),
            verdict,
            baseline_requests: baseline.requests,
            canary_requests: canary.requests,
            checks,
        };
        tracing::info!(
            target: "switchyard::rollout",
            route = %self.route,
            verdict,
            canary_percent = analysis.canary_percent,
            baseline_requests = baseline.requests,
            canary_requests = canary.requests,
            checks = %serde_json::to_string(&analysis.checks).unwrap_or_default(),
            "rollout analysis"
        );
        if s.analyses.len() == HISTORY {
            s.analyses.pop_front();
        }
        s.analyses.push_back(analysis);
    }
}

/// One JSON log line per state change.
fn event(route: &str, phase: Phase, canary_percent: u32, what: &str) {
    tracing::info!(
        target: "switchyard::rollout",
        route,
        phase = phase.as_str(),
        canary_percent,
        event = what,
        "rollout {what}"
    );
}
