//! `mirrorfs mount` and `mirrorfs umount`: flags and secrets turned into a
//! [`MountConfig`], then `mirrorfs_fs::mount` does the rest (checks, kernel mount, serving,
//! unmount on SIGTERM). With `--background` the command re-executes itself in the foreground as
//! a daemon in its own session and returns once the kernel mount is live.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mirrorfs_api::size::{MIN_CACHE_SIZE, parse_size};
use mirrorfs_fs::FsConfig;
use mirrorfs_fs::mount::{self, MountConfig, Readiness, background};
use mirrorfs_objstore::Credentials;

use crate::token;

/// Environment variable holding the volume's token (the CSI node plugin passes it this way).
pub const TOKEN_ENV: &str = "MIRRORFS_TOKEN";

#[derive(clap::Args, Clone, Debug)]
pub struct MountArgs {
    /// The volume (a source volume on a source cluster, a mirror volume on a mirror cluster).
    pub volume: String,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// The meta service holding the volume.
    #[arg(long, env = "MIRRORFS_META", default_value = "http://127.0.0.1:7400")]
    pub meta: String,
    /// Serve /metrics (block reads: local hits, fallbacks, repairs; the disk cache) and
    /// /healthz here, e.g. 127.0.0.1:9820.
    #[arg(long, env = "MIRRORFS_MOUNT_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// File holding the volume's token. Default: the token itself in env MIRRORFS_TOKEN.
    #[arg(long, env = "MIRRORFS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Mount read-only even a source volume (a mirror volume always is).
    #[arg(long)]
    pub read_only: bool,
    /// Return once the mount is live, leaving a daemon (in its own session) serving it.
    #[arg(long)]
    pub background: bool,
    /// Append the log here (in the background the log goes nowhere else).
    #[arg(long, env = "MIRRORFS_MOUNT_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// How long to wait for the meta service at mount time before failing.
    #[arg(long, env = "MIRRORFS_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Do not run replication workers in a mirror mount (run `mirrorfs replicate` elsewhere).
    #[arg(long, env = "MIRRORFS_MOUNT_NO_REPLICATION")]
    pub no_replication: bool,
    /// Block copies in flight of a mirror mount's replication workers.
    #[arg(long, env = "MIRRORFS_REPLICATE_WORKERS", default_value_t = 8)]
    pub replication_workers: usize,
    /// In-memory block cache, in MiB.
    #[arg(long, env = "MIRRORFS_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// Local disk cache of blocks (verified, kept across remounts): a directory of its own
    /// (created if missing) that no other mount uses. Default: no disk cache.
    #[arg(long, env = "MIRRORFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the disk cache: bytes, or with a suffix (512MiB, 10GiB, 1G; K/M/G/T and
    /// KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000). Default 10GiB.
    #[arg(long, env = "MIRRORFS_CACHE_SIZE", requires = "cache_dir", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Blocks (4 MiB) fetched ahead of a sequential reader.
    #[arg(long, env = "MIRRORFS_READAHEAD_BLOCKS", default_value_t = 8)]
    pub readahead_blocks: usize,
    /// How long the kernel keeps attributes and names; changes by others invalidate them
    /// sooner through the volume's change stream.
    #[arg(long, env = "MIRRORFS_ATTR_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub attr_ttl: Duration,
    /// Written bytes buffered before a writer must commit, in MiB.
    #[arg(long, env = "MIRRORFS_MAX_DIRTY_MB", default_value_t = 256)]
    pub max_dirty_mb: u64,
    /// The kernel's readahead for the mount, in KiB (0: leave the kernel's default, 128).
    #[arg(long, env = "MIRRORFS_KERNEL_READAHEAD_KB", default_value_t = mount::DEFAULT_KERNEL_READAHEAD_KB)]
    pub kernel_readahead_kb: u32,
    /// FUSE request threads.
    #[arg(long, env = "MIRRORFS_FUSE_THREADS", default_value_t = 4)]
    pub threads: usize,
    /// JSON file {"access_key_id": …, "secret_access_key": …} for the source bucket (a source
    /// volume's bucket; a mirror volume's fallback reads). Default:
    /// MIRRORFS_SOURCE_ACCESS_KEY_ID / MIRRORFS_SOURCE_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_SOURCE_CREDENTIALS_FILE")]
    pub source_credentials_file: Option<PathBuf>,
    /// The same for a mirror volume's own bucket. Default: MIRRORFS_MIRROR_ACCESS_KEY_ID /
    /// MIRRORFS_MIRROR_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_MIRROR_CREDENTIALS_FILE")]
    pub mirror_credentials_file: Option<PathBuf>,
}

/// The volume token: `--token-file`, else env [`TOKEN_ENV`].
pub fn volume_token(token_file: Option<&Path>, volume: &str) -> anyhow::Result<String> {
    if let Some(path) = token_file {
        return token::read(path);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => anyhow::bail!(
            "no token for volume {volume:?}: pass --token-file FILE (env MIRRORFS_TOKEN_FILE) or \
             set {TOKEN_ENV}"
        ),
    }
}

/// Bucket credentials from a file, else from `{env_prefix}ACCESS_KEY_ID`/`…SECRET_ACCESS_KEY`.
pub fn credentials(file: Option<&Path>, env_prefix: &str) -> anyhow::Result<Option<Credentials>> {
    Ok(match file {
        Some(path) => Some(Credentials::from_file(path)?),
        None => Credentials::from_env(env_prefix)?,
    })
}

fn config(a: &MountArgs) -> anyhow::Result<MountConfig> {
    anyhow::ensure!(
        a.threads >= 1 && a.threads <= 64,
        "--threads must be 1 to 64"
    );
    anyhow::ensure!(a.cache_mb >= 1, "--cache-mb must be at least 1");
    let token = volume_token(a.token_file.as_deref(), &a.volume)?;
    let mut c = MountConfig::new(&a.volume, &a.mountpoint, &a.meta, &token);
    c.read_only = a.read_only;
    c.connect_timeout = a.connect_timeout;
    c.replication = !a.no_replication;
    c.replication_workers = a.replication_workers.max(1);
    c.threads = a.threads;
    c.kernel_readahead_kb = (a.kernel_readahead_kb > 0).then_some(a.kernel_readahead_kb);
    c.cache_dir = match &a.cache_dir {
        Some(d) => {
            Some(std::path::absolute(d).with_context(|| format!("--cache-dir {}", d.display()))?)
        }
        None => None,
    };
    if let Some(size) = a.cache_size {
        anyhow::ensure!(
            size >= MIN_CACHE_SIZE,
            "--cache-size must be at least 16MiB (a few 4 MiB blocks)"
        );
        c.cache_size = size;
    }
    c.fs = FsConfig {
        attr_ttl: a.attr_ttl,
        cache_bytes: a.cache_mb << 20,
        readahead_blocks: a.readahead_blocks,
        max_dirty_bytes: a.max_dirty_mb.max(8) << 20,
        ..FsConfig::default()
    };
    c.source_credentials = credentials(a.source_credentials_file.as_deref(), "MIRRORFS_SOURCE_")
        .context("source bucket credentials")?;
    c.mirror_credentials = credentials(a.mirror_credentials_file.as_deref(), "MIRRORFS_MIRROR_")
        .context("mirror bucket credentials")?;
    Ok(c)
}

/// This command's own arguments without `--background` (the daemon's command line).
fn foreground_args() -> Vec<OsString> {
    std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect()
}

pub async fn run(a: MountArgs) -> anyhow::Result<()> {
    if a.background {
        // Everything that can be checked without the daemon is checked here, so the common
        // mistakes are reported by this process directly.
        config(&a)?;
        mount::check_mountpoint(&a.mountpoint)?;
        mount::check_fuse_device()?;
        let log = a.log_file.clone();
        let pid = tokio::task::spawn_blocking(move || {
            background::spawn(foreground_args(), log.as_deref())
        })
        .await
        .context("waiting for the mount process")??;
        eprintln!(
            "mirrorfs: volume {} mounted on {} (daemon pid {pid})",
            a.volume,
            a.mountpoint.display()
        );
        return Ok(());
    }
    let ready = Readiness::from_env();
    let daemon = std::env::var_os(background::READY_ENV).is_some();
    if let (Some(path), false) = (&a.log_file, daemon) {
        // In the foreground the log (stderr) goes to the file; a daemon's stderr already does.
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        nix::unistd::dup2_stderr(&f).context("redirecting the log")?;
    }
    let mut ready = ready;
    let c = match config(&a) {
        Ok(c) => c,
        Err(e) => {
            ready.report(Err(&format!("{e:#}")));
            return Err(e);
        }
    };
    let c = match serve_metrics(a.metrics_addr, c).await {
        Ok(c) => c,
        Err(e) => {
            ready.report(Err(&format!("{e:#}")));
            return Err(e);
        }
    };
    mount::run(c, ready).await?;
    Ok(())
}

/// With an address, registers the mount's counters (block reads, disk cache) and serves them
/// until the process exits.
async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    mut c: MountConfig,
) -> anyhow::Result<MountConfig> {
    let Some(addr) = addr else { return Ok(c) };
    let mut registry = prometheus_client::registry::Registry::default();
    c.metrics = mirrorfs_objstore::ObjMetrics::register(&mut registry);
    c.disk_cache_metrics = mirrorfs_fs::DiskCacheMetrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    eprintln!(
        "mirrorfs: metrics on http://{}/metrics",
        listener.local_addr()?
    );
    tokio::spawn(mirrorfs_meta::http::serve(
        listener,
        std::sync::Arc::new(registry),
        std::future::pending(),
    ));
    Ok(c)
}

#[derive(clap::Args, Clone, Debug)]
pub struct UmountArgs {
    /// Where a mirrorfs volume is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even while files are open; the mount ends when the last one is closed.
    #[arg(long)]
    pub lazy: bool,
}

pub async fn umount(a: UmountArgs) -> anyhow::Result<()> {
    // Not canonicalized: a broken mount cannot be stat'ed.
    let path = std::path::absolute(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    match mount::find_mount(&path) {
        Some(m) if m.source.starts_with("mirrorfs:") => {}
        Some(m) => anyhow::bail!(
            "{} is not a mirrorfs mount ({} of type {}); not unmounting it",
            path.display(),
            m.source,
            m.fstype
        ),
        None => anyhow::bail!("nothing is mounted on {}", path.display()),
    }
    mount::unmount(&path, a.lazy)?;
    eprintln!("mirrorfs: unmounted {}", path.display());
    Ok(())
}
