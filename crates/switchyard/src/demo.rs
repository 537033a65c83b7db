//! `switchyard demo`: the whole product in one command, with no files. It starts a simulated
//! fleet (4 replicas in two zones serving one model and a LoRA adapter), puts the gateway in
//! front of it with an embedded config, drives a gentle shared-prefix chat load so every metric
//! moves, and prints what to open. Ctrl-C stops everything.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use switchyard_bench::{Arrival, Load, LoadSpec, SharedPrefixSpec, Target, WorkloadSpec};
use switchyard_sim::{FleetConfig, ReplicaConfig};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const ADAPTER: &str = "sql-lora";

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Gateway port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Admin API port on 127.0.0.1.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Background load in requests per second (0 turns it off).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Also roll out a v2 of the model that is deliberately slower (a simulator fault), and
    /// watch the gateway judge it against v1 and roll it back (load at least 20 req/s).
    #[arg(long)]
    pub canary: bool,
}

/// The canary's fault: every v2 response is this much slower.
const CANARY_ADDED_LATENCY_MS: u64 = 400;

/// v2 for `--canary`: two replicas like v1's, each slowed by a fault.
fn canary_fleet_config() -> FleetConfig {
    FleetConfig {
        model: MODEL.to_string(),
        base_port: 0,
        replicas: vec![ReplicaConfig {
            count: 2,
            zone: Some("zone-a".to_string()),
            faults: switchyard_sim::FaultConfig {
                added_latency_ms: CANARY_ADDED_LATENCY_MS,
                ..switchyard_sim::FaultConfig::default()
            },
            ..ReplicaConfig::default()
        }],
        ..FleetConfig::default()
    }
}

/// The demo fleet: two zones of two H100-like replicas; zone b also serves the LoRA adapter.
fn fleet_config() -> FleetConfig {
    let replica = |zone: &str, adapters: Vec<String>| ReplicaConfig {
        count: 2,
        zone: Some(zone.to_string()),
        lora_adapters: adapters,
        ..ReplicaConfig::default()
    };
    FleetConfig {
        model: MODEL.to_string(),
        base_port: 0,
        replicas: vec![
            replica("zone-a", vec![ADAPTER.to_string()]),
            replica("zone-b", vec![ADAPTER.to_string()]),
        ],
        ..FleetConfig::default()
    }
}

/// The embedded gateway config, in the same YAML a user would write; with `canary`, route
/// `openai` rolls `llama-v2` out over `llama`.
fn gateway_yaml(args: &DemoArgs, fleet: &[SocketAddr], canary: &[SocketAddr]) -> String {
    let endpoints: String = fleet
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let zone = if i < fleet.len() / 2 {
                "zone-a"
            } else {
                "zone-b"
            };
            format!("      - {{ address: {a}, zone: {zone} }}\n")
        })
        .collect();
    let (target, v2_pool) = if canary.is_empty() {
        ("    pool: llama\n".to_string(), String::new())
    } else {
        let eps: String = canary
            .iter()
            .map(|a| format!("      - {{ address: {a}, zone: zone-a }}\n"))
            .collect();
        (
            "    backends: [{ pool: llama }, { pool: llama-v2 }]\n    rollout:\n      baseline: llama\n      canary: llama-v2\n      steps: [10, 25, 50, 100]\n      interval: 5s\n      min_requests: 8\n      checks:\n        - { metric: error_rate, max_increase: 0.01 }\n        - { metric: latency_p99, max_ratio: 1.2 }\n        - { metric: ttft_p99, max_ratio: 1.2 }\n".to_string(),
            format!("  - name: llama-v2\n    protocol: http1\n    balancer: round_robin\n    endpoints:\n{eps}"),
        )
    };
    format!(
        "admin:\n  address: 127.0.0.1:{admin}\nruntime:\n  watch_config: false\nlisteners:\n  - name: public\n    address: 127.0.0.1:{port}\nroutes:\n  - name: openai\n    match: {{ path_prefix: /v1/ }}\n{target}    timeout: 60s\npools:\n  - name: llama\n    protocol: http1\n    balancer: round_robin\n    endpoints:\n{endpoints}{v2_pool}",
        admin = args.admin_port,
        port = args.port,
    )
}

pub fn demo(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(mut args: DemoArgs) -> anyhow::Result<()> {
    let fleet = switchyard_sim::start_fleet(fleet_config()).await?;
    let addresses = fleet.addresses();
    let canary_fleet = if args.canary {
        // Enough requests for the canary's 10% to be judged every interval.
        args.rate = args.rate.max(20.0);
        Some(switchyard_sim::start_fleet(canary_fleet_config()).await?)
    } else {
        None
    };
    let canary_addresses = canary_fleet
        .as_ref()
        .map(|f| f.addresses())
        .unwrap_or_default();
    let yaml = gateway_yaml(&args, &addresses, &canary_addresses);
    let config = switchyard_config::parse(&yaml, std::path::Path::new("<embedded demo config>"))
        .map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let started = match crate::run::start(config).await {
        Ok(s) => s,
        Err(e) => {
            fleet.shutdown().await;
            if let Some(f) = canary_fleet {
                f.shutdown().await;
            }
            anyhow::bail!("{e} (use --port / --admin-port to pick free ports)");
        }
    };
    let gateway = started
        .server
        .local_addrs()
        .get("public")
        .copied()
        .ok_or_else(|| anyhow::anyhow!("gateway listener missing"))?;

    let stop = CancellationToken::new();
    let load = (args.rate > 0.0).then(|| {
        let mut spec = LoadSpec::new(
            vec![Target::new("gateway", format!("http://{gateway}"))],
            WorkloadSpec::SharedPrefix(SharedPrefixSpec {
                groups: 4,
                users_per_group: 4,
                system_prompt_tokens: 512,
                question_tokens: 32,
                turns: 4,
                output_tokens: switchyard_bench::Distribution::Fixed { value: 64 },
            }),
        );
        spec.model = Some(MODEL.to_string());
        spec.load = Load::Open {
            rate: args.rate,
            arrival: Arrival::Poisson,
        };
        spec.duration = Some(args.duration.unwrap_or(Duration::from_secs(24 * 3600)));
        tokio::spawn(switchyard_bench::run_load(spec, stop.clone()))
    });

    println!(
        "\nSwitchyard demo is running.\n\n  dashboard  http://{admin}/dashboard\n  gateway    http://{gateway}\n  admin      http://{admin}/metrics  /pools  /stats  /tap  /config  /ready\n  terminal   switchyard top --admin {admin}    switchyard tap --admin {admin}\n  fleet      {n} simulated replicas of {MODEL} (+ LoRA `{ADAPTER}`) in zone-a and zone-b:\n{fleet_list}  load       {load}\n\nTry a streamed chat completion:\n\n  curl -N http://{gateway}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{MODEL}\",\"stream\":true,\"max_tokens\":32,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n\nPress Ctrl-C to stop.\n",
        admin = started.admin_address,
        n = addresses.len(),
        fleet_list = addresses
            .iter()
            .map(|a| format!("               http://{a}/metrics\n"))
            .collect::<String>(),
        load = if args.rate > 0.0 {
            format!("{} req/s shared-prefix chat, in the background", args.rate)
        } else {
            "off".to_string()
        },
    );

    if args.canary {
        println!(
            "Canary: llama-v2 ({n} replicas, every response {CANARY_ADDED_LATENCY_MS} ms slower) rolls out over llama\nin steps of 10, 25, 50, 100% every 5 s, judged by the gateway. Watch it here, or at\n  http://{admin}/rollouts\n",
            n = canary_addresses.len(),
            admin = started.admin_address,
        );
        tokio::spawn(watch_rollout(started.server.clone()));
    }
    let until = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = until => {}
    }
    eprintln!("stopping…");
    stop.cancel();
    if let Some(load) = load {
        if let Ok(Ok(report)) = load.await {
            for t in &report.targets {
                eprintln!(
                    "background load: {} requests completed, {} failed",
                    t.completed, t.failed
                );
            }
        }
    }
    started.admin.set_ready(false);
    started.server.shutdown(Duration::from_secs(5)).await;
    fleet.shutdown().await;
    if let Some(f) = canary_fleet {
        f.shutdown().await;
    }
    Ok(())
}

/// Print the canary's progress as the gateway judges it: each analysis and each change of step
/// or phase, until the rollout ends.
async fn watch_rollout(server: Arc<switchyard_proxy::server::Server>) {
    // The last analysis printed, by its time (the view keeps only the last ten).
    let mut printed = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let gateway = server.handle.load();
        let Some(rollout) = gateway.routes.iter().find_map(|r| r.rollout.clone()) else {
            return;
        };
        let view = rollout.view();
        let analyses = view["analyses"].as_array().cloned().unwrap_or_default();
        for a in &analyses {
            let at = a["at_unix_ms"].as_u64().unwrap_or(0);
            if at <= printed {
                continue;
            }
            printed = at;
            let checks: Vec<String> = a["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let verdict = if c["passed"] == true { "ok" } else { "FAIL" };
                    let shown = if c["metric"] == "error_rate" {
                        format!("{:+.3}", c["value"].as_f64().unwrap_or(0.0))
                    } else {
                        format!("x{:.2}", c["value"].as_f64().unwrap_or(0.0))
                    };
                    format!("{} {shown} {verdict}", c["metric"].as_str().unwrap_or(""))
                })
                .collect();
            println!(
                "rollout: {}% canary, {} (v1 {} / v2 {} requests) {}",
                a["canary_percent"],
                a["verdict"].as_str().unwrap_or(""),
                a["baseline_requests"],
                a["canary_requests"],
                checks.join(", ")
            );
        }
        let phase = rollout.phase();
        if phase != switchyard_proxy::rollout::Phase::Progressing {
            println!(
                "rollout: {} (canary at {}%)",
                view["phase"].as_str().unwrap_or(""),
                rollout.canary_percent()
            );
            return;
        }
    }
}
