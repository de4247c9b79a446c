//! Command-line flags. Every flag a Kubernetes manifest would set has an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mirrorfs",
    version,
    about = "A file system whose volumes are mirrored read-only into other regions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run or inspect the metadata service.
    #[command(subcommand)]
    Meta(MetaCommand),
    /// Create, list and delete volumes (admin token).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Show a meta service's revision, engine, uptime and volumes.
    Status {
        #[command(flatten)]
        conn: AdminConn,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the main job on embedded defaults and narrate it.
    Demo(crate::demo::DemoArgs),
    /// Mirror operations (run against a mirror cluster's meta service).
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Copy blocks into a mirror cluster's buckets: lease tasks from its meta service, copy and
    /// verify, acknowledge. Every instance adds throughput.
    Replicate(crate::replicate::ReplicateArgs),
    /// Delete blocks of a volume that no metadata references any more, once two runs at least
    /// --grace apart found them unreferenced (a mirror volume: only in its own bucket).
    Gc(crate::gc::GcArgs),
    /// Copy every object of a bucket (or prefix) that another lacks, like `rclone copy`:
    /// concurrent, only missing objects unless --check, with --dry-run, --bwlimit, progress and
    /// a summary; exits non-zero if anything failed.
    Sync(crate::sync::SyncArgs),
    /// Mount a volume as a local directory (FUSE): read-write on a source cluster, read-only
    /// on a mirror cluster.
    Mount(crate::mount::MountArgs),
    /// Unmount a mirrorfs mount (waits for nothing: open files keep the old connection).
    Umount(crate::mount::UmountArgs),
    /// Copy a local tree into a volume without mounting it.
    Cp(crate::cp::CpArgs),
    /// The CSI driver (controller, node, or both) on a Unix socket.
    Csi(crate::csi::CsiArgs),
    /// Benchmarks that print their comparison, measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
pub enum MirrorCommand {
    /// Compare the mirror with its source at one revision; exits 1 if they differ.
    Check {
        #[command(flatten)]
        conn: AdminConn,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum MetaCommand {
    /// Serve the metadata API (gRPC) with `/metrics` and `/healthz` over HTTP.
    Serve(ServeArgs),
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address for the gRPC API (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "MIRRORFS_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Directory for the embedded engine's database and the generated admin token.
    #[arg(long, env = "MIRRORFS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Metadata engine: `embedded` (a local database in --data-dir) or
    /// `etcd://host1:2379,host2:2379` (an etcd v3 cluster dedicated to this service).
    #[arg(long, env = "MIRRORFS_ENGINE", default_value = "embedded")]
    pub engine: String,
    #[command(flatten)]
    pub etcd: Box<EtcdArgs>,
    /// File holding the admin token. Default: <data-dir>/admin.token, generated (mode 0600) on
    /// first start.
    #[arg(long, env = "MIRRORFS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Address for `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "MIRRORFS_METRICS_LISTEN",
        default_value = "127.0.0.1:7401"
    )]
    pub metrics_listen: SocketAddr,
    /// Changelog revisions kept for followers; older ones are compacted every minute
    /// (0 keeps everything).
    #[arg(
        long,
        env = "MIRRORFS_CHANGELOG_RETENTION",
        default_value_t = 1_000_000
    )]
    pub changelog_retention: u64,
    /// File holding a token that opens only the changelog (what mirrors present). The admin
    /// token opens it too.
    #[arg(long, env = "MIRRORFS_REPLICATION_TOKEN_FILE")]
    pub replication_token_file: Option<PathBuf>,
    /// Run as a read-only mirror of the source meta service at this address
    /// (e.g. http://source.example:7400).
    #[arg(long, env = "MIRRORFS_MIRROR_OF")]
    pub mirror_of: Option<String>,
    /// With --mirror-of: file holding the credential the source accepts for its changelog
    /// (its replication token or admin token).
    #[arg(long, env = "MIRRORFS_MIRROR_TOKEN_FILE")]
    pub mirror_token_file: Option<PathBuf>,
    /// With --mirror-of: how often to compare the mirror with its source (e.g. 1h, 30m, 90s;
    /// 0s disables the periodic check; `mirrorfs mirror check` runs it on demand).
    #[arg(long, env = "MIRRORFS_MIRROR_CHECK_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub mirror_check_interval: std::time::Duration,
    /// With --mirror-of: how often every block of the replicated volumes is checked in both
    /// buckets and copied whichever way is missing (e.g. 7d; 0s disables it).
    #[arg(long, env = "MIRRORFS_RECONCILE_INTERVAL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub reconcile_interval: std::time::Duration,
}

/// How to use an etcd cluster (with `--engine etcd://...`).
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// CA bundle (PEM) that signed the etcd servers' certificates; enables TLS.
    #[arg(long, env = "MIRRORFS_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; enables TLS.
    #[arg(long, env = "MIRRORFS_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert-file.
    #[arg(long, env = "MIRRORFS_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user name (etcd authentication).
    #[arg(long, env = "MIRRORFS_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user.
    #[arg(long, env = "MIRRORFS_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Prefix of every key the engine writes in etcd.
    #[arg(long, env = "MIRRORFS_ETCD_PREFIX", default_value = "mirrorfs/")]
    pub etcd_prefix: String,
    /// The etcd servers' --max-txn-ops (larger transactions are refused with a clear error).
    #[arg(long, env = "MIRRORFS_ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub etcd_max_txn_ops: usize,
    /// The etcd servers' --max-request-bytes.
    #[arg(long, env = "MIRRORFS_ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub etcd_max_request_bytes: usize,
}

/// How to reach a meta service as an administrator.
#[derive(Args, Clone, Debug)]
pub struct AdminConn {
    /// Meta service address.
    #[arg(long, env = "MIRRORFS_META", default_value = "http://127.0.0.1:7400")]
    pub meta: String,
    /// File holding the admin token.
    #[arg(long, env = "MIRRORFS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (prefer --admin-token-file: flags show up in `ps`).
    #[arg(long, env = "MIRRORFS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; its token is printed once (or written to --token-file, mode 0600).
    Create {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
        /// Object store for the volume's blocks, e.g. file:///var/lib/mirrorfs/blocks or
        /// s3://bucket/prefix. On a mirror cluster: the mirror region's own bucket, which
        /// replication fills (omit it to read the source bucket directly).
        #[arg(long, default_value = "")]
        bucket: String,
        /// A non-secret bucket option, KEY=VALUE (endpoint, region, path_style, allow_http);
        /// repeat for several. Credentials never go here: workers and mounts read them from
        /// their own environment or files.
        #[arg(long = "bucket-opt", value_parser = key_value)]
        bucket_opt: Vec<(String, String)>,
        /// Capacity reported by statfs and enforced on writes (0: unlimited).
        #[arg(long, default_value_t = 0)]
        capacity_bytes: u64,
        /// Inode limit (0: unlimited).
        #[arg(long, default_value_t = 0)]
        capacity_inodes: u64,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// On a mirror cluster: the source volume this mirror volume exposes (required there).
        #[arg(long)]
        source_volume: Option<String>,
    },
    /// List volumes with their usage.
    List {
        #[command(flatten)]
        conn: AdminConn,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume's metadata (its blocks are collected later).
    Delete {
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Metadata operations over gRPC beside the same operations on the library directly.
    Meta(crate::bench::MetaBenchArgs),
    /// Mirror lag under load and delay, apply against write throughput, and bootstrap time.
    Mirror(crate::bench::MirrorBenchArgs),
    /// Blocks copied per second into a mirror bucket with 1..16 workers beside `rclone copy`,
    /// and fallback read latency.
    Replicate(crate::bench::ReplicateBenchArgs),
    /// Sequential and random reads and writes and a metadata workload through a mount, beside
    /// the same work on a local directory of the same disk.
    Fs(crate::bench::fs::FsBenchArgs),
    /// CSI CreateVolume and NodePublish latency, 1 and 32 concurrent callers.
    Csi(crate::bench::csi::CsiBenchArgs),
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Meta(MetaCommand::Serve(a)) => crate::serve::run(a).await,
        Command::Volume(v) => crate::admin::volume(v).await,
        Command::Status { conn, json } => crate::admin::status(conn, json).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Mirror(MirrorCommand::Check { conn, json }) => {
            crate::admin::check(conn, json).await
        }
        Command::Replicate(a) => crate::replicate::run(a).await,
        Command::Gc(a) => crate::gc::run(a).await,
        Command::Sync(a) => crate::sync::run(a).await,
        Command::Mount(a) => crate::mount::run(a).await,
        Command::Umount(a) => crate::mount::umount(a).await,
        Command::Cp(a) => crate::cp::run(a).await,
        Command::Csi(a) => crate::csi::run(a).await,
        Command::Bench(BenchCommand::Meta(a)) => crate::bench::meta(a).await,
        Command::Bench(BenchCommand::Mirror(a)) => crate::bench::mirror(a).await,
        Command::Bench(BenchCommand::Replicate(a)) => crate::bench::replicate(a).await,
        Command::Bench(BenchCommand::Fs(a)) => crate::bench::fs::run(a).await,
        Command::Bench(BenchCommand::Csi(a)) => crate::bench::csi::run(a).await,
    }
}

/// Parses `KEY=VALUE`.
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
