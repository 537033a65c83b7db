//! Inference load generator (being built; see issue 3).

/// `switchyard bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {}

/// Entry point for `switchyard bench`.
pub fn main(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("the load generator is not built yet")
}
