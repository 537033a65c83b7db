//! Token-count distributions for synthetic workloads.
//!
//! Real traffic is not fixed-length: prompt lengths are heavy-tailed and output lengths vary,
//! and both change batching and KV-cache behaviour. A distribution is named on the command line
//! as `fixed`, `uniform:LO,HI`, `normal:MEAN,SD` or `lognormal:MEAN,SD` (the log-normal is
//! parameterised by the mean and standard deviation of the token count itself, not of its
//! logarithm, so the numbers read the same as for `normal`). Samples come from a seeded
//! [`fastrand::Rng`], so a seed reproduces a run exactly.

use anyhow::{bail, Context};
use serde::Serialize;

/// Largest token count a sample may take; guards against absurd tails.
pub const MAX_TOKENS_SAMPLE: u32 = 1_000_000;

/// A distribution of token counts. Samples are rounded and clamped to `1..=MAX_TOKENS_SAMPLE`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    /// Always `value`.
    Fixed { value: u32 },
    /// Uniform over the integers `lo..=hi`.
    Uniform { lo: u32, hi: u32 },
    /// Normal with the given mean and standard deviation.
    Normal { mean: f64, sd: f64 },
    /// Log-normal whose samples have the given mean and standard deviation.
    #[serde(rename = "lognormal")]
    LogNormal { mean: f64, sd: f64 },
}

impl Distribution {
    /// Parses `fixed`, `fixed:N`, `uniform:LO,HI`, `normal:MEAN,SD` or `lognormal:MEAN,SD`.
    /// A bare `fixed` takes `default` (the `--prompt-tokens`/`--output-tokens` value).
    pub fn parse(spec: &str, default: u32) -> anyhow::Result<Self> {
        let (kind, params) = match spec.split_once(':') {
            Some((k, p)) => (k.trim(), Some(p)),
            None => (spec.trim(), None),
        };
        let nums = |p: Option<&str>, n: usize| -> anyhow::Result<Vec<f64>> {
            let p = p.with_context(|| {
                format!(
                    "`{kind}` needs {n} parameter(s), e.g. `{kind}:{}`",
                    example(kind)
                )
            })?;
            let v = p
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<f64>()
                        .map_err(|_| anyhow::anyhow!("`{s}` is not a number"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if v.len() != n || v.iter().any(|x| !x.is_finite() || *x < 0.0) {
                bail!(
                    "`{kind}` needs {n} non-negative numbers, e.g. `{kind}:{}`",
                    example(kind)
                );
            }
            Ok(v)
        };
        let d = match kind {
            "fixed" => match params {
                None => Distribution::Fixed { value: default },
                Some(p) => Distribution::Fixed { value: p.trim().parse().context("fixed:N needs an integer")? },
            },
            "uniform" => {
                let v = nums(params, 2)?;
                if v[0] > v[1] {
                    bail!("uniform:LO,HI needs LO <= HI");
                }
                Distribution::Uniform { lo: v[0] as u32, hi: v[1] as u32 }
            }
            "normal" => {
                let v = nums(params, 2)?;
                Distribution::Normal { mean: v[0], sd: v[1] }
            }
            "lognormal" => {
                let v = nums(params, 2)?;
                if v[0] <= 0.0 {
                    bail!("lognormal:MEAN,SD needs MEAN > 0");
                }
                Distribution::LogNormal { mean: v[0], sd: v[1] }
            }
            other => bail!("unknown distribution `{other}`; expected fixed, uniform:LO,HI, normal:MEAN,SD or lognormal:MEAN,SD"),
        };
        Ok(d)
    }

    /// Draws one token count.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u32 {
        let x = match *self {
            Distribution::Fixed { value } => value as f64,
            Distribution::Uniform { lo, hi } => rng.u32(lo..=hi) as f64,
            Distribution::Normal { mean, sd } => mean + sd * standard_normal(rng),
            Distribution::LogNormal { mean, sd } => {
                let sigma2 = (1.0 + (sd * sd) / (mean * mean)).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                (mu + sigma2.sqrt() * standard_normal(rng)).exp()
            }
        };
        x.round().clamp(1.0, MAX_TOKENS_SAMPLE as f64) as u32
    }
}

fn example(kind: &str) -> &'static str {
    match kind {
        "uniform" => "128,1024",
        _ => "512,128",
    }
}

/// Box–Muller transform: one standard normal draw from two uniforms.
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1], so ln is finite
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(d: &Distribution, seed: u64, n: usize) -> Vec<u32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Distribution::parse("fixed", 7).unwrap(),
            Distribution::Fixed { value: 7 }
        );
        assert_eq!(
            Distribution::parse("fixed:9", 7).unwrap(),
            Distribution::Fixed { value: 9 }
        );
        assert_eq!(
            Distribution::parse("uniform:1,5", 7).unwrap(),
            Distribution::Uniform { lo: 1, hi: 5 }
        );
        assert_eq!(
            Distribution::parse("normal:100,10", 7).unwrap(),
            Distribution::Normal {
                mean: 100.0,
                sd: 10.0
            }
        );
        assert_eq!(
            Distribution::parse("lognormal:100,50", 7).unwrap(),
            Distribution::LogNormal {
                mean: 100.0,
                sd: 50.0
            }
        );
        for bad in [
            "zipf",
            "uniform:5,1",
            "normal:1",
            "normal",
            "lognormal:0,1",
            "uniform:a,b",
        ] {
            assert!(
                Distribution::parse(bad, 7).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn same_seed_same_draws_and_seeds_differ() {
        for spec in ["uniform:10,1000", "normal:500,100", "lognormal:500,300"] {
            let d = Distribution::parse(spec, 1).unwrap();
            assert_eq!(draws(&d, 42, 100), draws(&d, 42, 100), "{spec}");
            assert_ne!(draws(&d, 42, 100), draws(&d, 43, 100), "{spec}");
        }
    }

    #[test]
    fn moments_are_roughly_right() {
        for (spec, mean) in [
            ("normal:500,100", 500.0),
            ("lognormal:500,300", 500.0),
            ("uniform:100,300", 200.0),
        ] {
            let d = Distribution::parse(spec, 1).unwrap();
            let v = draws(&d, 1, 20_000);
            let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            assert!((m - mean).abs() / mean < 0.03, "{spec}: mean {m}");
        }
        let v = draws(&Distribution::Uniform { lo: 3, hi: 5 }, 1, 1000);
        assert!(v.iter().all(|&x| (3..=5).contains(&x)));
        assert!(draws(&Distribution::Normal { mean: 0.0, sd: 5.0 }, 1, 1000)
            .iter()
            .all(|&x| x >= 1));
    }
}
