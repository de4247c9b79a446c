//! `mirrorfs replicate`: a standalone replication worker for a mirror cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use mirrorfs_meta::client;
use mirrorfs_objstore::Credentials;
use mirrorfs_replicator::worker::{Worker, WorkerConfig, WorkerStats};
use tokio::sync::watch;

use crate::token;

#[derive(Args, Clone, Debug)]
pub struct ReplicateArgs {
    /// The mirror cluster's meta service.
    #[arg(long, env = "MIRRORFS_META", default_value = "http://127.0.0.1:7400")]
    pub meta: String,
    /// File holding the mirror cluster's admin token (every replicated volume).
    #[arg(long, env = "MIRRORFS_ADMIN_TOKEN_FILE", conflicts_with = "volume")]
    pub admin_token_file: Option<PathBuf>,
    /// Replicate this mirror volume only, with its token (--token-file).
    #[arg(long, env = "MIRRORFS_VOLUME", requires = "token_file")]
    pub volume: Option<String>,
    /// File holding the token of --volume.
    #[arg(long, env = "MIRRORFS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Copies in flight.
    #[arg(long, env = "MIRRORFS_REPLICATE_WORKERS", default_value_t = 16)]
    pub workers: usize,
    /// Lease length: a task this worker has not acknowledged by then runs again elsewhere.
    #[arg(long, env = "MIRRORFS_REPLICATE_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Name shown in the queue and in logs (default: host name and process id).
    #[arg(long, env = "MIRRORFS_REPLICATE_NAME")]
    pub name: Option<String>,
    /// JSON file {"access_key_id": …, "secret_access_key": …} for the source buckets.
    /// Default: MIRRORFS_SOURCE_ACCESS_KEY_ID / MIRRORFS_SOURCE_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_SOURCE_CREDENTIALS_FILE")]
    pub source_credentials_file: Option<PathBuf>,
    /// The same for the mirror buckets. Default: MIRRORFS_MIRROR_ACCESS_KEY_ID /
    /// MIRRORFS_MIRROR_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_MIRROR_CREDENTIALS_FILE")]
    pub mirror_credentials_file: Option<PathBuf>,
    /// Exit once the queue is empty instead of waiting for more.
    #[arg(long)]
    pub once: bool,
}

fn credentials(file: &Option<PathBuf>, env_prefix: &str) -> anyhow::Result<Option<Credentials>> {
    Ok(match file {
        Some(path) => Some(Credentials::from_file(path)?),
        None => Credentials::from_env(env_prefix)?,
    })
}

pub async fn run(a: ReplicateArgs) -> anyhow::Result<()> {
    let token = match (&a.volume, &a.token_file, &a.admin_token_file) {
        (Some(_), Some(path), _) => token::read(path)?,
        (None, _, Some(path)) => token::read(path)?,
        _ => anyhow::bail!(
            "no credential for the mirror meta service: pass --admin-token-file (every volume) or --volume with --token-file"
        ),
    };
    let channel = client::connect(&a.meta, Duration::from_secs(5)).await?;
    let name = a.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut config = WorkerConfig::new(name);
    config.volume = a.volume.clone();
    config.concurrency = a.workers.max(1);
    config.lease = a.lease;
    config.exit_when_idle = a.once;
    config.source_credentials = credentials(&a.source_credentials_file, "MIRRORFS_SOURCE_")
        .context("source bucket credentials")?;
    config.mirror_credentials = credentials(&a.mirror_credentials_file, "MIRRORFS_MIRROR_")
        .context("mirror bucket credentials")?;
    let worker = Worker::new(client::replication(channel, &token)?, config);
    let stats = worker.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping: finishing the copies in flight");
        let _ = stop_tx.send(true);
    });
    let started = Instant::now();
    let progress = tokio::spawn(report(stats.clone(), started));
    tracing::info!(meta = %a.meta, volume = a.volume.as_deref().unwrap_or("(all)"), workers = a.workers, "replication worker started");
    let result = worker.run(stop_rx).await;
    progress.abort();
    println!("{}", summary(&stats, started.elapsed()));
    Ok(result?)
}

/// Logs progress every 10 seconds.
async fn report(stats: Arc<WorkerStats>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        tracing::info!("{}", summary(&stats, started.elapsed()));
    }
}

fn summary(s: &WorkerStats, took: Duration) -> String {
    let bytes = s.bytes.load(Ordering::Relaxed);
    format!(
        "replicated {} blocks ({:.1} MB, {:.1} MB/s), {} already there, {} failed, in {:.1} s",
        s.copied.load(Ordering::Relaxed),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / took.as_secs_f64().max(1e-3),
        s.already_there.load(Ordering::Relaxed),
        s.failed.load(Ordering::Relaxed),
        took.as_secs_f64()
    )
}
