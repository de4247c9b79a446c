//! The optional local disk cache of blocks (`mirrorfs mount --cache-dir`): a directory of
//! verified blocks that outlives the process, so a remounted volume reads what it read before
//! from the local disk instead of object storage.
//!
//! Layout: a block is stored under the hex of its BLAKE3 checksum, fanned out by the first two
//! hex characters (`<dir>/ab/ab12…ef`). Blocks are immutable and named by their content, so the
//! same file serves any volume holding those bytes. A file is written to a temporary name in
//! its fan-out directory and renamed into place, so no partial block is ever visible under a
//! checksum; every read is verified again (size and checksum), and a file that fails (corrupt,
//! truncated) is deleted and counts as a miss.
//!
//! Size: the files' total is kept under a byte limit. The index (size and recency of every
//! file) lives in memory, rebuilt at open from the directory (file modification times give the
//! order; hits refresh them, to within ten minutes); when a write takes the total over the limit, the least recently
//! used files are deleted until it is back under 90% of the limit.
//!
//! Writes never slow a read: they run in the background, a bounded number at a time (a block
//! that finds no free slot is simply not cached), and a failed write (disk full, permissions)
//! is logged now and then and otherwise ignored.
//!
//! One process at a time: [`DiskCache::open`] takes an exclusive `flock` on `<dir>/.lock`
//! (released when the cache is dropped or the process exits), so two mounts never evict each
//! other's files from under their indexes.
//!
//! The in-memory index lives in `index`, the counters in `metrics`.

mod index;
mod metrics;

use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mirrorfs_api::Checksum;
use mirrorfs_objstore::{BlockInfo, checksum};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Semaphore;

use self::index::Index;
pub use self::metrics::DiskCacheMetrics;

/// The lock file inside the cache directory.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of the temporary files blocks are written to before being renamed into place.
const TMP_PREFIX: &str = ".tmp-";
/// Background writes in flight at most; a block finding none free is not cached.
const MAX_WRITES_IN_FLIGHT: u32 = 8;
/// After an eviction the total is at most this share of the limit.
const EVICT_TO: f64 = 0.9;
/// A hit refreshes its file's modification time (the recency order after a restart) when it
/// is older than this.
const MTIME_REFRESH: Duration = Duration::from_secs(600);
/// Failed writes are logged at warn level at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a cache directory cannot be used. Messages name the directory.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error(
        "block cache directory {} is not a directory; pass a directory (created if missing) to --cache-dir",
        dir.display()
    )]
    NotADirectory { dir: PathBuf },
    #[error(
        "block cache directory {} is in use by another mirrorfs mount; give each mount its own --cache-dir",
        dir.display()
    )]
    InUse { dir: PathBuf },
    #[error("block cache directory {} cannot be used: {reason}", dir.display())]
    Unusable { dir: PathBuf, reason: String },
}

/// A directory of verified blocks with a size limit, used by one process at a time.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    writes: Arc<Semaphore>,
    metrics: DiskCacheMetrics,
    tmp_seq: AtomicU64,
    /// When a failed write was last logged at warn level (ms since `started`), or u64::MAX.
    last_warn: AtomicU64,
    started: Instant,
    _lock: Flock<File>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The hex file name of a block with checksum `c`, and its fan-out directory.
fn names(c: &Checksum) -> (String, String) {
    let hex = c.to_string();
    (hex[..2].to_owned(), hex)
}

/// The checksum a cached file's name spells (lowercase hex, as [`names`] writes it).
fn parse_hex(name: &str) -> Option<Checksum> {
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(Checksum(out))
}

fn mkdir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Why a cached file does not serve a read.
enum Bad {
    Missing,
    Invalid(String),
    Io(io::Error),
}

/// Reads the file at `path` and checks it holds `size` bytes with checksum `sum`.
fn read_verified(path: &Path, size: u64, sum: &Checksum) -> Result<Bytes, Bad> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Bad::Missing),
        Err(e) => return Err(Bad::Io(e)),
    };
    let meta = f.metadata().map_err(Bad::Io)?;
    let len = meta.len();
    if len != size {
        return Err(Bad::Invalid(format!(
            "{len} bytes where the block has {size}"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf).map_err(Bad::Io)?;
    if buf.len() as u64 != size {
        return Err(Bad::Invalid(format!(
            "{} bytes read where the block has {size}",
            buf.len()
        )));
    }
    if checksum(&buf) != *sum {
        return Err(Bad::Invalid("the checksum does not match".into()));
    }
    // Recency that survives a restart, coarsely (an inode write per hit would cost more);
    // best effort.
    let now = SystemTime::now();
    if meta
        .modified()
        .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > MTIME_REFRESH))
    {
        let _ = f.set_modified(now);
    }
    Ok(Bytes::from(buf))
}

impl DiskCache {
    /// Opens (creating it, mode 0700, if missing) the cache directory `dir` holding at most
    /// `limit` bytes of blocks: takes its lock, deletes temporary files left by an interrupted
    /// write, and indexes the blocks already there (evicting down to the limit if it shrank).
    /// Blocking (it scans the directory).
    pub fn open(
        dir: &Path,
        limit: u64,
        metrics: DiskCacheMetrics,
    ) -> Result<DiskCache, DiskCacheError> {
        Self::open_waiting(dir, limit, metrics, Duration::ZERO)
    }

    /// [`open`](Self::open), waiting up to `lock_wait` for another holder of the lock to let
    /// go (a previous mount of the same directory that is still exiting).
    pub fn open_waiting(
        dir: &Path,
        limit: u64,
        metrics: DiskCacheMetrics,
        lock_wait: Duration,
    ) -> Result<DiskCache, DiskCacheError> {
        let unusable = |reason: String| DiskCacheError::Unusable {
            dir: dir.to_owned(),
            reason,
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DiskCacheError::NotADirectory {
                    dir: dir.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mkdir(dir).map_err(|e| unusable(format!("cannot create it: {e}")))?;
            }
            Err(e) => return Err(unusable(e.to_string())),
        }
        let dir = dir.canonicalize().map_err(|e| unusable(e.to_string()))?;
        let lock_path = dir.join(LOCK_FILE);
        let deadline = Instant::now() + lock_wait;
        let lock = loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(|e| {
                    unusable(format!(
                        "cannot create {LOCK_FILE} there ({e}); the directory must be writable"
                    ))
                })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, Errno::EWOULDBLOCK)) => return Err(DiskCacheError::InUse { dir }),
                Err((_, e)) => return Err(unusable(format!("cannot lock {LOCK_FILE}: {e}"))),
            }
        };
        let mut index = Index::default();
        let mut found = scan(&dir).map_err(|e| unusable(format!("cannot list it: {e}")))?;
        found.sort_by_key(|(_, _, mtime)| *mtime);
        for (c, size, _) in found {
            index.insert(c, size);
        }
        let cache = DiskCache {
            dir,
            limit,
            index: Mutex::new(index),
            writes: Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT as usize)),
            metrics,
            tmp_seq: AtomicU64::new(0),
            last_warn: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            _lock: lock,
        };
        {
            let mut idx = cache.lock_index();
            if idx.total() > limit {
                cache.evict(&mut idx);
            }
            cache.metrics.bytes.set(idx.total() as i64);
            tracing::info!(
                dir = %cache.dir.display(),
                blocks = idx.len(),
                bytes = idx.total(),
                limit,
                "block disk cache opened"
            );
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of blocks in the cache.
    pub fn bytes(&self) -> u64 {
        self.lock_index().total()
    }

    /// Blocks in the cache.
    pub fn len(&self) -> usize {
        self.lock_index().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metrics(&self) -> &DiskCacheMetrics {
        &self.metrics
    }

    /// Where the block with checksum `c` is (or would be) stored.
    pub fn path_of(&self, c: &Checksum) -> PathBuf {
        let (fan, hex) = names(c);
        self.dir.join(fan).join(hex)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent index (no partial updates).
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Block `b` from the cache, verified against its size and checksum; None when absent or
    /// bad (a bad file is deleted).
    pub async fn get(&self, b: &BlockInfo) -> Option<Bytes> {
        if !self.lock_index().touch(&b.checksum) {
            self.metrics.misses.inc();
            return None;
        }
        let path = self.path_of(&b.checksum);
        let (size, sum) = (b.size, b.checksum);
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || read_verified(&p, size, &sum))
            .await
            .unwrap_or_else(|e| Err(Bad::Io(io::Error::other(e.to_string()))));
        match read {
            Ok(data) => {
                self.metrics.hits.inc();
                return Some(data);
            }
            Err(Bad::Missing) => {
                tracing::debug!(file = %path.display(), "cached block vanished");
            }
            Err(Bad::Invalid(why)) => {
                tracing::warn!(file = %path.display(), block = %b.id, "cached block is bad ({why}); deleted, reading it from the bucket");
            }
            Err(Bad::Io(e)) => {
                tracing::warn!(file = %path.display(), block = %b.id, error = %e, "cannot read cached block; deleted, reading it from the bucket");
            }
        }
        self.forget(&b.checksum);
        self.metrics.misses.inc();
        None
    }

    /// Drops `c` from the index and the disk.
    fn forget(&self, c: &Checksum) {
        let mut idx = self.lock_index();
        idx.remove(c);
        let _ = std::fs::remove_file(self.path_of(c));
        self.metrics.bytes.set(idx.total() as i64);
    }

    /// Caches `data` as block `b` in the background (on the blocking pool). `data` must be
    /// the verified bytes of `b`. Does nothing when the block is cached or being written,
    /// larger than the limit, or when too many writes are in flight; a failed write is logged.
    pub fn put(self: &Arc<Self>, b: &BlockInfo, data: Bytes) {
        if data.len() as u64 != b.size || b.size > self.limit {
            return;
        }
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        if !self.lock_index().start_write(b.checksum) {
            return;
        }
        let this = self.clone();
        let sum = b.checksum;
        tokio::task::spawn_blocking(move || {
            let r = this.store(&sum, &data);
            this.lock_index().end_write(&sum);
            if let Err(e) = r {
                this.write_failed(&sum, &e);
            }
            // The permit last: once `flushed` sees every permit back, no write holds the cache
            // (nor its directory lock).
            drop(this);
            drop(permit);
        });
    }

    /// Waits until no background write is in flight.
    pub async fn flushed(&self) {
        if let Ok(all) = self.writes.acquire_many(MAX_WRITES_IN_FLIGHT).await {
            drop(all);
        }
    }

    /// Writes `data` under checksum `sum` (temporary file, then rename), then evicts if over
    /// the limit. Blocking.
    fn store(&self, sum: &Checksum, data: &[u8]) -> io::Result<()> {
        let (fan, hex) = names(sum);
        let sub = self.dir.join(fan);
        mkdir(&sub)?;
        let tmp = sub.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = File::create_new(&tmp).and_then(|mut f| f.write_all(data));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut idx = self.lock_index();
        if let Err(e) = std::fs::rename(&tmp, sub.join(&hex)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        idx.insert(*sum, data.len() as u64);
        if idx.total() > self.limit {
            self.evict(&mut idx);
        }
        self.metrics.bytes.set(idx.total() as i64);
        Ok(())
    }

    /// Deletes least recently used files until the total is under 90% of the limit.
    fn evict(&self, idx: &mut Index) {
        let target = (self.limit as f64 * EVICT_TO) as u64;
        let victims = idx.victims(target);
        for c in &victims {
            if let Err(e) = std::fs::remove_file(self.path_of(c))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %self.path_of(c).display(), error = %e, "cannot delete an evicted cached block");
            }
        }
        self.metrics.evictions.inc_by(victims.len() as u64);
        self.metrics.bytes.set(idx.total() as i64);
    }

    fn write_failed(&self, sum: &Checksum, e: &io::Error) {
        self.metrics.write_errors.inc();
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warn.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write blocks to the disk cache; reads go on from the buckets (further failures logged at most once a minute)");
        } else {
            tracing::debug!(dir = %self.dir.display(), checksum = %sum, error = %e, "cannot write a block to the disk cache");
        }
    }
}

/// The blocks in `dir` (checksum, size, mtime); deletes leftover temporary files.
fn scan(dir: &Path) -> io::Result<Vec<(Checksum, u64, SystemTime)>> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir)? {
        let fan = fan?;
        let name = fan.file_name();
        let Some(prefix) = name.to_str().filter(|n| n.len() == 2) else {
            continue;
        };
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path())? {
            let f = f?;
            let fname = f.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if fname.starts_with(TMP_PREFIX) {
                if let Err(e) = std::fs::remove_file(f.path()) {
                    tracing::warn!(file = %f.path().display(), error = %e, "cannot delete a leftover temporary block file");
                }
                continue;
            }
            let Some(c) = parse_hex(fname).filter(|_| fname.starts_with(prefix)) else {
                continue;
            };
            let m = f.metadata()?;
            if !m.is_file() {
                continue;
            }
            out.push((c, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mirrorfs_api::BlockId;

    use super::*;

    fn block(seed: u8, len: usize) -> (BlockInfo, Bytes) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let id = BlockId::parse(&format!("v1/00/{:032x}", seed)).unwrap();
        (BlockInfo::of(id, &data), Bytes::from(data))
    }

    fn open(dir: &Path, limit: u64) -> Arc<DiskCache> {
        Arc::new(DiskCache::open(dir, limit, DiskCacheMetrics::default()).unwrap())
    }

    async fn put(c: &Arc<DiskCache>, b: &BlockInfo, d: &Bytes) {
        c.put(b, d.clone());
        c.flushed().await;
    }

    #[tokio::test]
    async fn a_put_block_is_a_hit_and_stored_under_its_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let c = open(&tmp.path().join("cache"), 1 << 20);
        let (b, d) = block(1, 1000);
        assert!(c.get(&b).await.is_none());
        put(&c, &b, &d).await;
        assert_eq!(c.get(&b).await.unwrap(), d);
        let hex = b.checksum.to_string();
        let file = tmp.path().join("cache").join(&hex[..2]).join(&hex);
        assert_eq!(std::fs::read(&file).unwrap(), d);
        assert_eq!(c.bytes(), 1000);
        assert_eq!(c.metrics().hits.get(), 1);
        assert_eq!(c.metrics().misses.get(), 1);
        assert_eq!(c.metrics().bytes.get(), 1000);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Wrong length for the info: not cached.
        let (b2, d2) = block(2, 100);
        c.put(&b2, d2.slice(..50));
        c.flushed().await;
        assert!(c.get(&b2).await.is_none());
    }

    #[tokio::test]
    async fn a_corrupt_or_truncated_file_is_a_miss_and_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let c = open(tmp.path(), 1 << 20);
        let (b, d) = block(3, 4096);
        put(&c, &b, &d).await;
        let file = c.path_of(&b.checksum);
        let mut bad = d.to_vec();
        bad[100] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        assert!(c.get(&b).await.is_none());
        assert!(!file.exists(), "the corrupt file is deleted");
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.metrics().misses.get(), 1);
        // Truncated.
        put(&c, &b, &d).await;
        std::fs::write(&file, &d[..10]).unwrap();
        assert!(c.get(&b).await.is_none());
        assert!(!file.exists());
        // And it can be cached again.
        put(&c, &b, &d).await;
        assert_eq!(c.get(&b).await.unwrap(), d);
    }

    #[tokio::test]
    async fn the_limit_evicts_least_recently_used_first() {
        let tmp = tempfile::tempdir().unwrap();
        // Room for 4 blocks of 1000; eviction goes down to 3600 bytes.
        let c = open(tmp.path(), 4000);
        let blocks: Vec<_> = (10..15).map(|s| block(s, 1000)).collect();
        for (b, d) in &blocks[..4] {
            put(&c, b, d).await;
        }
        assert_eq!(c.bytes(), 4000);
        // Use the oldest, so the second oldest is the least recently used.
        assert!(c.get(&blocks[0].0).await.is_some());
        put(&c, &blocks[4].0, &blocks[4].1).await;
        // 5000 > 4000: evict down to <= 3600, i.e. two files: blocks 1 and 2.
        assert_eq!(c.bytes(), 3000);
        assert_eq!(c.metrics().evictions.get(), 2);
        assert_eq!(c.metrics().bytes.get(), 3000);
        for (i, (b, _)) in blocks.iter().enumerate() {
            let kept = ![1, 2].contains(&i);
            assert_eq!(c.path_of(&b.checksum).exists(), kept, "block {i}");
            assert_eq!(c.get(b).await.is_some(), kept, "block {i}");
        }
        // A block larger than the limit is not cached.
        let (big, bd) = block(20, 5000);
        put(&c, &big, &bd).await;
        assert!(!c.path_of(&big.checksum).exists());
    }

    #[tokio::test]
    async fn reopening_finds_the_blocks_and_cleans_temporary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let blocks: Vec<_> = (30..33).map(|s| block(s, 2000)).collect();
        {
            let c = open(tmp.path(), 1 << 20);
            for (b, d) in &blocks {
                put(&c, b, d).await;
            }
        }
        // An interrupted write and an unrelated file.
        let fan = c_fan(tmp.path(), &blocks[0].0);
        let stray = fan.join(format!("{TMP_PREFIX}999-1"));
        std::fs::write(&stray, b"partial").unwrap();
        std::fs::write(tmp.path().join("README"), b"keep").unwrap();
        let c = open(tmp.path(), 1 << 20);
        assert!(!stray.exists(), "temporary files are deleted at open");
        assert!(tmp.path().join("README").exists());
        assert_eq!(c.len(), 3);
        assert_eq!(c.bytes(), 6000);
        for (b, d) in &blocks {
            assert_eq!(c.get(b).await.as_ref(), Some(d));
        }
        drop(c);
        // The oldest by mtime goes first when the limit shrank.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(c_path(tmp.path(), &blocks[2].0))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let c = open(tmp.path(), 5000);
        assert!(c.bytes() <= 4500, "{}", c.bytes());
        assert_eq!(c.len(), 2);
        assert_eq!(c.metrics().evictions.get(), 1);
        assert!(!c_path(tmp.path(), &blocks[2].0).exists(), "oldest evicted");
    }

    fn c_fan(dir: &Path, b: &BlockInfo) -> PathBuf {
        dir.join(&b.checksum.to_string()[..2])
    }

    fn c_path(dir: &Path, b: &BlockInfo) -> PathBuf {
        c_fan(dir, b).join(b.checksum.to_string())
    }

    #[test]
    fn a_second_open_of_a_directory_in_use_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open(tmp.path(), 1 << 20);
        let e = DiskCache::open_waiting(
            tmp.path(),
            1 << 20,
            DiskCacheMetrics::default(),
            Duration::from_millis(200),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DiskCacheError::InUse { .. }), "{msg}");
        assert!(msg.contains("in use by another mirrorfs mount"), "{msg}");
        assert!(msg.contains("give each mount its own --cache-dir"), "{msg}");
        assert!(
            msg.contains(&tmp.path().canonicalize().unwrap().display().to_string()),
            "{msg}"
        );
        drop(first);
        open(tmp.path(), 1 << 20);
    }

    #[test]
    fn a_file_as_the_directory_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = DiskCache::open(&file, 1 << 20, DiskCacheMetrics::default()).unwrap_err();
        assert!(matches!(e, DiskCacheError::NotADirectory { .. }), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        // Below a file: cannot be created.
        let e =
            DiskCache::open(&file.join("sub"), 1 << 20, DiskCacheMetrics::default()).unwrap_err();
        assert!(matches!(e, DiskCacheError::Unusable { .. }), "{e}");
        assert!(e.to_string().contains("cannot"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_write_is_counted_and_not_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let c = open(tmp.path(), 1 << 20);
        let (b, d) = block(40, 500);
        // A file where the block's fan-out directory should be.
        std::fs::write(c_fan(tmp.path(), &b), b"in the way").unwrap();
        put(&c, &b, &d).await;
        assert_eq!(c.metrics().write_errors.get(), 1);
        assert!(c.get(&b).await.is_none());
        assert_eq!(c.bytes(), 0);
        // Nothing blocks the next attempt once the obstacle is gone.
        std::fs::remove_file(c_fan(tmp.path(), &b)).unwrap();
        put(&c, &b, &d).await;
        assert_eq!(c.get(&b).await.unwrap(), d);
    }

    #[test]
    fn hex_names_parse_back() {
        let (b, _) = block(50, 10);
        assert_eq!(parse_hex(&b.checksum.to_string()), Some(b.checksum));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"A".repeat(64)), None);
    }
}
