//! `mirrorfs cp`: a local tree copied into a volume without mounting. Not built yet: the command says so and fails.

#[derive(clap::Args, Clone, Debug)]
pub struct CpArgs {}

pub async fn run(_args: CpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
