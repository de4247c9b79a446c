//! `mirrorfs csi`: the CSI driver. Not built yet: the command says so and fails.

#[derive(clap::Args, Clone, Debug)]
pub struct CsiArgs {}

pub async fn run(_args: CsiArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
