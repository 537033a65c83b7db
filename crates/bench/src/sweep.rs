//! Load sweeps: the same workload at increasing load, to find where latency bends.
//!
//! One number at one rate says little; the useful picture is latency against offered load,
//! with the knee where queueing starts. A sweep runs the spec once per level (`rate=1,2,4,8` or
//! `concurrency=1,8,32`), every level against every target, each level a fresh run with the same
//! seed, so levels differ only in load.

use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::report::Report;
use crate::runner::{run_load_with_progress, Progress};
use crate::spec::{Arrival, Load, LoadSpec};

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKind {
    /// Open-loop request rate (per second).
    Rate,
    /// Closed-loop concurrency.
    Concurrency,
}

/// A parsed `--sweep` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub kind: SweepKind,
    pub levels: Vec<f64>,
}

impl SweepSpec {
    /// Parses `rate=1,2,4` or `concurrency=1,8,32`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (k, v) = s
            .split_once('=')
            .context("--sweep should look like rate=1,2,4 or concurrency=1,8,32")?;
        let kind = match k.trim() {
            "rate" => SweepKind::Rate,
            "concurrency" => SweepKind::Concurrency,
            other => bail!("cannot sweep `{other}`; use rate or concurrency"),
        };
        let levels = v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("sweep level `{x}` is not a number"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if levels.is_empty() || levels.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
            bail!("sweep levels must be positive numbers");
        }
        if kind == SweepKind::Concurrency && levels.iter().any(|l| l.fract() != 0.0) {
            bail!("concurrency levels must be whole numbers");
        }
        Ok(Self { kind, levels })
    }

    /// `base` with its load set to `level`. Rate sweeps keep the base's arrival process.
    pub fn apply(&self, base: &LoadSpec, level: f64) -> LoadSpec {
        let mut spec = base.clone();
        spec.load = match self.kind {
            SweepKind::Rate => {
                let arrival = match base.load {
                    Load::Open { arrival, .. } => arrival,
                    Load::Closed { .. } => Arrival::Poisson,
                };
                Load::Open {
                    rate: level,
                    arrival,
                }
            }
            SweepKind::Concurrency => Load::Closed {
                concurrency: level as usize,
            },
        };
        spec
    }
}

/// One sweep level's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub level: f64,
    pub report: Report,
}

/// All levels of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub sweep: SweepSpec,
    pub points: Vec<SweepPoint>,
}

/// Runs `base` at every level of `sweep`, calling `on_level` after each (for printing). Stops
/// early, keeping finished levels, when `stop` is cancelled. `progress` counts across levels.
pub async fn run_sweep(
    base: &LoadSpec,
    sweep: &SweepSpec,
    stop: CancellationToken,
    progress: Arc<Progress>,
    mut on_level: impl FnMut(f64, &Report),
) -> anyhow::Result<SweepReport> {
    let mut points = Vec::new();
    for &level in &sweep.levels {
        if stop.is_cancelled() {
            break;
        }
        let report =
            run_load_with_progress(sweep.apply(base, level), stop.clone(), progress.clone())
                .await?;
        on_level(level, &report);
        points.push(SweepPoint { level, report });
    }
    Ok(SweepReport {
        sweep: sweep.clone(),
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{SyntheticSpec, WorkloadSpec};
    use crate::Target;

    #[test]
    fn parse_and_apply() {
        let s = SweepSpec::parse("rate=1, 2.5,4").unwrap();
        assert_eq!(
            s,
            SweepSpec {
                kind: SweepKind::Rate,
                levels: vec![1.0, 2.5, 4.0]
            }
        );
        assert!(SweepSpec::parse("concurrency=1.5").is_err());
        assert!(SweepSpec::parse("rps=1").is_err());
        assert!(SweepSpec::parse("rate=0").is_err());
        assert!(SweepSpec::parse("rate").is_err());
        let mut base = LoadSpec::new(
            vec![Target::new("a", "http://x")],
            WorkloadSpec::Synthetic(SyntheticSpec::default()),
        );
        base.load = Load::Open {
            rate: 1.0,
            arrival: Arrival::Constant,
        };
        assert_eq!(
            s.apply(&base, 4.0).load,
            Load::Open {
                rate: 4.0,
                arrival: Arrival::Constant
            }
        );
        let c = SweepSpec::parse("concurrency=8").unwrap();
        assert_eq!(c.apply(&base, 8.0).load, Load::Closed { concurrency: 8 });
    }
}
