//! How long one engine step takes: a roofline model of a dense decoder on one GPU.
//!
//! A vLLM step runs one forward pass over every token scheduled in it: prompt chunks (prefill)
//! and one token per decoding request. That pass must
//!
//! * read all the weights from HBM once, and the K/V of every context token each attended token
//!   looks at (memory time), and
//! * do about `2 × parameters` FLOPs per scheduled token (compute time).
//!
//! The GPU overlaps the two, so the pass takes the larger, plus a fixed per-step host overhead
//! (scheduling, input preparation, sampling, kernel launch):
//!
//! ```text
//! step = base_overhead
//!      + max(weights_read + kv_read_per_token × context_tokens,
//!            compute_per_token × scheduled_tokens)
//!      + lora_load × adapters loaded this step
//! ```
//!
//! Small decode batches are memory-bound (the step costs about one weight read, whatever the batch
//! size, which is why batching is nearly free); big prefill chunks are compute-bound (cost grows
//! with uncached prompt tokens, which is what prefix caching saves). Attention FLOPs and the
//! quadratic prefill term are left out: for an 8B model under 8k context they are small next to the
//! matmuls. Constants per GPU are derived in `docs/sim.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hardware profile: the cost-model constants for Llama-3.1-8B (bf16) on one GPU type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name as given on the command line.
    pub name: String,
    /// Fixed host-side cost of every step, seconds.
    pub base_overhead_s: f64,
    /// Time to stream the weights from HBM once, seconds.
    pub weights_read_s: f64,
    /// Time to read one context token's K and V (all layers), seconds.
    pub kv_read_per_token_s: f64,
    /// Matmul time per scheduled token, seconds.
    pub compute_per_token_s: f64,
    /// KV cache size in 16-token blocks.
    pub num_gpu_blocks: usize,
    /// Time to load one LoRA adapter into GPU memory, seconds.
    pub lora_load_s: f64,
}

/// Names accepted by [`Profile::named`].
pub const PROFILE_NAMES: [&str; 3] = ["h100", "a100", "l4"];

impl Profile {
    /// The built-in profile `name` (`h100`, `a100`, `l4`), if it exists.
    pub fn named(name: &str) -> Option<Profile> {
        // (weights, kv/token, compute/token) follow from the datasheet peak, the model size and an
        // achieved fraction of peak (70% of bandwidth, 60% of bf16 dense FLOPs); see docs/sim.md.
        const WEIGHT_BYTES: f64 = 16.06e9; // 8.03 B params × 2 bytes
        const KV_BYTES_PER_TOKEN: f64 = 131_072.0; // 2 × 32 layers × 8 kv heads × 128 × 2 bytes
        const FLOPS_PER_TOKEN: f64 = 16.06e9; // 2 × params
        let derive = |peak_flops: f64, bandwidth: f64, base: f64, blocks: usize, lora: f64| {
            let bw = bandwidth * 0.7;
            Profile {
                name: name.to_string(),
                base_overhead_s: base,
                weights_read_s: WEIGHT_BYTES / bw,
                kv_read_per_token_s: KV_BYTES_PER_TOKEN / bw,
                compute_per_token_s: FLOPS_PER_TOKEN / (peak_flops * 0.6),
                num_gpu_blocks: blocks,
                lora_load_s: lora,
            }
        };
        match name {
            "h100" => Some(derive(989e12, 3.35e12, 0.001, 26_900, 0.05)),
            "a100" => Some(derive(312e12, 2.039e12, 0.0015, 26_900, 0.08)),
            "l4" => Some(derive(121e12, 300e9, 0.002, 1_700, 0.2)),
            _ => None,
        }
    }
}

/// What one step does, as far as its cost is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepWork {
    /// Tokens run through the model this step (prefill chunk tokens + one per decoding request).
    pub scheduled_tokens: usize,
    /// Context tokens whose K/V the step reads (sum over scheduled requests of their length).
    pub context_tokens: usize,
    /// Prefill tokens among `scheduled_tokens` (for metrics and tests; cost is by total).
    pub prefill_tokens: usize,
    /// Requests that produce a token this step.
    pub decode_seqs: usize,
    /// LoRA adapters loaded before this step's forward pass.
    pub lora_loads: usize,
}

impl Profile {
    /// Duration of a step doing `work`, stretched by `slow_factor` and shrunk by `speed`.
    pub fn step_time(&self, work: &StepWork, speed: f64, slow_factor: f64) -> Duration {
        if work.scheduled_tokens == 0 && work.lora_loads == 0 {
            return Duration::ZERO;
        }
        let memory = self.weights_read_s + self.kv_read_per_token_s * work.context_tokens as f64;
        let compute = self.compute_per_token_s * work.scheduled_tokens as f64;
        let secs =
            self.base_overhead_s + memory.max(compute) + self.lora_load_s * work.lora_loads as f64;
        Duration::from_secs_f64(secs * slow_factor.max(0.0) / speed.max(1e-6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    fn decode(batch: usize, ctx_each: usize) -> StepWork {
        StepWork {
            scheduled_tokens: batch,
            context_tokens: batch * ctx_each,
            decode_seqs: batch,
            ..Default::default()
        }
    }

    #[test]
    fn h100_single_stream_decode_is_memory_bound_near_8ms() {
        let p = Profile::named("h100").unwrap();
        let t = ms(p.step_time(&decode(1, 1000), 1.0, 1.0));
        assert!((7.0..9.0).contains(&t), "{t}");
    }

    #[test]
    fn batching_is_cheap_until_kv_reads_dominate() {
        let p = Profile::named("h100").unwrap();
        let one = p.step_time(&decode(1, 1000), 1.0, 1.0);
        let b32 = p.step_time(&decode(32, 1000), 1.0, 1.0);
        let b256 = p.step_time(&decode(256, 1000), 1.0, 1.0);
        assert!(
            b32 < one * 2,
            "32-way batch costs less than two single steps"
        );
        assert!(b256 > b32);
        // Saturated throughput of the order published for vLLM on H100 (~10k tok/s).
        let tps = 256.0 / b256.as_secs_f64();
        assert!((8_000.0..15_000.0).contains(&tps), "{tps}");
    }

    #[test]
    fn prefill_is_compute_bound_and_linear() {
        let p = Profile::named("h100").unwrap();
        let pf = |n| StepWork {
            scheduled_tokens: n,
            context_tokens: n,
            prefill_tokens: n,
            ..Default::default()
        };
        let t2k = ms(p.step_time(&pf(2048), 1.0, 1.0));
        let t4k = ms(p.step_time(&pf(4096), 1.0, 1.0));
        assert!((t4k - 1.0) / (t2k - 1.0) > 1.9, "{t2k} {t4k}");
        assert!((40.0..80.0).contains(&t2k), "{t2k}");
    }

    #[test]
    fn profiles_order_and_modifiers() {
        let w = decode(8, 500);
        let h = Profile::named("h100").unwrap().step_time(&w, 1.0, 1.0);
        let a = Profile::named("a100").unwrap().step_time(&w, 1.0, 1.0);
        let l = Profile::named("l4").unwrap().step_time(&w, 1.0, 1.0);
        assert!(h < a && a < l);
        let p = Profile::named("h100").unwrap();
        let close = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-6;
        assert!(close(p.step_time(&w, 2.0, 1.0) * 2, h));
        assert!(close(p.step_time(&w, 1.0, 3.0), h * 3));
        assert_eq!(p.step_time(&StepWork::default(), 1.0, 1.0), Duration::ZERO);
        assert!(Profile::named("tpu").is_none());
        let with_lora = StepWork { lora_loads: 1, ..w };
        assert!(p.step_time(&with_lora, 1.0, 1.0) >= h + Duration::from_millis(49));
    }
}
