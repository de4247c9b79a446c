//! `mirrorfs bench fs`. Not built yet: the command says so and fails.

#[derive(clap::Args, Clone, Debug)]
pub struct FsBenchArgs {}

pub async fn run(_args: FsBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
