//! `switchyard streams`: the two ends of the streaming benchmark (`bench/streams/`).
//!
//! An inference gateway's load is thousands of long-lived token streams, each trickling a small
//! chunk every few tens of milliseconds. Measuring a proxy under that load needs an origin that
//! holds many such streams cheaply and a client that holds as many open and times every chunk:
//!
//! * `streams origin`: an HTTP/1.1 SSE origin; every request gets an endless chunked stream of
//!   `data: <send time in ns>` events at a per-stream interval drawn from a range;
//! * `streams load`: opens N streams through the proxy (HTTP/1.1, one per connection, or HTTP/2
//!   with many per connection, optionally over TLS), then measures a window: chunks received,
//!   added latency (origin send → client receive, one clock), streams stalled (a gap far past
//!   their interval) and streams cut (ended before the client closed them).
//!
//! Both run on one current-thread runtime, so a benchmark pins each to one core. The load
//! side prints `ready` once every stream has delivered a chunk and `window-start` /
//! `window-end` around the measurement, so the driver can read the proxy's CPU time and RSS at
//! exactly those moments; the last line is the result as JSON.

mod load;
mod origin;

use std::net::SocketAddr;
use std::time::Duration;

pub use load::{LoadReport, LoadSpec};
pub use origin::OriginSpec;

/// `switchyard streams` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum StreamsArgs {
    /// Serve endless SSE streams over HTTP/1.1.
    Origin {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Shortest interval between a stream's chunks.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
        interval_min: Duration,
        /// Longest interval between a stream's chunks (each stream draws its own).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
        interval_max: Duration,
        /// Bytes of SSE event per chunk (the send time plus padding); about one token's event.
        #[arg(long, default_value_t = 64)]
        chunk_bytes: usize,
    },
    /// Hold N streams through a proxy and measure them.
    Load(LoadSpec),
}

/// Entry point: one current-thread runtime, meant to be pinned to one core.
pub fn main(args: StreamsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args {
        StreamsArgs::Origin {
            listen,
            interval_min,
            interval_max,
            chunk_bytes,
        } => {
            let spec = OriginSpec::new(interval_min, interval_max, chunk_bytes)?;
            runtime.block_on(origin::serve(listen, spec))
        }
        StreamsArgs::Load(spec) => {
            let report = runtime.block_on(load::run(spec))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// Nanoseconds since the Unix epoch: the one clock both ends read on one machine.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
