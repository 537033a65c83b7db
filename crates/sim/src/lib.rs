//! Model-server simulator: a fleet of simulated vLLM replicas in one process.
//!
//! A traffic platform for inference is only testable against servers that behave like inference
//! servers: latency that depends on queue depth, batch size and prompt reuse, KV-cache pressure,
//! LoRA adapter swaps, vLLM's metric names. Real GPUs are scarce in CI and in a laptop, so this
//! crate simulates them: each replica runs vLLM's scheduling algorithm (continuous batching,
//! chunked prefill, paged KV cache with prefix caching, recompute preemption) against a roofline
//! cost model of a real GPU, and sleeps for real so real clients see real latencies.
//!
//! Map of the crate:
//! * [`config`] — fleet and replica specs (YAML or code);
//! * [`fleet`] — [`start_fleet`] and [`Fleet`];
//! * `replica` — per-replica supervisor (crash/restart), `api`/`openai` — HTTP endpoints,
//!   `sse` — streaming format;
//! * `engine` — the timed step loop; `scheduler` — what runs in a step; [`kv_cache`],
//!   `lora` — the resources it schedules; [`cost_model`] — how long a step takes;
//! * [`tokenizer`] — deterministic token approximation; [`prompt_tokenizer`] — it or a model's
//!   tokenizer.json; `metrics` — vLLM metrics; [`faults`].
//!
//! User documentation: `docs/sim.md`.

mod api;
pub mod chat_template;
pub mod config;
pub mod cost_model;
mod engine;
pub mod faults;
pub mod fleet;
pub mod kv_cache;
mod lora;
mod metrics;
mod openai;
pub mod oracle;
pub mod prompt_tokenizer;
mod replica;
mod scheduler;
mod sse;
pub mod tokenizer;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;

pub use config::{FleetConfig, ReplicaConfig};
pub use cost_model::Profile;
pub use faults::FaultConfig;
pub use fleet::{start_fleet, Fleet};
pub use scheduler::Policy;

/// `switchyard sim` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Fleet config file (YAML) for heterogeneous fleets; replaces the per-replica flags below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of identical replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Port of replica 0 (replica i gets base-port + i); 0 picks ephemeral ports. [default: 8001,
    /// or the config file's base_port]
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Address to listen on. [default: 127.0.0.1, or the config file's host]
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// Served model name.
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub model: String,
    /// Hardware profile: h100, a100 or l4.
    #[arg(long, default_value = "h100")]
    pub profile: String,
    /// Speed multiplier (2 = every step takes half as long).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Running requests per step (vLLM --max-num-seqs).
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Tokens per step (vLLM --max-num-batched-tokens).
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,
    /// KV cache blocks of 16 tokens. [default: the profile's]
    #[arg(long)]
    pub num_gpu_blocks: Option<usize>,
    /// LoRA adapters served by every replica (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,
    /// Resident LoRA adapters at most (vLLM --max-loras).
    #[arg(long, default_value_t = 4)]
    pub max_loras: usize,
    /// Publish KV-cache events (ZMQ PUB + replay ROUTER per replica), as vLLM's
    /// --kv-events-config does.
    #[arg(long)]
    pub kv_events: bool,
    /// KV events wire shape: array or map. [default: array, or the config file's]
    #[arg(long)]
    pub kv_events_shape: Option<String>,
    /// Share of KV event messages not sent on the PUB socket (still replayable).
    #[arg(long)]
    pub kv_events_loss: Option<f64>,
    /// KV event messages kept for replay.
    #[arg(long)]
    pub kv_events_replay_buffer: Option<usize>,
    /// Replica i publishes on this + 2i and replays on this + 2i + 1; 0 picks ephemeral ports.
    #[arg(long)]
    pub kv_events_base_port: Option<u16>,
    /// A Hugging Face tokenizer.json: completions prompts are tokenized with it, as an engine
    /// serving that model would (chat prompts keep the simulator's template).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl SimArgs {
    /// The fleet these arguments describe (reads `--config` if given).
    pub fn fleet_config(&self) -> anyhow::Result<FleetConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                FleetConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => FleetConfig {
                model: self.model.clone(),
                host: IpAddr::from([127, 0, 0, 1]),
                base_port: 8001,
                replicas: vec![ReplicaConfig {
                    count: self.replicas,
                    profile: self.profile.clone(),
                    speed: self.speed,
                    max_num_seqs: self.max_num_seqs,
                    max_num_batched_tokens: self.max_num_batched_tokens,
                    num_gpu_blocks: self.num_gpu_blocks,
                    lora_adapters: self.lora_adapters.clone(),
                    max_loras: self.max_loras,
                    ..Default::default()
                }],
                kv_events: None,
                tokenizer: None,
            },
        };
        if let Some(t) = &self.tokenizer {
            cfg.tokenizer = Some(t.clone());
        }
        let kv_flags = self.kv_events_shape.is_some()
            || self.kv_events_loss.is_some()
            || self.kv_events_replay_buffer.is_some()
            || self.kv_events_base_port.is_some();
        if self.kv_events || kv_flags {
            let kv = cfg.kv_events.get_or_insert_with(Default::default);
            if let Some(s) = &self.kv_events_shape {
                kv.shape.clone_from(s);
            }
            if let Some(l) = self.kv_events_loss {
                kv.loss = l;
            }
            if let Some(n) = self.kv_events_replay_buffer {
                kv.replay_buffer = n;
            }
            if let Some(p) = self.kv_events_base_port {
                kv.base_port = p;
            }
        }
        if let Some(port) = self.base_port {
            cfg.base_port = port;
        }
        if let Some(host) = self.host {
            cfg.host = host;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Entry point for `switchyard sim`: runs the fleet on a single-threaded runtime until Ctrl-C or
/// SIGTERM. Prints `replica <i> listening on <addr>` per replica to stdout once all are bound.
pub fn main(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.fleet_config()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let fleet = start_fleet(cfg).await?;
        for (i, addr) in fleet.addresses().iter().enumerate() {
            println!("replica {i} listening on {addr}");
        }
        for (i, (events, replay)) in fleet.kv_event_addresses().iter().enumerate() {
            println!("replica {i} kv-events on tcp://{events} replay tcp://{replay}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        wait_for_signal().await?;
        tracing::info!("shutting down simulator");
        fleet.shutdown().await;
        Ok(())
    })
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<FleetConfig> {
        Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))?
            .sim
            .fleet_config()
    }

    #[test]
    fn flags_describe_a_uniform_fleet() {
        let cfg = parse(&[
            "--replicas",
            "8",
            "--base-port",
            "8001",
            "--model",
            "m",
            "--profile",
            "a100",
        ])
        .unwrap();
        assert_eq!((cfg.model.as_str(), cfg.base_port), ("m", 8001));
        let r = cfg.expanded();
        assert_eq!(r.len(), 8);
        assert_eq!(r[7].profile, "a100");
        assert!(cfg.host.is_loopback());
        let cfg = parse(&[
            "--lora-adapters",
            "a,b",
            "--base-port",
            "0",
            "--host",
            "0.0.0.0",
        ])
        .unwrap();
        assert_eq!(cfg.replicas[0].lora_adapters, ["a", "b"]);
        assert_eq!(cfg.base_port, 0);
        assert!(!cfg.host.is_loopback());
        assert!(parse(&["--profile", "tpu"]).is_err());
        assert!(parse(&["--replicas", "0"]).is_err());
    }

    #[test]
    fn kv_events_flags() {
        assert_eq!(parse(&[]).unwrap().kv_events, None);
        let cfg = parse(&[
            "--kv-events",
            "--kv-events-shape",
            "map",
            "--kv-events-loss",
            "0.01",
        ])
        .unwrap();
        let kv = cfg.kv_events.unwrap();
        assert_eq!(
            (kv.shape.as_str(), kv.loss, kv.replay_buffer),
            ("map", 0.01, 10_000)
        );
        // Any kv-events flag turns publishing on.
        assert!(parse(&["--kv-events-replay-buffer", "5"])
            .unwrap()
            .kv_events
            .is_some());
        assert!(parse(&["--kv-events", "--kv-events-shape", "tuple"]).is_err());
        assert!(parse(&["--kv-events", "--kv-events-loss", "2"]).is_err());
        let yaml = FleetConfig::from_yaml(
            "kv_events: {shape: array, base_port: 7000}\nreplicas: [{count: 2}]\n",
        )
        .unwrap();
        assert_eq!(yaml.kv_events.unwrap().base_port, 7000);
        assert!(FleetConfig::from_yaml("kv_events: {shaep: map}\nreplicas: [{}]\n").is_err());
    }

    #[test]
    fn config_file_with_port_override() {
        let path =
            std::env::temp_dir().join(format!("switchyard-sim-test-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "base_port: 9000\nreplicas:\n  - {count: 2, profile: l4}\n",
        )
        .unwrap();
        let cfg = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!((cfg.base_port, cfg.expanded().len()), (9000, 2));
        let cfg = parse(&["--config", path.to_str().unwrap(), "--base-port", "0"]).unwrap();
        assert_eq!(cfg.base_port, 0);
        std::fs::remove_file(&path).unwrap();
        assert!(parse(&["--config", "/nonexistent/sim.yaml"]).is_err());
    }
}
