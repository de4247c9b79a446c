//! `mirrorfs csi`: the CSI driver (controller, node, or both) on a Unix socket. Flags become a
//! `mirrorfs_csi::Config`; everything else lives in the `mirrorfs-csi` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mirrorfs_csi::{Config, Role};

#[derive(clap::Args, Clone, Debug)]
pub struct CsiArgs {
    /// The gRPC Unix socket the CO talks to.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Which services to serve: controller, node or all.
    #[arg(long, env = "MIRRORFS_CSI_ROLE", default_value = "all", value_parser = parse_role)]
    pub role: Role,
    /// This node's id (required for the node role; the chart passes spec.nodeName).
    #[arg(long, env = "MIRRORFS_NODE_ID")]
    pub node_id: Option<String>,
    /// Region advertised as topology key topology.csi.mirrorfs.io/region.
    #[arg(long, env = "MIRRORFS_REGION")]
    pub region: Option<String>,
    /// The kubelet's root directory.
    #[arg(long, env = "MIRRORFS_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Per-volume mount records and mount-process logs (survives restarts of the plugin).
    #[arg(
        long,
        env = "MIRRORFS_CSI_STATE_DIR",
        default_value = "/var/lib/mirrorfs-csi"
    )]
    pub state_dir: PathBuf,
    /// How long CreateVolume/NodePublish wait for a path the mirror has not applied yet.
    #[arg(long, env = "MIRRORFS_CSI_PATH_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub path_wait: Duration,
    /// Mirror lag above which a volume's condition is reported abnormal.
    #[arg(long, env = "MIRRORFS_CSI_MAX_LAG", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_lag: Duration,
    /// Serve /metrics and /healthz on this address (e.g. 0.0.0.0:9810).
    #[arg(long, env = "MIRRORFS_CSI_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The mirrorfs binary that runs FUSE mounts (default: this executable).
    #[arg(long, env = "MIRRORFS_MOUNT_BINARY")]
    pub mount_binary: Option<PathBuf>,
    /// Node: give each staged volume's FUSE mount a disk cache of blocks in a directory of its
    /// own under this one (named by a hash of the volume id; deleted at unstage). Default: no
    /// disk cache.
    #[arg(long, env = "MIRRORFS_CSI_CACHE_ROOT")]
    pub cache_root: Option<PathBuf>,
    /// Node: the disk cache size limit of each staged volume (as `mirrorfs mount --cache-size`:
    /// 512MiB, 10GiB, 1G; at least 16MiB). Leave room for it times the volumes per node.
    #[arg(long, env = "MIRRORFS_CSI_CACHE_SIZE", default_value = "10GiB", value_parser = mirrorfs_api::size::parse_size)]
    pub cache_size: u64,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: mirrorfs_csi::ConfigError| e.to_string())
}

pub async fn run(args: CsiArgs) -> anyhow::Result<()> {
    let mount_binary = match args.mount_binary {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find the running executable; pass --mount-binary")?,
    };
    let config = Config {
        endpoint: args.endpoint,
        role: args.role,
        node_id: args.node_id.filter(|s| !s.is_empty()),
        region: args.region.filter(|s| !s.is_empty()),
        kubelet_dir: args.kubelet_dir,
        state_dir: args.state_dir,
        path_wait: args.path_wait,
        max_lag: args.max_lag,
        metrics_addr: args.metrics_addr,
        mount_binary,
        cache_root: args.cache_root.filter(|p| !p.as_os_str().is_empty()),
        cache_size: args.cache_size,
    };
    mirrorfs_csi::serve(config, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
