//! Fleet configuration: what `--config sim.yaml` holds and what [`crate::start_fleet`] takes.
//!
//! A fleet is a list of replica specs; each spec may stand for several identical replicas
//! (`count`), so a heterogeneous fleet is a handful of lines. Unknown keys are rejected so a typo
//! does not silently leave a replica on defaults.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cost_model::{Profile, PROFILE_NAMES};
use crate::faults::FaultConfig;

/// A fleet of simulated model servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Base model name served by every replica (`model` in requests, `/v1/models`).
    #[serde(default = "default_model")]
    pub model: String,
    /// Address to bind; loopback unless set.
    #[serde(default = "default_host")]
    pub host: IpAddr,
    /// Port of replica 0; replica `i` gets `base_port + i`. 0 means an ephemeral port each.
    #[serde(default)]
    pub base_port: u16,
    /// Replica specs, in order.
    pub replicas: Vec<ReplicaConfig>,
    /// Publish KV-cache events as vLLM's `--kv-events-config` does; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<KvEventsConfig>,
    /// A Hugging Face `tokenizer.json`: completions prompts are tokenized with it (as vLLM
    /// serving that model would), so a gateway keying blocks with the same file matches the
    /// replicas' KV events. Chat prompts keep the simulator's template. The simulator's own
    /// tokenizer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<std::path::PathBuf>,
}

/// KV-cache event publishing: per replica a PUB socket and a replay ROUTER socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Wire shape: `array` (vLLM before mid-2026) or `map` (tagged by `type`, since).
    pub shape: String,
    /// Share of messages not sent on the PUB socket (still replayable), 0..1.
    pub loss: f64,
    /// Messages kept for replay (vLLM's `buffer_steps`).
    pub replay_buffer: usize,
    /// Replica `i` publishes on `base_port + 2i` and replays on `base_port + 2i + 1`;
    /// 0 picks ephemeral ports.
    pub base_port: u16,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            shape: "array".into(),
            loss: 0.0,
            replay_buffer: 10_000,
            base_port: 0,
        }
    }
}

impl KvEventsConfig {
    /// The publisher settings these stand for.
    pub fn publisher(&self) -> switchyard_kv_events::PublisherConfig {
        switchyard_kv_events::PublisherConfig {
            shape: switchyard_kv_events::Shape::parse(&self.shape).unwrap_or_default(),
            loss: self.loss,
            replay_buffer: self.replay_buffer,
            topic: Vec::new(),
        }
    }

    fn validate(&self, replicas: usize) -> anyhow::Result<()> {
        if switchyard_kv_events::Shape::parse(&self.shape).is_none() {
            bail!("kv_events.shape must be array or map, not {:?}", self.shape);
        }
        if !(0.0..=1.0).contains(&self.loss) {
            bail!("kv_events.loss must be within 0..1");
        }
        if self.replay_buffer == 0 {
            bail!("kv_events.replay_buffer must be > 0");
        }
        if self.base_port != 0 && usize::from(self.base_port) + 2 * replicas > 65_536 {
            bail!("kv_events.base_port leaves no room for {replicas} replicas");
        }
        Ok(())
    }
}

/// One replica spec (or `count` identical replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// How many replicas this spec stands for.
    pub count: usize,
    /// Hardware profile: `h100`, `a100` or `l4`.
    pub profile: String,
    /// Speed multiplier: 2 makes every step take half as long (tests use 10–100).
    pub speed: f64,
    /// Free-form zone label, reported by `GET /sim/info`.
    pub zone: Option<String>,
    /// LoRA adapter names this replica can serve.
    pub lora_adapters: Vec<String>,
    /// Adapters resident at once (vLLM `--max-loras`).
    pub max_loras: usize,
    /// Running requests per step (vLLM `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Tokens per step (vLLM `--max-num-batched-tokens`); longer prompts are prefilled in chunks.
    pub max_num_batched_tokens: usize,
    /// `fcfs` or `priority` (vLLM `--scheduling-policy`): whether requests' `priority` field
    /// orders the waiting queue.
    pub scheduling_policy: crate::scheduler::Policy,
    /// KV cache size in 16-token blocks; the profile's value when unset.
    pub num_gpu_blocks: Option<usize>,
    /// Longest prompt + completion accepted; 131072 capped by the KV cache when unset.
    pub max_model_len: Option<usize>,
    /// Explicit port, overriding `base_port + i`.
    pub port: Option<u16>,
    /// Faults injected from the start.
    pub faults: FaultConfig,
}

fn default_model() -> String {
    "meta-llama/Llama-3.1-8B-Instruct".to_string()
}

fn default_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            count: 1,
            profile: "h100".to_string(),
            speed: 1.0,
            zone: None,
            lora_adapters: Vec::new(),
            max_loras: 4,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            scheduling_policy: crate::scheduler::Policy::Fcfs,
            num_gpu_blocks: None,
            max_model_len: None,
            port: None,
            faults: FaultConfig::default(),
        }
    }
}

impl ReplicaConfig {
    /// The cost-model profile, with `num_gpu_blocks` applied.
    pub fn resolved_profile(&self) -> anyhow::Result<Profile> {
        let mut p = Profile::named(&self.profile).with_context(|| {
            format!(
                "unknown profile {:?} (known: {})",
                self.profile,
                PROFILE_NAMES.join(", ")
            )
        })?;
        if let Some(n) = self.num_gpu_blocks {
            p.num_gpu_blocks = n;
        }
        Ok(p)
    }

    /// The context limit: `max_model_len`, else 131072, never more than the KV cache holds.
    pub fn resolved_max_model_len(&self, profile: &Profile) -> usize {
        let kv_tokens = profile.num_gpu_blocks * crate::kv_cache::BLOCK_SIZE;
        self.max_model_len.unwrap_or(131_072).min(kv_tokens)
    }
}

impl Default for FleetConfig {
    /// One default H100 replica of Llama-3.1-8B-Instruct on an ephemeral loopback port.
    fn default() -> Self {
        Self::uniform(default_model(), 1, "h100")
    }
}

impl FleetConfig {
    /// `replicas` identical replicas of `model` on `profile`, on ephemeral loopback ports.
    pub fn uniform(model: impl Into<String>, replicas: usize, profile: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            host: default_host(),
            base_port: 0,
            replicas: vec![ReplicaConfig {
                count: replicas,
                profile: profile.into(),
                ..Default::default()
            }],
            kv_events: None,
            tokenizer: None,
        }
    }

    /// Parses YAML (see docs/sim.md for the format) and validates it.
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        let cfg: FleetConfig =
            switchyard_config::yaml::from_str(text).context("invalid simulator config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// One spec per replica (counts expanded), in port order.
    pub fn expanded(&self) -> Vec<ReplicaConfig> {
        self.replicas
            .iter()
            .flat_map(|r| {
                std::iter::repeat_n(
                    ReplicaConfig {
                        count: 1,
                        ..r.clone()
                    },
                    r.count,
                )
            })
            .collect()
    }

    /// Checks every replica spec; errors name the replica index and field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.model.is_empty() {
            bail!("model must not be empty");
        }
        let all = self.expanded();
        if all.is_empty() {
            bail!("the fleet has no replicas");
        }
        if self.base_port != 0 && usize::from(self.base_port) + all.len() > 65_536 {
            bail!(
                "base_port {} leaves no room for {} replicas",
                self.base_port,
                all.len()
            );
        }
        if let Some(kv) = &self.kv_events {
            kv.validate(all.len())?;
        }
        for (i, r) in all.iter().enumerate() {
            let p = r
                .resolved_profile()
                .with_context(|| format!("replica {i}"))?;
            let ctx = |what: &str| format!("replica {i}: {what}");
            if !(r.speed > 0.0 && r.speed.is_finite()) {
                bail!(ctx("speed must be > 0"));
            }
            if r.max_num_seqs == 0 || r.max_num_batched_tokens == 0 || r.max_loras == 0 {
                bail!(ctx(
                    "max_num_seqs, max_num_batched_tokens and max_loras must be > 0"
                ));
            }
            if p.num_gpu_blocks == 0 {
                bail!(ctx("num_gpu_blocks must be > 0"));
            }
            if let Some(a) = r.lora_adapters.iter().find(|a| **a == self.model) {
                bail!(ctx(&format!("adapter {a:?} has the base model's name")));
            }
            r.faults.validate().map_err(|e| anyhow::anyhow!(ctx(&e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_counts_and_overrides() {
        let cfg = FleetConfig::from_yaml(
            r#"
model: m
base_port: 9000
replicas:
  - count: 2
    profile: a100
    zone: z1
    lora_adapters: [sql]
  - profile: l4
    speed: 2
    num_gpu_blocks: 100
    faults: { error_rate: 0.5, error_status: 503 }
"#,
        )
        .unwrap();
        let r = cfg.expanded();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].zone.as_deref(), Some("z1"));
        assert_eq!(r[2].resolved_profile().unwrap().num_gpu_blocks, 100);
        assert_eq!(
            r[2].resolved_max_model_len(&r[2].resolved_profile().unwrap()),
            1600
        );
        assert!(FleetConfig::from_yaml("replicas: [{profile: tpu}]").is_err());
        assert!(FleetConfig::from_yaml("replicas: [{speeed: 1}]").is_err());
        assert!(FleetConfig::from_yaml("replicas: []").is_err());
    }
}
