//! `switchyard`: the binary. It parses the command line and wires crates together; behaviour
//! lives in the crates.

mod demo;
mod etcd_source;
mod file_watch;
mod run;
mod xds;

/// mimalloc's per-thread free lists suit a proxy's many short-lived, same-sized allocations
/// (headers, bodies, futures) better than glibc's arenas, and return memory more evenly.
/// `--features system-alloc` leaves it out, for heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Traffic platform for ML inference"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Settings that differ per replica of a fleet sharing one config; they override the config's.
#[derive(clap::Args)]
struct ReplicaArgs {
    /// Admin listen address (overrides `admin.address`).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// This replica's zone (overrides `runtime.locality.zone`).
    #[arg(long, env = "SWITCHYARD_ZONE")]
    zone: Option<String>,
    /// This replica's region (overrides `runtime.locality.region`).
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE, then write it to etcd with a compare-and-swap on the key's revision.
    Push {
        file: PathBuf,
        /// `etcd://HOST:PORT/KEY`
        #[arg(long)]
        to: String,
        /// Refuse unless the config in etcd is at this revision (what your change was made
        /// against).
        #[arg(long)]
        expect_revision: Option<i64>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file [default: ./switchyard.yaml]
        #[arg(long, short, conflicts_with = "config_source")]
        config: Option<PathBuf>,
        /// Read the config from etcd and follow it: `etcd://HOST:PORT[,HOST:PORT]/KEY`, the
        /// whole config in KEY or its parts in keys under `KEY/`.
        #[arg(long)]
        config_source: Option<String>,
        /// With --config-source: where the last good config is kept, to start from when etcd is
        /// down.
        #[arg(long, requires = "config_source")]
        config_cache: Option<PathBuf>,
        #[command(flatten)]
        replica: ReplicaArgs,
    },
    /// Fleet config in etcd.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Validate a config file: exit 0 when valid, 1 when not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a simulated fleet, the gateway in front of it and a gentle load: no files needed.
    Demo(demo::DemoArgs),
    /// Serve the picker to an existing Envoy as an ext_proc endpoint picker (Gateway API
    /// Inference Extension protocol).
    Epp {
        #[arg(long, short)]
        config: PathBuf,
        /// gRPC (h2c) listen address.
        #[arg(long, default_value = "127.0.0.1:9002")]
        listen: std::net::SocketAddr,
        /// Pool to pick from [default: the first pool].
        #[arg(long)]
        pool: Option<String>,
        /// Largest gRPC message, and largest request body buffered for a pick, in bytes.
        /// Longer messages end the stream with RESOURCE_EXHAUSTED; longer bodies get 413.
        #[arg(long, default_value_t = switchyard_epp::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: usize,
        /// Admin HTTP address (/metrics, /pools, /ready); none unless given.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Serve the config to Envoy over xDS (ADS: LDS, RDS, CDS, EDS; state of the world and
    /// delta on one port), with capacity-aware endpoint weights for inference pools.
    Xds {
        #[arg(long, short)]
        config: PathBuf,
        /// gRPC (h2c) listen address of the ADS server.
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: std::net::SocketAddr,
        /// Admin HTTP address: /xds/report, /xds/nodes, /xds/weights, /metrics, /ready.
        #[arg(long, default_value = "127.0.0.1:9903")]
        admin: std::net::SocketAddr,
    },
    /// Run a fleet of simulated OpenAI-compatible model servers.
    Sim(switchyard_sim::SimArgs),
    /// Drive load at an OpenAI-compatible endpoint and report TTFT/ITL/goodput.
    Bench(Box<switchyard_bench::BenchArgs>),
    /// The streaming benchmark's two ends: an SSE origin and a client holding N streams.
    #[command(subcommand)]
    Streams(switchyard_bench::streams::StreamsArgs),
    /// Live routes, pools, endpoints and recent picks from a gateway's admin API (q quits).
    Top(switchyard_viz::TopArgs),
    /// Print the gateway's finished requests as they happen, one line each.
    Tap(switchyard_viz::TapArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    switchyard_telemetry::logging::init(matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Command::Check { config } => match switchyard_config::load_file(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Demo(args) => demo::demo(args),
        Command::Epp {
            config,
            listen,
            pool,
            max_message_bytes,
            admin,
        } => match switchyard_config::load_file(&config) {
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
            Ok(cfg) => report(
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(switchyard_epp::run(
                            cfg,
                            listen,
                            pool,
                            max_message_bytes,
                            admin,
                        ))
                    }),
            ),
        },
        Command::Xds {
            config,
            listen,
            admin,
        } => xds::run(config, listen, admin),
        Command::Sim(args) => report(switchyard_sim::main(args)),
        Command::Bench(args) => report(switchyard_bench::main(*args)),
        Command::Streams(args) => report(switchyard_bench::streams::main(args)),
        Command::Top(args) => report(switchyard_viz::top(args)),
        Command::Tap(args) => report(switchyard_viz::tap(args)),
        Command::Config(ConfigCommand::Push {
            file,
            to,
            expect_revision,
        }) => {
            let push = async {
                let url = switchyard_fleet::EtcdUrl::parse(&to).map_err(|e| e.to_string())?;
                switchyard_fleet::push::push(&file, &url, expect_revision).await
            };
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(push));
            match result {
                Ok(pushed) => {
                    println!(
                        "{}: written at revision {} (was {})",
                        to, pushed.revision, pushed.previous
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            config_source: Some(source),
            config_cache,
            replica,
            ..
        } => match switchyard_fleet::EtcdUrl::parse(&source) {
            Ok(url) => etcd_source::run(url, config_cache, replica.overrides()),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config, replica, ..
        } => {
            let path = config.unwrap_or_else(|| PathBuf::from("switchyard.yaml"));
            if !path.exists() {
                eprintln!(
                    "error: no config file at `{}`; pass --config FILE (see examples/switchyard.yaml)",
                    path.display()
                );
                return ExitCode::from(1);
            }
            run::run(path, replica.overrides())
        }
    }
}

impl ReplicaArgs {
    fn overrides(self) -> run::Overrides {
        run::Overrides {
            admin: self.admin,
            zone: self.zone,
            region: self.region,
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
