//! `mirrorfs bench fs`: the cost of going through a mount, measured in one run beside the same
//! work on a local directory of the same disk.
//!
//! The rig, all under `--dir`: a source meta service and a mirror meta service following it
//! (embedded engines, gRPC on loopback, in this process), the source volume's bucket and the
//! mirror volume's own bucket (local directories), and FUSE mounts made with the code path of
//! `mirrorfs mount` (the mirror mount runs its replication workers). Workloads, dd-style:
//!
//! - sequential write (1 MiB writes, fsync at the end) and sequential read (1 MiB reads);
//! - random reads and random writes (`--io-size`, default 4 KiB) with latency percentiles;
//! - metadata: create `--files` small files (1000 per directory), stat them, list the
//!   directories, and `ls -lR` the tree.
//!
//! Reads are cold: before each read phase the page cache is dropped (`echo 3 >
//! /proc/sys/vm/drop_caches`, or `posix_fadvise(DONTNEED)` on every file involved when that is
//! not permitted) and the mounts are remounted, so their block and attribute caches are empty.
//! The mirror's reads start once its own bucket holds every block.
//!
//! The local disk cache (`mirrorfs mount --cache-dir`): the mirror is remounted with a cache
//! directory under the rig, the big file read once to fill it, then remounted again (memory
//! caches empty, page cache dropped) and read sequentially and at random; those rows show the
//! warm disk cache beside the same run's cold local-directory reads.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mirrorfs_api::meta::StorageConfig;
use mirrorfs_fs::DiskCacheMetrics;
use mirrorfs_fs::mount::{Mount, MountConfig};
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::follower::{self, FollowerConfig};
use mirrorfs_meta::fs::{FsMeta, NewVolume};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use prometheus_client::registry::Registry;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(600);
/// Reads of the big file at most to fill the disk cache.
const FILL_PASSES: usize = 5;

#[derive(clap::Args, Clone, Debug)]
pub struct FsBenchArgs {
    /// Where the rig lives: buckets, meta databases, the local directory and the mount points
    /// (one disk, so the local baseline and the buckets share it). Default: a new directory
    /// under /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Size of the file of the sequential and random workloads, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: u64,
    /// Bytes per random read or write.
    #[arg(long, default_value_t = 4096)]
    pub io_size: usize,
    /// Random reads (and random writes) per target.
    #[arg(long, default_value_t = 2000)]
    pub random_ops: usize,
    /// Small files of the metadata workload.
    #[arg(long, default_value_t = 100_000)]
    pub files: usize,
    /// Bytes in each small file.
    #[arg(long, default_value_t = 128)]
    pub file_bytes: usize,
    /// Threads creating the small files (the same for the local directory and the mount).
    #[arg(long, default_value_t = 8)]
    pub create_threads: usize,
    /// Skip the mirror mount (source mount and local directory only).
    #[arg(long)]
    pub no_mirror: bool,
}

/// One measured figure for one target.
#[derive(Clone, Debug)]
enum Figure {
    /// Bytes in a time.
    Throughput { bytes: u64, took: Duration },
    /// Operations in a time, with latency percentiles (µs).
    Ops {
        ops: u64,
        took: Duration,
        p50: u64,
        p99: u64,
    },
    /// Wall time of the whole job.
    Time(Duration),
}

impl Figure {
    fn show(&self) -> String {
        match self {
            Figure::Throughput { bytes, took } => {
                format!("{:.0} MB/s", *bytes as f64 / 1e6 / took.as_secs_f64())
            }
            Figure::Ops {
                ops,
                took,
                p50,
                p99,
            } => format!(
                "{:.0} op/s p50 {} p99 {}",
                *ops as f64 / took.as_secs_f64(),
                micros(*p50),
                micros(*p99)
            ),
            Figure::Time(d) => format!("{:.2} s", d.as_secs_f64()),
        }
    }

    /// Rate relative to `base` (higher is better for the target).
    fn ratio(&self, base: &Figure) -> String {
        let r = match (self, base) {
            (Figure::Throughput { bytes, took }, Figure::Throughput { bytes: b, took: t }) => {
                (*bytes as f64 / took.as_secs_f64()) / (*b as f64 / t.as_secs_f64())
            }
            (
                Figure::Ops { ops, took, .. },
                Figure::Ops {
                    ops: o, took: t, ..
                },
            ) => (*ops as f64 / took.as_secs_f64()) / (*o as f64 / t.as_secs_f64()),
            (Figure::Time(d), Figure::Time(b)) => {
                return format!("{:.2}x the time", d.as_secs_f64() / b.as_secs_f64());
            }
            _ => return "-".into(),
        };
        format!("{:.0}%", r * 100.0)
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

/// A row of the table: the workload, local, source mount, mirror mount.
struct Row {
    name: String,
    local: Figure,
    source: Option<Figure>,
    mirror: Option<Figure>,
}

/// A meta service served in this process.
struct Served {
    url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve(state: MetaState) -> anyhow::Result<Served> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(mirrorfs_meta::service::run(
        listener,
        Arc::new(state),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Ok(Served { url, stop, task })
}

impl Served {
    async fn stop(self) {
        self.stop.send_replace(true);
        let mut t = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
}

/// The regions, volumes and mounts.
struct Rig {
    dir: PathBuf,
    source: Served,
    mirror: Option<(Served, watch::Sender<bool>)>,
    source_token: String,
    mirror_token: String,
    src_mount: Option<Mount>,
    mir_mount: Option<Mount>,
    /// The disk cache directory of the mirror mount, when it has one.
    mir_cache: Option<(PathBuf, u64)>,
    /// Its counters (shared by every mount of it).
    mir_cache_metrics: DiskCacheMetrics,
}

const ADMIN: &str = "bench-admin-token";

fn state(fs: FsMeta, mirror: Option<follower::FollowerHandle>) -> MetaState {
    MetaState {
        mirror,
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    }
}

fn storage(p: &Path) -> StorageConfig {
    StorageConfig {
        bucket_url: format!("file://{}", p.display()),
        options: Default::default(),
    }
}

impl Rig {
    async fn start(dir: &Path, with_mirror: bool) -> anyhow::Result<Rig> {
        for d in [
            "bucket-a", "bucket-b", "local", "mnt/src", "mnt/mir", "meta",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let engine = Arc::new(EmbeddedEngine::open(&dir.join("meta/source.redb"))?);
        let source_fs = FsMeta::open(engine).await?;
        let (_, source_token) = source_fs
            .create_volume(NewVolume {
                name: "bench".into(),
                storage: storage(&dir.join("bucket-a")),
                ..Default::default()
            })
            .await?;
        let source = serve(state(source_fs, None)).await?;
        let (mirror, mirror_token) = if with_mirror {
            let engine = Arc::new(EmbeddedEngine::open(&dir.join("meta/mirror.redb"))?);
            let mirror_fs = FsMeta::open_mirror(engine.clone()).await?;
            let (stop, rx) = watch::channel(false);
            let handle =
                follower::start(engine, FollowerConfig::new(&source.url, ADMIN), rx).await?;
            let served = serve(state(mirror_fs.clone(), Some(handle))).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let token = loop {
                match mirror_fs
                    .create_volume(NewVolume {
                        name: "bench-b".into(),
                        storage: storage(&dir.join("bucket-b")),
                        source_volume: "bench".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok((_, t)) => break t,
                    Err(e) if Instant::now() > deadline => {
                        anyhow::bail!("the mirror never learnt the source volume: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            (Some((served, stop)), token)
        } else {
            (None, String::new())
        };
        let mut rig = Rig {
            dir: dir.to_owned(),
            source,
            mirror,
            source_token,
            mirror_token,
            src_mount: None,
            mir_mount: None,
            mir_cache: None,
            mir_cache_metrics: DiskCacheMetrics::default(),
        };
        rig.mount_source().await?;
        Ok(rig)
    }

    fn config(&self, volume: &str, at: &str, url: &str, token: &str) -> MountConfig {
        let mut c = MountConfig::new(volume, &self.dir.join("mnt").join(at), url, token);
        c.allow_other = false;
        c
    }

    async fn mount_source(&mut self) -> anyhow::Result<()> {
        let c = self.config("bench", "src", &self.source.url, &self.source_token);
        self.src_mount = Some(Mount::open(c).await?);
        Ok(())
    }

    async fn mount_mirror(&mut self) -> anyhow::Result<()> {
        if let Some((m, _)) = &self.mirror {
            let mut c = self.config("bench-b", "mir", &m.url, &self.mirror_token);
            if let Some((dir, size)) = &self.mir_cache {
                c.cache_dir = Some(dir.clone());
                c.cache_size = *size;
                c.disk_cache_metrics = self.mir_cache_metrics.clone();
            }
            self.mir_mount = Some(Mount::open(c).await?);
        }
        Ok(())
    }

    fn src(&self) -> PathBuf {
        self.dir.join("mnt/src")
    }

    fn mir(&self) -> Option<PathBuf> {
        self.mirror.as_ref().map(|_| self.dir.join("mnt/mir"))
    }

    fn local(&self) -> PathBuf {
        self.dir.join("local")
    }

    /// Unmounts and mounts again: empty block, attribute and page caches.
    async fn remount(&mut self) -> anyhow::Result<()> {
        if let Some(m) = self.src_mount.take() {
            m.unmount(false).await?;
        }
        self.mount_source().await?;
        if let Some(m) = self.mir_mount.take() {
            m.unmount(false).await?;
            self.mount_mirror().await?;
        }
        Ok(())
    }

    /// Unmounts and mounts the mirror again (with `mir_cache` as it is now).
    async fn remount_mirror(&mut self) -> anyhow::Result<()> {
        if let Some(m) = self.mir_mount.take() {
            m.unmount(false).await?;
        }
        self.mount_mirror().await
    }

    /// Blocks in the disk cache directory once its background writes have settled (the count
    /// reaches `n` or stays the same for a second).
    async fn cache_settled(&self, n: usize) -> anyhow::Result<usize> {
        let Some((dir, _)) = self.mir_cache.clone() else {
            return Ok(0);
        };
        let deadline = Instant::now() + WAIT;
        let (mut last, mut since) = (usize::MAX, Instant::now());
        loop {
            let d = dir.clone();
            let have = tokio::task::spawn_blocking(move || count_files(&d, false)).await?;
            if have >= n {
                return Ok(have);
            }
            if have != last {
                (last, since) = (have, Instant::now());
            } else if since.elapsed() >= Duration::from_secs(1) {
                return Ok(have);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the disk cache holds {have} blocks of {n} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the mirror mount shows `rel` with `len` bytes and the mirror's bucket has
    /// as many blocks as the source's (the replication workers copied everything).
    async fn mirror_caught_up(&self, rel: &str, len: Option<u64>) -> anyhow::Result<()> {
        let Some(mir) = self.mir() else {
            return Ok(());
        };
        let deadline = Instant::now() + WAIT;
        let path = mir.join(rel);
        let (a, b) = (self.dir.join("bucket-a"), self.dir.join("bucket-b"));
        loop {
            let (p, a2, b2) = (path.clone(), a.clone(), b.clone());
            let (shown, na, nb) = tokio::task::spawn_blocking(move || {
                let shown =
                    std::fs::symlink_metadata(&p).is_ok_and(|m| len.is_none_or(|l| m.len() == l));
                (shown, count_files(&a2, true), count_files(&b2, true))
            })
            .await?;
            if shown && nb >= na {
                progress(&format!(
                    "mirror caught up: {rel} shown, {nb} blocks in its bucket for the source's {na}"
                ));
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the mirror did not catch up within {WAIT:?} ({rel} shown: {shown}, blocks {nb} of {na})"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn stop(mut self) {
        for m in [self.src_mount.take(), self.mir_mount.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = m.unmount(true).await {
                eprintln!("warning: {e}");
            }
        }
        if let Some((m, stop)) = self.mirror.take() {
            stop.send_replace(true);
            m.stop().await;
        }
        self.source.stop().await;
    }
}

/// Files under `dir`, without dot files when `dot_files` is false (a disk cache's lock and
/// temporary files).
fn count_files(dir: &Path, dot_files: bool) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(_) if dot_files || !e.file_name().to_string_lossy().starts_with('.') => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// How the page cache is emptied before a read phase.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cold {
    DropCaches,
    Fadvise,
}

impl Cold {
    fn describe(self) -> &'static str {
        match self {
            Cold::DropCaches => {
                "page cache, dentries and inodes dropped (sync; echo 3 > /proc/sys/vm/drop_caches)"
            }
            Cold::Fadvise => {
                "page cache of every file involved dropped with posix_fadvise(DONTNEED) (drop_caches not permitted)"
            }
        }
    }
}

/// Empties the page cache (of `dirs`' files when only fadvise is possible).
fn make_cold(dirs: &[PathBuf]) -> Cold {
    nix::unistd::sync();
    if std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok() {
        return Cold::DropCaches;
    }
    for d in dirs {
        let mut todo = vec![d.clone()];
        while let Some(d) = todo.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => todo.push(e.path()),
                    Ok(t) if t.is_file() => {
                        if let Ok(f) = File::open(e.path()) {
                            let _ = nix::fcntl::posix_fadvise(
                                &f,
                                0,
                                0,
                                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Cold::Fadvise
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rng.fill(buf);
}

/// dd-style sequential write of `size` bytes in 1 MiB writes, fsync included.
fn seq_write(path: &Path, size: u64) -> anyhow::Result<Figure> {
    let mut buf = vec![0u8; MIB as usize];
    let started = Instant::now();
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut done = 0;
    let mut seed = 0;
    while done < size {
        let n = (size - done).min(MIB) as usize;
        // Different bytes in every block (no deduplication anywhere can help).
        fill(&mut buf[..64], seed);
        seed += 1;
        f.write_all(&buf[..n])?;
        done += n as u64;
    }
    f.sync_all()?;
    drop(f);
    Ok(Figure::Throughput {
        bytes: size,
        took: started.elapsed(),
    })
}

/// dd-style sequential read in 1 MiB reads.
fn seq_read(path: &Path) -> anyhow::Result<Figure> {
    let mut buf = vec![0u8; MIB as usize];
    let started = Instant::now();
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(Figure::Throughput {
        bytes: total,
        took: started.elapsed(),
    })
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits: cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Random `io` reads at aligned offsets.
fn rand_read(path: &Path, io: usize, ops: usize) -> anyhow::Result<Figure> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let slots = (len / io as u64).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut buf = vec![0u8; io];
    let mut h = histogram();
    let started = Instant::now();
    for _ in 0..ops {
        let off = rng.random_range(0..slots) * io as u64;
        let t = Instant::now();
        f.read_exact_at(&mut buf, off)?;
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    Ok(Figure::Ops {
        ops: ops as u64,
        took: started.elapsed(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
    })
}

/// Random `io` writes at aligned offsets, then fsync (counted in the time).
fn rand_write(path: &Path, io: usize, ops: usize) -> anyhow::Result<Figure> {
    let mut f = File::options().write(true).open(path)?;
    let len = f.metadata()?.len();
    let slots = (len / io as u64).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let mut buf = vec![0u8; io];
    let mut h = histogram();
    let started = Instant::now();
    for i in 0..ops {
        fill(&mut buf[..8.min(io)], i as u64);
        let off = rng.random_range(0..slots) * io as u64;
        let t = Instant::now();
        f.seek(SeekFrom::Start(off))?;
        f.write_all(&buf)?;
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    f.sync_all()?;
    Ok(Figure::Ops {
        ops: ops as u64,
        took: started.elapsed(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
    })
}

const PER_DIR: usize = 1000;

fn small_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:04}", i / PER_DIR))
        .join(format!("f{i:07}"))
}

/// Creates `n` small files (open, write, close), 1000 per directory, from `threads` threads
/// each filling its own directories (created first, counted in the time).
fn create_files(root: &Path, n: usize, bytes: usize, threads: usize) -> anyhow::Result<Figure> {
    let started = Instant::now();
    for i in (0..n).step_by(PER_DIR) {
        std::fs::create_dir_all(small_path(root, i).parent().unwrap_or(root))?;
    }
    let threads = threads.clamp(1, 64);
    let hists = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let data = vec![b'x'; bytes];
                    let mut h = histogram();
                    // Whole directories per thread: the kernel serialises creates in one
                    // directory (the parent's lock).
                    let mine = (0..n).filter(|i| (i / PER_DIR) % threads == t);
                    for i in mine {
                        let at = Instant::now();
                        let mut f = File::create(small_path(root, i))?;
                        f.write_all(&data)?;
                        drop(f);
                        let _ = h.record(at.elapsed().as_micros().max(1) as u64);
                    }
                    Ok(h)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a create thread panicked")))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut h = histogram();
    for x in &hists {
        let _ = h.add(x);
    }
    Ok(Figure::Ops {
        ops: n as u64,
        took: started.elapsed(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
    })
}

/// lstat of every small file by path.
fn stat_files(root: &Path, n: usize) -> anyhow::Result<Figure> {
    let mut h = histogram();
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let m = std::fs::symlink_metadata(small_path(root, i))?;
        anyhow::ensure!(m.size() > 0 || n == 0, "empty small file");
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    Ok(Figure::Ops {
        ops: n as u64,
        took: started.elapsed(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
    })
}

/// Lists every directory (names only); checks the count.
fn list_files(root: &Path, n: usize) -> anyhow::Result<Figure> {
    let started = Instant::now();
    let mut seen = 0;
    let mut todo = VecDeque::from([root.to_owned()]);
    while let Some(d) = todo.pop_front() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push_back(e.path());
            } else {
                seen += 1;
            }
        }
    }
    anyhow::ensure!(
        seen == n,
        "listed {seen} files of {n} in {}",
        root.display()
    );
    Ok(Figure::Time(started.elapsed()))
}

/// `ls -lR` of the tree, output discarded.
fn ls_lr(root: &Path) -> anyhow::Result<Figure> {
    let started = Instant::now();
    let status = Command::new("ls")
        .arg("-lR")
        .arg(root)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running ls -lR")?;
    anyhow::ensure!(
        status.success(),
        "ls -lR {} failed: {status}",
        root.display()
    );
    Ok(Figure::Time(started.elapsed()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn progress(what: &str) {
    eprintln!("mirrorfs bench fs: {what}");
}

pub async fn run(a: FsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.size_mb >= 1, "--size-mb must be at least 1");
    anyhow::ensure!(
        a.io_size >= 1 && a.io_size as u64 <= a.size_mb * MIB,
        "--io-size must be between 1 byte and the file size"
    );
    anyhow::ensure!(a.file_bytes >= 1, "--file-bytes must be at least 1");
    mirrorfs_fs::mount::check_fuse_device()?;
    let base = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new()
                .prefix("mirrorfs-bench-fs-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("mirrorfs-bench-fs-")
            .tempdir_in("/var/tmp")?,
    };
    let mut rig = Rig::start(base.path(), !a.no_mirror).await?;
    let result = measure(&mut rig, &a).await;
    rig.stop().await;
    let (rows, cold) = result?;
    print_table(&a, base.path(), &rows, cold);
    Ok(())
}

async fn measure(rig: &mut Rig, a: &FsBenchArgs) -> anyhow::Result<(Vec<Row>, Cold)> {
    let size = a.size_mb * MIB;
    let (local, src) = (rig.local(), rig.src());
    let mut rows = Vec::new();
    let cold_dirs = vec![
        rig.dir.join("local"),
        rig.dir.join("bucket-a"),
        rig.dir.join("bucket-b"),
        rig.dir.join("cache-mir"),
    ];

    progress("sequential write");
    let (l, s) = (local.join("big"), src.join("big"));
    let lw = blocking(move || seq_write(&l, size)).await?;
    let sw = blocking(move || seq_write(&s, size)).await?;
    rows.push(Row {
        name: format!("sequential write {} MiB, 1 MiB writes + fsync", a.size_mb),
        local: lw,
        source: Some(sw),
        mirror: None,
    });

    progress("waiting for the mirror to apply and replicate");
    rig.mount_mirror().await?;
    rig.mirror_caught_up("big", Some(size)).await?;

    // Sequential reads, each cold.
    progress("sequential read");
    let mut cold = Cold::Fadvise;
    let mut seq = Vec::new();
    for target in [Some(local.clone()), Some(src.clone()), rig.mir()] {
        let Some(root) = target else {
            seq.push(None);
            continue;
        };
        rig.remount().await?;
        let dirs = cold_dirs.clone();
        cold = blocking(move || Ok(make_cold(&dirs))).await?;
        seq.push(Some(blocking(move || seq_read(&root.join("big"))).await?));
    }
    rows.push(Row {
        name: format!("sequential read {} MiB, 1 MiB reads, cold", a.size_mb),
        local: seq[0].clone().context("local")?,
        source: seq[1].clone(),
        mirror: seq[2].clone(),
    });

    progress("random read");
    let mut rr = Vec::new();
    for target in [Some(local.clone()), Some(src.clone()), rig.mir()] {
        let Some(root) = target else {
            rr.push(None);
            continue;
        };
        rig.remount().await?;
        let dirs = cold_dirs.clone();
        blocking(move || Ok(make_cold(&dirs))).await?;
        let (io, ops) = (a.io_size, a.random_ops);
        rr.push(Some(
            blocking(move || rand_read(&root.join("big"), io, ops)).await?,
        ));
    }
    rows.push(Row {
        name: format!("random read {} x {} B, cold", a.random_ops, a.io_size),
        local: rr[0].clone().context("local")?,
        source: rr[1].clone(),
        mirror: rr[2].clone(),
    });

    if let Some(mir) = rig.mir() {
        rows.extend(disk_cache_rows(rig, a, &mir, &seq[0], &rr[0], &cold_dirs).await?);
    }

    progress("random write");
    let (l, s) = (local.join("big"), src.join("big"));
    let (io, ops) = (a.io_size, a.random_ops);
    let lw = blocking(move || rand_write(&l, io, ops)).await?;
    let sw = blocking(move || rand_write(&s, io, ops)).await?;
    rows.push(Row {
        name: format!("random write {} x {} B + fsync", a.random_ops, a.io_size),
        local: lw,
        source: Some(sw),
        mirror: None,
    });

    let n = a.files;
    if n > 0 {
        progress(&format!("creating {n} small files"));
        let (l, s) = (local.join("small"), src.join("small"));
        let (bytes, threads) = (a.file_bytes, a.create_threads);
        let lc = blocking(move || create_files(&l, n, bytes, threads)).await?;
        let sc = blocking(move || create_files(&s, n, bytes, threads)).await?;
        rows.push(Row {
            name: format!("create {n} files of {bytes} B (open, write, close; {threads} threads)"),
            local: lc,
            source: Some(sc),
            mirror: None,
        });
        progress("waiting for the mirror to apply the small files");
        let last = small_path(Path::new("small"), n - 1);
        rig.mirror_caught_up(&last.to_string_lossy(), Some(bytes as u64))
            .await?;
        type Job = fn(&Path, usize) -> anyhow::Result<Figure>;
        let jobs: [(&str, Job); 3] = [
            ("stat each file by path, cold", stat_files),
            ("list every directory (readdir), cold", list_files),
            ("ls -lR, cold", |p, _| ls_lr(p)),
        ];
        for (name, job) in jobs {
            progress(name);
            let mut figs = Vec::new();
            for target in [Some(local.clone()), Some(src.clone()), rig.mir()] {
                let Some(root) = target else {
                    figs.push(None);
                    continue;
                };
                rig.remount().await?;
                let dirs = cold_dirs.clone();
                blocking(move || Ok(make_cold(&dirs))).await?;
                figs.push(Some(blocking(move || job(&root.join("small"), n)).await?));
            }
            rows.push(Row {
                name: format!("{name} ({n} files)"),
                local: figs[0].clone().context("local")?,
                source: figs[1].clone(),
                mirror: figs[2].clone(),
            });
        }
    }
    Ok((rows, cold))
}

/// The mirror mount with a disk cache: filled by reading the file (again after a remount
/// until every block is cached), then remounted and read cold
/// (sequential, then random), beside the local directory's cold figures `local_seq` and
/// `local_rand`. The mirror is mounted without the disk cache again afterwards.
async fn disk_cache_rows(
    rig: &mut Rig,
    a: &FsBenchArgs,
    mir: &Path,
    local_seq: &Option<Figure>,
    local_rand: &Option<Figure>,
    cold_dirs: &[PathBuf],
) -> anyhow::Result<Vec<Row>> {
    let size = a.size_mb * MIB;
    let block = mirrorfs_fs::FsConfig::default().block_size as u64;
    let blocks = size.div_ceil(block) as usize;
    rig.mir_cache = Some((rig.dir.join("cache-mir"), (2 * size).max(64 * MIB)));
    let big = mir.join("big");
    // A read caches what the disk keeps up with (a block that finds every cache write busy
    // is not cached); each further read after a remount adds the rest.
    let mut have = 0;
    for pass in 1..=FILL_PASSES {
        progress(&format!(
            "disk cache: filling it, read {pass} of the big file"
        ));
        rig.remount_mirror().await?;
        let b = big.clone();
        blocking(move || seq_read(&b)).await?;
        have = rig.cache_settled(blocks).await?;
        progress(&format!("disk cache: {have} of {blocks} blocks cached"));
        if have >= blocks {
            break;
        }
    }
    anyhow::ensure!(
        have >= blocks,
        "the disk cache holds {have} of {blocks} blocks after {FILL_PASSES} reads"
    );
    let mut rows = Vec::new();
    progress("disk cache: sequential read after a remount");
    rig.remount_mirror().await?;
    let dirs = cold_dirs.to_vec();
    blocking(move || Ok(make_cold(&dirs))).await?;
    let b = big.clone();
    let m = rig.mir_cache_metrics.clone();
    let (hits, misses) = (m.hits.get(), m.misses.get());
    let seq = blocking(move || seq_read(&b)).await?;
    let (hits, misses) = (m.hits.get() - hits, m.misses.get() - misses);
    progress(&format!(
        "disk cache: {hits} hits, {misses} misses for the {blocks} blocks"
    ));
    anyhow::ensure!(
        hits >= blocks as u64 && misses == 0,
        "the disk cache did not serve the read after the remount ({hits} hits, {misses} misses for {blocks} blocks)"
    );
    rows.push(Row {
        name: format!(
            "sequential read {} MiB, mirror mount with disk cache (warm, after remount)",
            a.size_mb
        ),
        local: local_seq.clone().context("local")?,
        source: None,
        mirror: Some(seq),
    });
    progress("disk cache: random read after a remount");
    rig.remount_mirror().await?;
    let dirs = cold_dirs.to_vec();
    blocking(move || Ok(make_cold(&dirs))).await?;
    let (io, ops) = (a.io_size, a.random_ops);
    let rand = blocking(move || rand_read(&big, io, ops)).await?;
    rows.push(Row {
        name: format!(
            "random read {} x {} B, mirror mount with disk cache (warm, after remount)",
            a.random_ops, a.io_size
        ),
        local: local_rand.clone().context("local")?,
        source: None,
        mirror: Some(rand),
    });
    rig.mir_cache = None;
    rig.remount_mirror().await?;
    Ok(rows)
}

fn print_table(a: &FsBenchArgs, dir: &Path, rows: &[Row], cold: Cold) {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).unwrap_or(0);
    println!("mirrorfs bench fs — through FUSE mounts beside a local directory, same run");
    println!(
        "  rig: {} (local directory and both buckets on one disk: {}); meta services in this \
         process (embedded engine, gRPC on loopback); mounts made as `mirrorfs mount` makes them{}",
        dir.display(),
        if dev(&dir.join("local")) == dev(&dir.join("bucket-a")) {
            "yes"
        } else {
            "no"
        },
        if a.no_mirror {
            ""
        } else {
            "; the mirror mount reads its own bucket, filled by its replication workers"
        }
    );
    println!(
        "  cold reads: before each read and metadata phase, every mount was remounted (empty \
         block, attribute and kernel caches) and the {}",
        cold.describe()
    );
    if !a.no_mirror {
        println!(
            "  disk cache rows: the mirror mounted with --cache-dir under the rig, the file read \
             once to fill it, remounted and made cold as above; the local column repeats the \
             cold local-directory figure"
        );
    }
    let headers = [
        "workload",
        "local dir",
        "source mount",
        "vs local",
        "mirror mount",
        "vs local",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let opt = |f: &Option<Figure>| f.as_ref().map_or("-".into(), Figure::show);
            let ratio = |f: &Option<Figure>| f.as_ref().map_or("-".into(), |f| f.ratio(&r.local));
            [
                r.name.clone(),
                r.local.show(),
                opt(&r.source),
                ratio(&r.source),
                opt(&r.mirror),
                ratio(&r.mirror),
            ]
        })
        .collect();
    let mut width = headers.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width).enumerate() {
            if i == 0 {
                s += &format!("{cell:<w$}");
            } else {
                s += &format!("  {cell:>w$}");
            }
        }
        println!("{}", s.trim_end());
    };
    line(&headers.map(String::from));
    for c in &cells {
        line(c);
    }
    // The targets.
    let find = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    println!("targets:");
    if let Some(r) = find("sequential read")
        && let Some(m) = &r.mirror
    {
        let pct = m.ratio(&r.local);
        let ok = ratio_value(m, &r.local).is_some_and(|v| v >= 0.70);
        println!(
            "  sequential read through the mirror mount >= 70% of local: {pct} ({})",
            if ok { "met" } else { "NOT met" }
        );
    }
    if let Some(r) = find("ls -lR") {
        for (which, f) in [("source", &r.source), ("mirror", &r.mirror)] {
            if let Some(f) = f {
                let x = ratio_value(f, &r.local).map_or(f64::NAN, |v| v);
                println!(
                    "  ls -lR through the {which} mount within 5x of local: {x:.2}x ({})",
                    if x <= 5.0 { "met" } else { "NOT met" }
                );
            }
        }
        if a.files != 100_000 {
            println!(
                "  (ls -lR target is stated for 100000 files; this run had {})",
                a.files
            );
        }
    }
}

/// Rate ratio for throughput/ops; time ratio for times.
fn ratio_value(f: &Figure, base: &Figure) -> Option<f64> {
    match (f, base) {
        (Figure::Throughput { bytes, took }, Figure::Throughput { bytes: b, took: t }) => {
            Some((*bytes as f64 / took.as_secs_f64()) / (*b as f64 / t.as_secs_f64()))
        }
        (Figure::Time(d), Figure::Time(b)) => Some(d.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    }
}
