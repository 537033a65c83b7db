//! `switchyard bench`: a load generator for OpenAI-compatible inference endpoints.
//!
//! It sends streamed chat or text completions to one or more targets (Switchyard, vLLM, SGLang,
//! another gateway), open loop at a rate or closed loop at a concurrency, and reports what users
//! feel: time to first token, inter-token latency, time per output token, end-to-end latency,
//! throughput, errors by kind, and goodput against an SLO. With several targets, arrivals are
//! interleaved so the comparison is side by side under the same conditions. See `docs/bench.md`.
//!
//! Programmatic use (what `switchyard demo` does for background load):
//!
//! ```no_run
//! use switchyard_bench::{run_load, LoadSpec, Load, Arrival, Target, WorkloadSpec, SyntheticSpec};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let mut spec = LoadSpec::new(
//!     vec![Target::new("gateway", "http://127.0.0.1:8080")],
//!     WorkloadSpec::Synthetic(SyntheticSpec::default()),
//! );
//! spec.load = Load::Open { rate: 2.0, arrival: Arrival::Poisson };
//! let stop = CancellationToken::new();
//! let handle = tokio::spawn(run_load(spec, stop.clone()));
//! // ... later:
//! stop.cancel();
//! let report = handle.await??;
//! println!("{}", report.to_table());
//! # Ok(())
//! # }
//! ```

mod args;
mod arrivals;
pub mod chart;
mod cli;
pub mod client;
pub mod dist;
pub mod report;
mod runner;
pub mod secure;
pub mod spec;
pub mod sse;
pub mod stats;
pub mod streams;
pub mod sweep;
mod text;
pub mod workload;

pub use args::{BenchArgs, WorkloadKind};
pub use dist::Distribution;
pub use report::{Goodput, Report, TargetReport};
pub use runner::{run_load, run_load_with_progress, Progress};
pub use spec::{Arrival, Endpoint, Load, LoadSpec, Target, TargetOrder};
pub use stats::{Slo, Summary};
pub use sweep::{run_sweep, SweepKind, SweepReport, SweepSpec};
pub use workload::{SharedPrefixSpec, SyntheticSpec, TraceSpec, WorkloadSpec};

/// Entry point for `switchyard bench`: builds a current-thread runtime (the generator is meant
/// to be pinned to one core) and runs the command.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(plan))
}
