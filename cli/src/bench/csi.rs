//! `mirrorfs bench csi`. Not built yet: the command says so and fails.

#[derive(clap::Args, Clone, Debug)]
pub struct CsiBenchArgs {}

pub async fn run(_args: CsiBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
