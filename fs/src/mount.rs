//! The mount lifecycle of `mirrorfs mount`: checks that fail fast with a message that says what
//! to do (no `/dev/fuse`, no permission, a missing or broken mount point, a meta service that
//! does not answer within the connect timeout), opening the volume (its buckets, and for a
//! mirror volume the region-aware reader with repairs and the replication workers), the kernel
//! mount with its options, and the end of it: unmounted from outside, or on SIGTERM/SIGINT
//! (buffered writes are flushed, workers finish their copies in flight). With a cache directory
//! the local disk cache of blocks is opened first ([`DiskCache`]: a directory that is a file,
//! cannot be written, or is used by another mount fails the mount, saying so).
//!
//! Kernel mount options: `fsname=mirrorfs:<volume>`, `subtype=mirrorfs`, `default_permissions`
//! (the kernel checks mode bits), `allow_other` when root (pods and other users read a CSI
//! mount), `ro` for a mirror volume (or `--read-only`), never `auto_unmount`.
//!
//! [`Mount`] is one live mount (tests and benchmarks mount an [`FsCore`] directly with it);
//! [`run`] is the foreground process; [`background`] re-executes it and waits for readiness.

pub mod background;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use mirrorfs_api::client;
use mirrorfs_api::meta::OpenVolumeReply;
use mirrorfs_objstore::{Credentials, ObjMetrics};
use tokio::sync::oneshot;

pub use self::background::Readiness;
use crate::core::{FsConfig, FsCore};
use crate::data::{BlockOptions, Blocks, queue_repairs};
use crate::disk_cache::{DiskCache, DiskCacheError, DiskCacheMetrics};
use crate::error::FsError;
use crate::fuse::{FuseFs, KernelInvalidator};
use crate::meta::{GrpcMeta, MetaClient};
use crate::replication::{Workers, WorkersConfig};

/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";

/// Everything `mirrorfs mount` needs, as plain values.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub volume: String,
    pub mountpoint: PathBuf,
    /// The meta service, e.g. `http://meta.example:7400` (a mirror cluster's for a mirror
    /// volume).
    pub meta_url: String,
    /// The volume's token.
    pub token: String,
    /// Mount read-only even a source volume (a mirror volume always is).
    pub read_only: bool,
    /// How long to wait for the meta service at mount time.
    pub connect_timeout: Duration,
    /// The core's settings (caches, readahead, write buffering); `volume` is filled in.
    pub fs: FsConfig,
    /// Run replication workers in a mirror mount (when the mirror volume has its own bucket).
    pub replication: bool,
    /// Copies in flight of those workers.
    pub replication_workers: usize,
    /// For the source bucket (a source volume's bucket, a mirror volume's fallback).
    pub source_credentials: Option<Credentials>,
    /// For a mirror volume's own bucket in the mirror region.
    pub mirror_credentials: Option<Credentials>,
    /// Let other users (pods) use the mount (`allow_other`); by default when root.
    pub allow_other: bool,
    /// FUSE request threads reading from the kernel.
    pub threads: usize,
    /// The kernel's readahead for this mount, in KiB (its default, 128, caps FUSE read
    /// requests at 128 KiB each); None leaves it.
    pub kernel_readahead_kb: Option<u32>,
    /// Block-read counters (local hits, fallbacks, repairs); register them to export them.
    pub metrics: ObjMetrics,
    /// The local disk cache of blocks (one directory per mount). None: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Its size limit in bytes.
    pub cache_size: u64,
    /// Its counters; register them to export them.
    pub disk_cache_metrics: DiskCacheMetrics,
}

impl MountConfig {
    pub fn new(volume: &str, mountpoint: &Path, meta_url: &str, token: &str) -> Self {
        Self {
            volume: volume.to_owned(),
            mountpoint: mountpoint.to_owned(),
            meta_url: meta_url.to_owned(),
            token: token.to_owned(),
            read_only: false,
            connect_timeout: Duration::from_secs(10),
            fs: FsConfig::default(),
            replication: true,
            replication_workers: 8,
            source_credentials: None,
            mirror_credentials: None,
            allow_other: nix::unistd::geteuid().is_root(),
            threads: 4,
            kernel_readahead_kb: Some(DEFAULT_KERNEL_READAHEAD_KB),
            metrics: ObjMetrics::default(),
            cache_dir: None,
            cache_size: mirrorfs_api::size::DEFAULT_CACHE_SIZE,
            disk_cache_metrics: DiskCacheMetrics::default(),
        }
    }
}

/// How long a mount waits for the cache directory's lock: a previous mount of the same
/// directory may still be exiting.
const CACHE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The kernel readahead set on mounts by default: 16 MiB, so a sequential reader's requests
/// arrive large and several at a time.
pub const DEFAULT_KERNEL_READAHEAD_KB: u32 = 16 << 10;

/// Why a mount failed or ended badly. Messages name the volume or path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "FUSE is not available: {FUSE_DEVICE} does not exist; load the kernel module (`modprobe fuse`) or, in a container, pass the device (`--device /dev/fuse`, or a privileged CSI node pod)"
    )]
    NoFuseDevice,
    #[error(
        "permission denied opening {FUSE_DEVICE} or mounting: run `mirrorfs mount` as root (or with CAP_SYS_ADMIN), or give this user access to {FUSE_DEVICE} and install fusermount3 ({0})"
    )]
    FusePermission(String),
    #[error("cannot use {FUSE_DEVICE}: {0}")]
    FuseDevice(String),
    #[error("mount point {path}: {reason}")]
    MountPoint { path: PathBuf, reason: String },
    #[error(
        "volume {volume}: the meta service at {url} did not answer within {timeout:?}; check --meta and that the service is running"
    )]
    MetaTimeout {
        volume: String,
        url: String,
        timeout: Duration,
    },
    #[error("volume {volume} at {url}: {error}")]
    Volume {
        volume: String,
        url: String,
        error: FsError,
    },
    #[error("cannot mount volume {volume} on {path}: {error}")]
    Mount {
        volume: String,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot unmount {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
    #[error("{0}")]
    DiskCache(#[from] DiskCacheError),
    #[error("{0}")]
    Background(String),
}

/// Checks that `/dev/fuse` exists and can be opened.
pub fn check_fuse_device() -> Result<(), MountError> {
    match std::fs::File::options()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(MountError::NoFuseDevice),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(MountError::FusePermission(e.to_string()))
        }
        Err(e) => Err(MountError::FuseDevice(e.to_string())),
    }
}

/// Checks that `path` is a directory that can be mounted on; returns it made absolute.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let bad = |reason: String| MountError::MountPoint {
        path: path.to_owned(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("does not exist; create the directory first".into()));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(bad(format!(
                "a previous FUSE mount there is broken (transport endpoint is not connected); \
                 unmount it first with `mirrorfs umount {}`",
                path.display()
            )));
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    let abs = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    if let Some(m) = find_mount(&abs)
        && m.source.starts_with("mirrorfs:")
    {
        return Err(bad(format!(
            "{} is already mounted there; unmount it first with `mirrorfs umount {}`",
            m.source,
            abs.display()
        )));
    }
    Ok(abs)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the mounted file system (its backing device info in /sys/class/bdi).
    pub device: String,
    pub mountpoint: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, …).
    pub mount_options: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (`ro`, `user_id=0`, `allow_other`, …).
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether the mount is read-only for the kernel.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// The topmost mount at exactly `path`, from `/proc/self/mountinfo`.
pub fn find_mount(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .filter_map(parse_mountinfo)
        .rfind(|m| m.mountpoint == path)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let post: Vec<&str> = post.split(' ').collect();
    Some(MountInfo {
        device: (*pre.get(2)?).to_owned(),
        mountpoint: PathBuf::from(unescape(pre.get(4)?)),
        mount_options: pre.get(5)?.split(',').map(str::to_owned).collect(),
        fstype: (*post.first()?).to_owned(),
        source: unescape(post.get(1)?),
        super_options: post
            .get(2)
            .map(|o| o.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// Unmounts `path`: a plain unmount (EBUSY while files are open), or with `lazy` a detach that
/// completes when the last file is closed. Without privileges, through `fusermount3 -u`.
pub fn unmount(path: &Path, lazy: bool) -> Result<(), MountError> {
    use nix::errno::Errno;
    use nix::mount::{MntFlags, umount2};
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    let fail = |reason: String| MountError::Unmount {
        path: path.to_owned(),
        reason,
    };
    match umount2(path, flags) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(fail(
            "busy: a process has a file open or its working directory there; close them, or \
             unmount lazily (`mirrorfs umount --lazy`)"
                .into(),
        )),
        Err(Errno::EINVAL) => Err(fail("not a mount point".into())),
        Err(Errno::ENOENT) => Err(fail("does not exist".into())),
        Err(Errno::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let out = cmd
                .arg(path)
                .output()
                .map_err(|e| fail(format!("not permitted, and fusermount3 failed: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(fail(format!(
                    "not permitted: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        Err(e) => Err(fail(e.desc().to_owned())),
    }
}

/// How the kernel mount is made.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// `mirrorfs:<volume>`.
    pub fsname: String,
    /// Refuse write-type requests in the adapter (also implied by a read-only core).
    pub read_only: bool,
    /// Also set the kernel's read-only flag when read-only (always, except in tests that
    /// check the adapter's own answers).
    pub kernel_read_only: bool,
    pub allow_other: bool,
    pub threads: usize,
    /// See [`MountConfig::kernel_readahead_kb`].
    pub kernel_readahead_kb: Option<u32>,
}

impl FuseOptions {
    pub fn new(volume: &str) -> Self {
        Self {
            fsname: format!("mirrorfs:{volume}"),
            read_only: false,
            kernel_read_only: true,
            allow_other: nix::unistd::geteuid().is_root(),
            threads: 4,
            kernel_readahead_kb: None,
        }
    }

    fn config(&self, read_only: bool) -> Config {
        let mut c = Config::default();
        c.mount_options = vec![
            MountOption::FSName(self.fsname.clone()),
            MountOption::Subtype("mirrorfs".into()),
            MountOption::DefaultPermissions,
            if read_only && self.kernel_read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        c.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        c.n_threads = Some(self.threads.max(1));
        c.clone_fd = self.threads > 1;
        c
    }
}

/// A live FUSE mount of an [`FsCore`]. Unmounted (lazily) when dropped, so a test that panics
/// leaves no mount behind.
pub struct Mount {
    path: PathBuf,
    core: Arc<FsCore>,
    read_only: bool,
    ended: Option<oneshot::Receiver<io::Result<()>>>,
    workers: Option<Workers>,
    unmounted: bool,
}

impl Mount {
    /// Mounts `core` on `mountpoint`; its requests run on the current tokio runtime. Returns
    /// once the kernel mount is live.
    pub async fn start(
        core: Arc<FsCore>,
        mountpoint: &Path,
        opts: FuseOptions,
    ) -> Result<Mount, MountError> {
        let path = check_mountpoint(mountpoint)?;
        check_fuse_device()?;
        let fs = FuseFs::new(
            core.clone(),
            tokio::runtime::Handle::current(),
            opts.read_only,
        );
        let read_only = fs.read_only();
        let config = opts.config(read_only);
        let volume = core.config().volume.clone();
        let p = path.clone();
        let session = tokio::task::spawn_blocking(move || Session::new(fs, &p, &config))
            .await
            .map_err(|e| MountError::Mount {
                volume: volume.clone(),
                path: path.clone(),
                error: io::Error::other(e.to_string()),
            })?
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => MountError::FusePermission(e.to_string()),
                _ => MountError::Mount {
                    volume: volume.clone(),
                    path: path.clone(),
                    error: e,
                },
            })?;
        let inval = KernelInvalidator::start(session.notifier(), core.root()).map_err(|e| {
            MountError::Mount {
                volume: volume.clone(),
                path: path.clone(),
                error: e,
            }
        })?;
        core.set_invalidator(Arc::new(inval));
        let (tx, ended) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("mirrorfs-fuse".into())
            .spawn(move || {
                let _ = tx.send(session.run());
            });
        if let Err(e) = spawned {
            let _ = unmount(&path, true);
            return Err(MountError::Mount {
                volume,
                path,
                error: e,
            });
        }
        if let Some(kb) = opts.kernel_readahead_kb {
            set_kernel_readahead(&path, kb);
        }
        tracing::info!(volume = %volume, path = %path.display(), read_only, "mounted");
        Ok(Mount {
            path,
            core,
            read_only,
            ended: Some(ended),
            workers: None,
            unmounted: false,
        })
    }

    /// Opens `config.volume` on its meta service and mounts it: the whole of `mirrorfs mount`
    /// but waiting. Fails within `config.connect_timeout` when the service does not answer.
    pub async fn open(config: MountConfig) -> Result<Mount, MountError> {
        let path = check_mountpoint(&config.mountpoint)?;
        check_fuse_device()?;
        let disk = open_disk_cache(&config).await?;
        let timeout = config.connect_timeout;
        let opened = tokio::time::timeout(timeout, open_volume(&config, disk))
            .await
            .map_err(|_| MountError::MetaTimeout {
                volume: config.volume.clone(),
                url: config.meta_url.clone(),
                timeout,
            })??;
        let (core, workers) = opened;
        let mut opts = FuseOptions::new(&config.volume);
        opts.read_only = config.read_only;
        opts.allow_other = config.allow_other;
        opts.threads = config.threads;
        opts.kernel_readahead_kb = config.kernel_readahead_kb;
        let mut mount = Mount::start(core, &path, opts).await?;
        mount.workers = workers;
        Ok(mount)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn core(&self) -> &Arc<FsCore> {
        &self.core
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether this mount runs replication workers.
    pub fn replicating(&self) -> bool {
        self.workers.is_some()
    }

    /// Waits until the mount ends (unmounted by anyone).
    pub async fn ended(&mut self) -> io::Result<()> {
        let r = match self.ended.as_mut() {
            Some(rx) => rx.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.ended = None;
        self.unmounted = true;
        r
    }

    /// Flushes buffered writes, unmounts (`lazy`: detach even while files are open) and waits
    /// for the session to end; then stops the workers.
    pub async fn unmount(mut self, lazy: bool) -> Result<(), MountError> {
        if let Err(e) = self.core.flush_all().await {
            tracing::warn!(volume = %self.core.config().volume, error = %e, "buffered writes could not be flushed before unmounting");
        }
        if !self.unmounted {
            unmount(&self.path, lazy)?;
        }
        let _ = self.ended().await;
        self.finish().await;
        Ok(())
    }

    /// After the session ended: stop the workers and the change stream.
    async fn finish(&mut self) {
        if let Some(w) = self.workers.take() {
            w.stop().await;
        }
        self.core.close();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.unmounted && self.ended.is_some() {
            let _ = unmount(&self.path, true);
        }
    }
}

/// Sets the readahead of the mount at `path` (its entry in /sys/class/bdi, found through
/// mountinfo: asking the mount itself could wait on this very process). Best effort: without
/// the right to write there the kernel's default stays.
fn set_kernel_readahead(path: &Path, kb: u32) {
    let Some(m) = find_mount(path) else { return };
    let file = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
    match std::fs::write(&file, format!("{kb}\n")) {
        Ok(()) => tracing::debug!(file, kb, "kernel readahead set"),
        Err(e) => tracing::debug!(file, error = %e, "kernel readahead left at its default"),
    }
}

/// The disk cache of `c.cache_dir`, if any (blocking work on the blocking pool).
async fn open_disk_cache(c: &MountConfig) -> Result<Option<Arc<DiskCache>>, MountError> {
    let Some(dir) = c.cache_dir.clone() else {
        return Ok(None);
    };
    let (limit, metrics) = (c.cache_size, c.disk_cache_metrics.clone());
    let d = dir.clone();
    let opened = tokio::task::spawn_blocking(move || {
        DiskCache::open_waiting(&d, limit, metrics, CACHE_LOCK_WAIT)
    })
    .await
    .map_err(|e| DiskCacheError::Unusable {
        dir,
        reason: e.to_string(),
    })??;
    Ok(Some(Arc::new(opened)))
}

/// OpenVolume, the volume's buckets (behind the disk cache `disk`), the core, and for a mirror
/// volume with its own bucket the replication workers.
async fn open_volume(
    c: &MountConfig,
    disk: Option<Arc<DiskCache>>,
) -> Result<(Arc<FsCore>, Option<Workers>), MountError> {
    let err = |error: FsError| MountError::Volume {
        volume: c.volume.clone(),
        url: c.meta_url.clone(),
        error,
    };
    let channel = client::connect(&c.meta_url, c.connect_timeout)
        .await
        .map_err(|e| err(FsError::Unavailable(e.to_string())))?;
    let fs = client::fs(channel.clone(), &c.token)
        .map_err(|e| err(FsError::PermissionDenied(e.to_string())))?;
    let meta = GrpcMeta::new(fs, &c.volume);
    let v: OpenVolumeReply = meta.open_volume().await.map_err(err)?;
    let own_bucket = v.read_only && has_own_bucket(&v);
    let repairs = if own_bucket {
        let rc = client::replication(channel.clone(), &c.token)
            .map_err(|e| err(FsError::PermissionDenied(e.to_string())))?;
        Some(queue_repairs(rc, &c.volume, v.volume_id))
    } else {
        None
    };
    let (credentials, source_credentials) = if v.read_only {
        (c.mirror_credentials.clone(), c.source_credentials.clone())
    } else {
        (c.source_credentials.clone(), None)
    };
    let blocks = Blocks::for_volume(
        &v,
        BlockOptions {
            credentials,
            source_credentials,
            repair: repairs,
            metrics: c.metrics.clone(),
            disk_cache: disk,
        },
    )
    .map_err(err)?;
    let mut fs_config = c.fs.clone();
    fs_config.volume = c.volume.clone();
    let core = FsCore::open_volume(Arc::new(meta), blocks, fs_config)
        .await
        .map_err(err)?;
    let workers = if own_bucket && c.replication {
        let rc = client::replication(channel, &c.token)
            .map_err(|e| err(FsError::PermissionDenied(e.to_string())))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        tracing::info!(volume = %c.volume, workers = c.replication_workers, "replication workers started");
        Some(Workers::start(
            rc,
            WorkersConfig {
                volume: c.volume.clone(),
                name: format!("mount-{}-{}", host.trim(), std::process::id()),
                concurrency: c.replication_workers,
                source_credentials: c.source_credentials.clone(),
                mirror_credentials: c.mirror_credentials.clone(),
            },
        ))
    } else {
        None
    };
    Ok((core, workers))
}

/// Whether a mirror volume has a bucket of its own (else it reads the source bucket and there
/// is nothing to replicate).
fn has_own_bucket(v: &OpenVolumeReply) -> bool {
    match (&v.storage, &v.source_storage) {
        (Some(s), src) => !s.bucket_url.is_empty() && src.as_ref() != Some(s),
        (None, _) => false,
    }
}

/// `mirrorfs mount` in the foreground: mounts, reports readiness, and serves until unmounted
/// from outside or until SIGTERM/SIGINT, which unmounts cleanly (lazily if files are still
/// open; a second signal stops waiting for them).
pub async fn run(config: MountConfig, mut ready: Readiness) -> Result<(), MountError> {
    use tokio::signal::unix::{SignalKind, signal};
    let volume = config.volume.clone();
    let mut mount = match Mount::open(config).await {
        Ok(m) => m,
        Err(e) => {
            ready.report(Err(&e.to_string()));
            return Err(e);
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| MountError::Mount {
        volume: volume.clone(),
        path: mount.path.clone(),
        error: e,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| MountError::Mount {
        volume: volume.clone(),
        path: mount.path.clone(),
        error: e,
    })?;
    ready.report(Ok(()));
    eprintln!(
        "mirrorfs: volume {volume} mounted on {}{}",
        mount.path.display(),
        if mount.read_only { " (read-only)" } else { "" }
    );
    let mut signals = 0;
    while let Some(ended) = mount.ended.as_mut() {
        tokio::select! {
            r = ended => {
                mount.ended = None;
                mount.unmounted = true;
                if let Ok(Err(e)) = r {
                    tracing::warn!(volume = %volume, error = %e, "FUSE session ended with an error");
                }
                tracing::info!(volume = %volume, "unmounted");
                break;
            }
            _ = term.recv() => signals += 1,
            _ = int.recv() => signals += 1,
        }
        if signals > 1 {
            tracing::warn!(volume = %volume, "second signal: exiting without waiting for open files");
            break;
        }
        tracing::info!(volume = %volume, "signal received: flushing and unmounting");
        if let Err(e) = mount.core.flush_all().await {
            tracing::warn!(volume = %volume, error = %e, "buffered writes could not be flushed");
        }
        match unmount(&mount.path, false) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(volume = %volume, error = %e, "detaching the mount; it ends when the last open file is closed");
                unmount(&mount.path, true)?;
            }
        }
    }
    mount.unmounted = true;
    mount.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line = "42 27 0:39 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:1 - fuse mirrorfs:data rw,user_id=0,group_id=0,allow_other";
        let m = parse_mountinfo(line).expect("parses");
        assert_eq!(m.mountpoint, PathBuf::from("/tmp/a b"));
        assert_eq!(m.device, "0:39");
        assert_eq!(m.fstype, "fuse");
        assert_eq!(m.source, "mirrorfs:data");
        assert!(!m.read_only());
        assert!(m.super_options.contains(&"allow_other".to_owned()));
        let ro = "42 27 0:39 / /m ro,nosuid - fuse mirrorfs:x ro";
        assert!(parse_mountinfo(ro).expect("parses").read_only());
    }

    #[test]
    fn a_missing_mount_point_says_to_create_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = check_mountpoint(&dir.path().join("nope")).expect_err("missing");
        assert!(e.to_string().contains("create the directory"), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let e = check_mountpoint(&file).expect_err("a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn mount_options_follow_read_only() {
        let opts = FuseOptions::new("data");
        let c = opts.config(true);
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(
            c.mount_options
                .contains(&MountOption::FSName("mirrorfs:data".into()))
        );
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(!c.mount_options.contains(&MountOption::AutoUnmount));
        assert!(opts.config(false).mount_options.contains(&MountOption::RW));
        let adapter_only = FuseOptions {
            kernel_read_only: false,
            ..opts
        };
        assert!(
            adapter_only
                .config(true)
                .mount_options
                .contains(&MountOption::RW)
        );
    }
}
