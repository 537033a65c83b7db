//! Model-server simulator (being built; see issue 3).

/// `switchyard sim` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {}

/// Entry point for `switchyard sim`.
pub fn main(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
