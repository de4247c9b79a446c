//! `mirrorfs bench replicate`: how fast blocks reach a mirror bucket, beside `rclone copy` of the
//! same objects between the same two locations in the same run, and what a fallback read costs.
//!
//! - **Copy throughput**: N blocks per size class are written to a source bucket; then, for each
//!   worker count, all of them are copied into an empty mirror bucket with
//!   `Bucket::copy_block_from` (the replication workers' copy: HEAD the destination, GET the
//!   source, verify size and BLAKE3, conditional PUT). `rclone copy` then copies the same
//!   objects into another empty location with `--transfers` equal to the largest worker count.
//!   Local directories by default; `--s3` runs both against the in-process S3 server (testkit),
//!   two buckets on one server, rclone through its S3 backend.
//! - **Fallback read latency**: `RegionReader::read` of blocks present in the local bucket,
//!   then of blocks missing there (a failed local GET, then a verified read of the source).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use mirrorfs_api::VolumeId;
use mirrorfs_objstore::{
    BLOCK_SIZE, BlockInfo, Bucket, BucketConfig, CopyOutcome, Credentials, NoRepair, ObjMetrics,
    ReadSource, RegionReader, new_block_id,
};
use mirrorfs_testkit::S3Server;
use rand::RngCore;
use tokio::task::JoinSet;

#[derive(clap::Args, Clone, Debug)]
pub struct ReplicateBenchArgs {
    /// Blocks of the small size class.
    #[arg(long, default_value_t = 2000)]
    pub small_blocks: usize,
    /// Size of a small block (K, M suffixes).
    #[arg(long, default_value = "256K", value_parser = crate::sync::parse_rate)]
    pub small_size: u64,
    /// Blocks of the large size class (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub large_blocks: usize,
    /// Size of a large block (at most the 4 MiB block size).
    #[arg(long, default_value = "4M", value_parser = crate::sync::parse_rate)]
    pub large_size: u64,
    /// Concurrent copy workers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub workers: Vec<usize>,
    /// Run against the in-process S3 server (two buckets) instead of local directories.
    #[arg(long)]
    pub s3: bool,
    /// Reads per size class for the fallback latency.
    #[arg(long, default_value_t = 300)]
    pub latency_reads: usize,
    /// Where the buckets live (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra rclone flag (repeatable), e.g. --rclone-arg=-vv; replaces the default -q.
    #[arg(long = "rclone-arg", allow_hyphen_values = true)]
    pub rclone_args: Vec<String>,
}

/// One size class: its blocks (keys `v{volume}/..`) in its own source bucket. A bucket per
/// class, because rclone given a key directory of s3s-fs takes it for a file.
struct Class {
    label: String,
    volume: u64,
    src: Bucket,
    blocks: Arc<Vec<BlockInfo>>,
    size: u64,
}

impl Class {
    fn total_bytes(&self) -> u64 {
        self.size * self.blocks.len() as u64
    }
}

/// One measured copy.
struct Run {
    blocks: usize,
    bytes: u64,
    took: Duration,
}

impl Run {
    fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.took.as_secs_f64()
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.took.as_secs_f64()
    }
}

/// Where the buckets are: directories, or buckets of an S3 server (itself over a directory).
enum Site {
    Local(PathBuf),
    S3(S3Server),
}

impl Site {
    fn bucket(&self, name: &str) -> anyhow::Result<Bucket> {
        let cfg = match self {
            Site::Local(root) => BucketConfig::new(format!("file://{}", root.join(name).display())),
            Site::S3(s3) => {
                s3.create_bucket(name)?;
                BucketConfig::new(format!("s3://{name}"))
                    .with_option("endpoint", &s3.endpoint)
                    .with_credentials(Some(Credentials::new(&s3.access_key, &s3.secret_key)))
            }
        };
        Ok(Bucket::open(&cfg)?)
    }

    /// rclone's name for bucket `name` (remote `side` for S3: rclone copies within one remote
    /// server-side, which would not move the data).
    fn rclone_path(&self, side: &str, name: &str) -> String {
        match self {
            Site::Local(root) => root.join(name).display().to_string(),
            Site::S3(_) => format!("{side}:{name}"),
        }
    }

    fn rclone_env(&self) -> Vec<(String, String)> {
        let Site::S3(s3) = self else {
            return Vec::new();
        };
        let mut env = Vec::new();
        for remote in ["MFSSRC", "MFSDST"] {
            for (k, v) in [
                ("TYPE", "s3"),
                ("PROVIDER", "Other"),
                ("ENDPOINT", s3.endpoint.as_str()),
                ("ACCESS_KEY_ID", s3.access_key.as_str()),
                ("SECRET_ACCESS_KEY", s3.secret_key.as_str()),
                ("REGION", "us-east-1"),
                ("FORCE_PATH_STYLE", "true"),
                ("NO_CHECK_BUCKET", "true"),
            ] {
                env.push((format!("RCLONE_CONFIG_{remote}_{k}"), v.to_owned()));
            }
        }
        env
    }

    fn remove_bucket(&self, name: &str) {
        let dir = match self {
            Site::Local(root) => root.join(name),
            Site::S3(s3) => s3.root().join(name),
        };
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub async fn replicate(a: ReplicateBenchArgs) -> anyhow::Result<()> {
    ensure!(
        !a.workers.is_empty() && a.workers.iter().all(|&w| w > 0),
        "--workers needs one or more counts of at least 1"
    );
    for size in [a.small_size, a.large_size] {
        ensure!(
            size > 0 && size <= BLOCK_SIZE as u64,
            "block sizes must be 1..={BLOCK_SIZE} bytes"
        );
    }
    let rclone = rclone_version().context(
        "rclone is needed for the comparison and is not installed: install the Debian package \
         (`apt-get install rclone`, or `scripts/setup.sh rclone`)",
    )?;
    let tmp = tempfile::Builder::new()
        .prefix("mirrorfs-bench-replicate-")
        .tempdir()?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let site = if a.s3 {
        Site::S3(S3Server::start(&dir.join("s3")).await?)
    } else {
        Site::Local(dir.join("local"))
    };
    let max_workers = a.workers.iter().copied().max().unwrap_or(16);
    println!(
        "mirrorfs bench replicate: {} in {}, {} cores; {rclone}",
        if a.s3 {
            "two buckets of the in-process S3 server (s3s-fs)"
        } else {
            "local directories"
        },
        dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );

    let mut classes = Vec::new();
    for (volume, n, size) in [
        (1, a.small_blocks, a.small_size),
        (2, a.large_blocks, a.large_size),
    ] {
        if n == 0 {
            continue;
        }
        eprintln!("writing {n} blocks of {} ...", size_label(size));
        let src = site.bucket(&format!("source-v{volume}"))?;
        let blocks = fill(&src, VolumeId(volume), n, size as usize).await?;
        classes.push(Class {
            label: format!("{n} x {}", size_label(size)),
            volume,
            src,
            blocks: Arc::new(blocks),
            size,
        });
    }

    let mut copy_rows = Vec::new();
    let mut latency_rows = Vec::new();
    for class in &classes {
        let mut ours = Vec::new();
        let mut kept = None;
        for &w in &a.workers {
            let name = format!("mirror-v{}-w{w}", class.volume);
            let dst = site.bucket(&name)?;
            eprintln!("{}: copy_block_from with {w} workers ...", class.label);
            let run = copy_all(&class.src, &dst, &class.blocks, w).await?;
            ensure!(
                run.bytes == class.total_bytes(),
                "copied {} bytes, expected {}",
                run.bytes,
                class.total_bytes()
            );
            ours.push((w, run));
            if kept.is_none() {
                kept = Some((name, dst));
            } else {
                site.remove_bucket(&name);
            }
        }
        eprintln!("{}: rclone copy --transfers {max_workers} ...", class.label);
        let rclone_bucket = format!("rclone-v{}", class.volume);
        site.bucket(&rclone_bucket)?; // creates it on S3
        let rc = rclone_copy(&site, class, &rclone_bucket, max_workers, &a.rclone_args).await?;
        let copied = site
            .bucket(&rclone_bucket)?
            .list(None)
            .try_fold(0usize, |n, _| async move { Ok(n + 1) })
            .await?;
        ensure!(
            copied == class.blocks.len(),
            "rclone copied {copied} of {} objects",
            class.blocks.len()
        );
        site.remove_bucket(&rclone_bucket);
        copy_rows.push((class.label.clone(), ours, rc));

        let (kept_name, local) = kept.context("no copy run")?;
        eprintln!("{}: fallback read latency ...", class.label);
        let empty = site.bucket(&format!("empty-v{}", class.volume))?;
        let lat = latency(&class.src, &local, &empty, &class.blocks, a.latency_reads).await?;
        latency_rows.push((class.label.clone(), lat));
        site.remove_bucket(&kept_name);
    }

    print_tables(&copy_rows, &latency_rows, max_workers);
    drop(site);
    Ok(())
}

fn size_label(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// Writes `n` random blocks of `size` bytes, 16 at a time.
async fn fill(
    src: &Bucket,
    volume: VolumeId,
    n: usize,
    size: usize,
) -> anyhow::Result<Vec<BlockInfo>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..16 {
        let (src, next) = (src.clone(), next.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let mut data = vec![0u8; size];
                rand::rng().fill_bytes(&mut data);
                let id = new_block_id(volume);
                let checksum = src.put_block(&id, Bytes::from(data)).await?;
                out.push(BlockInfo {
                    id,
                    size: size as u64,
                    checksum,
                });
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

/// Copies every block with `workers` tasks pulling from one shared index.
async fn copy_all(
    src: &Bucket,
    dst: &Bucket,
    blocks: &Arc<Vec<BlockInfo>>,
    workers: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (src, dst, next, blocks) = (src.clone(), dst.clone(), next.clone(), blocks.clone());
        set.spawn(async move {
            let mut bytes = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = blocks.get(i) else {
                    return anyhow::Ok(bytes);
                };
                match dst.copy_block_from(&src, b).await? {
                    CopyOutcome::Copied { bytes: n } => bytes += n,
                    CopyOutcome::AlreadyThere => bail!("{} was already in the mirror", b.id),
                }
            }
        });
    }
    let mut bytes = 0;
    while let Some(r) = set.join_next().await {
        bytes += r??;
    }
    Ok(Run {
        blocks: blocks.len(),
        bytes,
        took: started.elapsed(),
    })
}

fn rclone_version() -> anyhow::Result<String> {
    let out = std::process::Command::new("rclone")
        .arg("version")
        .stderr(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "rclone version failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("rclone")
        .trim()
        .to_owned())
}

async fn rclone_copy(
    site: &Site,
    class: &Class,
    dst_bucket: &str,
    transfers: usize,
    extra: &[String],
) -> anyhow::Result<Run> {
    let from = site.rclone_path("MFSSRC", &format!("source-v{}", class.volume));
    let to = site.rclone_path("MFSDST", dst_bucket);
    let empty_config = tempfile::NamedTempFile::new()?;
    let mut cmd = std::process::Command::new("rclone");
    cmd.arg("copy")
        .arg(&from)
        .arg(&to)
        .arg(format!("--transfers={transfers}"))
        .arg(format!("--checkers={transfers}"))
        .arg("--config")
        .arg(empty_config.path())
        .args(extra)
        .envs(site.rclone_env())
        // The S3 server is plain HTTP on loopback; rclone refuses a custom CA bundle there.
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null());
    if extra.is_empty() {
        cmd.arg("-q");
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("cannot run rclone")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "rclone copy {from} {to} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Run {
        blocks: class.blocks.len(),
        bytes: class.total_bytes(),
        took,
    })
}

struct Latency {
    local: Histogram<u64>,
    fallback: Histogram<u64>,
}

/// `reads` reads of random blocks through a reader whose local bucket has them, then through
/// one whose local bucket is empty (every read falls back to the source).
async fn latency(
    src: &Bucket,
    local: &Bucket,
    empty: &Bucket,
    blocks: &[BlockInfo],
    reads: usize,
) -> anyhow::Result<Latency> {
    let hit = RegionReader::new(
        src.clone(),
        Some(local.clone()),
        Arc::new(NoRepair),
        ObjMetrics::default(),
    );
    let miss = RegionReader::new(
        src.clone(),
        Some(empty.clone()),
        Arc::new(NoRepair),
        ObjMetrics::default(),
    );
    let mut out = Latency {
        local: Histogram::new(3)?,
        fallback: Histogram::new(3)?,
    };
    for i in 0..reads {
        // Alternate so that both see the same cache conditions.
        let b = &blocks[(i * 7919) % blocks.len()];
        for (reader, want, h) in [
            (&hit, ReadSource::Local, &mut out.local),
            (&miss, ReadSource::Fallback, &mut out.fallback),
        ] {
            let t = Instant::now();
            let (_, from) = reader.read(b).await?;
            h.record(t.elapsed().as_micros() as u64)?;
            ensure!(from == want, "read of {} came from {from:?}", b.id);
        }
    }
    Ok(out)
}

/// One object class: its label, our runs per worker count, and rclone's run.
type CopyRow = (String, Vec<(usize, Run)>, Run);

fn print_tables(copy_rows: &[CopyRow], latency_rows: &[(String, Latency)], transfers: usize) {
    println!();
    println!(
        "{:<18} {:>20} {:>10} {:>9} {:>10}",
        "blocks", "copier", "blocks/s", "MB/s", "vs rclone"
    );
    let mut verdicts = Vec::new();
    for (label, ours, rc) in copy_rows {
        for (w, run) in ours {
            println!(
                "{:<18} {:>20} {:>10.0} {:>9.1} {:>9.2}x",
                label,
                format!("mirrorfs, {w} workers"),
                run.blocks_per_sec(),
                run.mb_per_sec(),
                run.mb_per_sec() / rc.mb_per_sec()
            );
        }
        println!(
            "{:<18} {:>20} {:>10.0} {:>9.1} {:>10}",
            label,
            format!("rclone, {transfers} transfers"),
            rc.blocks_per_sec(),
            rc.mb_per_sec(),
            "1.00x"
        );
        if let Some((w, best)) = ours
            .iter()
            .max_by(|a, b| a.1.mb_per_sec().total_cmp(&b.1.mb_per_sec()))
        {
            verdicts.push(format!(
                "{label}: best {:.1} MB/s ({w} workers) vs rclone {:.1} MB/s: target (>= rclone) {}",
                best.mb_per_sec(),
                rc.mb_per_sec(),
                if best.mb_per_sec() >= rc.mb_per_sec() {
                    "met"
                } else {
                    "NOT met"
                }
            ));
        }
    }
    println!();
    println!(
        "{:<18} {:>14} {:>14} {:>17} {:>17} {:>14}",
        "fallback reads",
        "local p50 ms",
        "local p99 ms",
        "fallback p50 ms",
        "fallback p99 ms",
        "fallback/local"
    );
    for (label, l) in latency_rows {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<18} {:>14.2} {:>14.2} {:>17.2} {:>17.2} {:>13.2}x",
            label,
            ms(&l.local, 0.5),
            ms(&l.local, 0.99),
            ms(&l.fallback, 0.5),
            ms(&l.fallback, 0.99),
            ms(&l.fallback, 0.5) / ms(&l.local, 0.5).max(1e-3)
        );
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
}
