//! `mirrorfs mount` and `mirrorfs umount`. Not built yet: the command says so and fails.

#[derive(clap::Args, Clone, Debug)]
pub struct MountArgs {}

pub async fn run(_args: MountArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

#[derive(clap::Args, Clone, Debug)]
pub struct UmountArgs {}

pub async fn umount(_args: UmountArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
