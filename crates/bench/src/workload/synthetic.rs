//! Synthetic workload: independent single-turn requests whose prompt and output lengths are
//! drawn from distributions. Good for capacity curves; it defeats prefix caches on purpose,
//! because every prompt is fresh random text.

use serde::Serialize;

use super::{Input, RequestPlan};
use crate::dist::Distribution;
use crate::text;

/// Parameters of the synthetic workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticSpec {
    /// Prompt length in tokens (≈ words).
    pub prompt_tokens: Distribution,
    /// `max_tokens` per request.
    pub output_tokens: Distribution,
}

impl Default for SyntheticSpec {
    /// 512 prompt tokens, 128 output tokens, both fixed.
    fn default() -> Self {
        Self {
            prompt_tokens: Distribution::Fixed { value: 512 },
            output_tokens: Distribution::Fixed { value: 128 },
        }
    }
}

/// Running state: one RNG per target, all seeded the same.
#[derive(Debug)]
pub struct Synthetic {
    spec: SyntheticSpec,
    rngs: Vec<fastrand::Rng>,
}

impl Synthetic {
    /// State for `targets` targets.
    pub fn new(spec: SyntheticSpec, targets: usize, seed: u64) -> Self {
        Self {
            spec,
            rngs: (0..targets)
                .map(|_| fastrand::Rng::with_seed(seed))
                .collect(),
        }
    }

    /// The next request for `target`.
    pub fn next(&mut self, target: usize) -> RequestPlan {
        let rng = &mut self.rngs[target];
        let prompt = self.spec.prompt_tokens.sample(rng);
        let max_tokens = self.spec.output_tokens.sample(rng);
        RequestPlan {
            target,
            input: Input::Text(text::words(rng, prompt)),
            max_tokens,
            model: None,
            headers: Vec::new(),
            session: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_see_the_same_sequence_and_seed_matters() {
        let spec = SyntheticSpec {
            prompt_tokens: Distribution::Uniform { lo: 10, hi: 50 },
            output_tokens: Distribution::Normal {
                mean: 64.0,
                sd: 8.0,
            },
        };
        let mut w = Synthetic::new(spec.clone(), 2, 9);
        let a: Vec<_> = (0..20).map(|_| w.next(0)).collect();
        let b: Vec<_> = (0..20).map(|_| w.next(1)).collect();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.input, x.max_tokens), (&y.input, y.max_tokens));
            assert_eq!(y.target, 1);
        }
        let Input::Text(t) = &a[0].input else {
            panic!("synthetic input is text")
        };
        let n = t.split(' ').count();
        assert!((10..=50).contains(&n));
        let mut other = Synthetic::new(spec, 1, 10);
        assert_ne!(other.next(0).input, a[0].input);
    }
}
