//! Terminal clients of the admin API's live stats.
//!
//! - `switchyard top` ([`top`]): routes, pools and endpoints, refreshed every second from
//!   `/stats/stream`, or printed once from `/stats` with `--once`.
//! - `switchyard tap` ([`tap`]): one line per finished request from `/tap`.
//!
//! Both only read the admin API over plain HTTP ([`client`]), so they work against any gateway
//! whose admin port is reachable, and they share no state with the gateway crates.

pub mod client;
pub mod format;
pub mod model;
pub mod sse;
pub mod tables;
pub mod tap;
pub mod top;

#[cfg(test)]
mod test_server;

use client::{Admin, DEFAULT_ADMIN};

/// `switchyard top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The gateway's admin address: HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Print every view once as plain text (width: $COLUMNS or 120) and exit.
    #[arg(long)]
    pub once: bool,
}

/// `switchyard tap`.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The gateway's admin address: HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Only requests on this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Only requests sent to this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Only these statuses: 5xx, 4xx, 2xx or one code such as 503.
    #[arg(long, value_parser = tap::parse_status)]
    pub status: Option<String>,
    /// Only requests that took at least this long (e.g. 100ms, 2s).
    #[arg(long)]
    pub min_latency: Option<humantime::Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub max: Option<u64>,
    /// Most requests a second the gateway sends (it samples above it, as Linkerd's tap does).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_rps: u32,
    /// Print each event's JSON as the gateway sent it.
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `switchyard top`.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let admin = Admin::parse(&args.admin)?;
    let runtime = runtime()?;
    if args.once {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<u16>().ok())
            .filter(|&c| c >= 40)
            .unwrap_or(120);
        let text = runtime.block_on(top::once(&admin, width))?;
        print!("{text}");
        return Ok(());
    }
    runtime.block_on(top::interactive(admin))
}

/// Runs `switchyard tap`.
pub fn tap(args: TapArgs) -> anyhow::Result<()> {
    let admin = Admin::parse(&args.admin)?;
    let options = tap::TapOptions {
        route: args.route,
        pool: args.pool,
        status: args.status,
        min_latency_ms: args.min_latency.map(|d| d.as_millis()),
        max: args.max,
        max_rps: Some(args.max_rps),
        json: args.json,
    };
    let runtime = runtime()?;
    let stdout = std::io::stdout();
    runtime.block_on(tap::tap(&admin, &options, &mut stdout.lock()))
}
