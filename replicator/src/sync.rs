//! Bucket-level sync, as `rclone copy` or `juicefs sync` do it: every object under the source
//! bucket (or prefix) that the destination lacks is copied under the same key. Only missing
//! objects by default (same key and size present = skipped); with `check`, objects present on
//! both sides are compared by BLAKE3 and a mismatch is re-copied. Objects are read whole (blocks
//! are at most 4 MiB).
//!
//! The destination is listed first (one LIST per thousand keys instead of a HEAD per object),
//! then the source listing streams into up to `concurrency` copies running as separate tasks.
//! A copy of an object the destination does not have never overwrites (conditional create); an
//! object proven different (wrong size, or a BLAKE3 mismatch with `check`) is deleted and
//! created again, the one replacement a block store allows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mirrorfs_objstore::{Bucket, ObjError, checksum};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How a sync runs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Copies in flight at once.
    pub concurrency: usize,
    /// Also compare objects present on both sides (BLAKE3 of both) and re-copy mismatches.
    pub check: bool,
    /// Report what would be copied; write nothing.
    pub dry_run: bool,
    /// Most bytes per second read from the source (token bucket); `None` is unlimited.
    pub bwlimit: Option<u64>,
    /// Only objects under this key directory (whole components), e.g. `v7`.
    pub under: Option<String>,
    /// Stop scheduling copies after this many failures in a row (an outage), leaving the rest
    /// for the next run. 0 never stops.
    pub max_consecutive_failures: u64,
    /// Replace destination objects whose size differs (and, with `check`, whose content
    /// differs). `false` leaves them alone (counted as skipped, with a warning): the reverse
    /// pass of a reconciliation, where the other side is authoritative.
    pub replace_different: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            check: false,
            dry_run: false,
            bwlimit: None,
            under: None,
            max_consecutive_failures: 100,
            replace_different: true,
        }
    }
}

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectOutcome {
    /// Copied: it was missing from the destination.
    Copied,
    /// Re-copied: the destination's object had another size or (with `check`) other content.
    Replaced,
    /// Already there (same size; with `check`, same content).
    Skipped,
    /// Dry run: would have been copied or replaced.
    WouldCopy,
}

/// Hooks for progress display. Every method has a no-op default; `()` shows nothing.
pub trait Progress: Send + Sync + 'static {
    /// The destination listing is done (`objects` found there).
    fn destination_listed(&self, _objects: u64) {}
    /// One more source object was listed; `to_copy` says whether it will be copied.
    fn scanned(&self, _key: &str, _bytes: u64, _to_copy: bool) {}
    /// The source listing is complete: the totals are final from here on.
    fn listing_done(&self) {}
    /// An object was handled.
    fn done(&self, _key: &str, _bytes: u64, _outcome: ObjectOutcome) {}
    /// An object failed.
    fn failed(&self, _key: &str, _error: &ObjError) {}
}

impl Progress for () {}

/// Keeps at most this many failure reasons in a summary (the count is exact).
pub const MAX_REPORTED_FAILURES: usize = 100;

/// The result of a sync.
#[derive(Clone, Debug, Default)]
pub struct SyncSummary {
    /// Source objects listed, and their bytes.
    pub scanned: u64,
    pub scanned_bytes: u64,
    /// Objects copied (missing at the destination) or replaced (different there).
    pub copied: u64,
    pub replaced: u64,
    /// Bytes written to the destination (copied + replaced).
    pub bytes: u64,
    /// Objects already there.
    pub skipped: u64,
    /// Dry run: objects and bytes that would have been copied.
    pub would_copy: u64,
    pub would_copy_bytes: u64,
    /// Objects that failed (exact count), with up to [`MAX_REPORTED_FAILURES`] `(key, reason)`.
    pub failed: u64,
    pub failures: Vec<(String, String)>,
    /// Why the sync stopped before the end (source listing failed, too many failures in a
    /// row); `None` when every listed object was handled.
    pub incomplete: Option<String>,
    pub elapsed: Duration,
}

impl SyncSummary {
    /// True when nothing failed and nothing was left out.
    pub fn is_ok(&self) -> bool {
        self.failed == 0 && self.incomplete.is_none()
    }

    /// Throughput of the bytes written, in MB/s (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 / 1e6 / s
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scanned {} objects ({}), copied {}, replaced {}, skipped {}, failed {}",
            self.scanned,
            human_bytes(self.scanned_bytes),
            self.copied,
            self.replaced,
            self.skipped,
            self.failed
        )?;
        if self.would_copy > 0 {
            writeln!(
                f,
                "dry run: would copy {} objects ({})",
                self.would_copy,
                human_bytes(self.would_copy_bytes)
            )?;
        }
        write!(
            f,
            "wrote {} in {:.1?} ({:.1} MB/s)",
            human_bytes(self.bytes),
            self.elapsed,
            self.mb_per_sec()
        )?;
        for (key, why) in &self.failures {
            write!(f, "\nfailed: {key}: {why}")?;
        }
        if self.failed > self.failures.len() as u64 {
            write!(
                f,
                "\n... and {} more failures",
                self.failed - self.failures.len() as u64
            )?;
        }
        if let Some(why) = &self.incomplete {
            write!(f, "\nINCOMPLETE: {why}")?;
        }
        Ok(())
    }
}

/// Why a sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot reach the source: {0}")]
    Source(#[source] ObjError),
    #[error("cannot reach the destination: {0}")]
    Destination(#[source] ObjError),
    #[error("invalid sync options: {0}")]
    Invalid(String),
}

/// Copies every object of `src` (under `opts.under`) that `dst` lacks. Per-object failures are
/// in the summary, not an `Err`: check [`SyncSummary::is_ok`].
pub async fn sync(
    src: &Bucket,
    dst: &Bucket,
    opts: SyncOptions,
    progress: impl Progress,
) -> Result<SyncSummary, SyncError> {
    if opts.concurrency == 0 {
        return Err(SyncError::Invalid("concurrency must be at least 1".into()));
    }
    if opts.bwlimit == Some(0) {
        return Err(SyncError::Invalid(
            "a bandwidth limit of 0 bytes/s copies nothing".into(),
        ));
    }
    let started = Instant::now();
    src.check().await.map_err(SyncError::Source)?;
    dst.check().await.map_err(SyncError::Destination)?;
    let progress = Arc::new(progress);
    let under = opts.under.as_deref();

    // What the destination has, by key.
    let mut present: HashMap<String, u64> = HashMap::new();
    let mut listing = dst.list(under);
    while let Some(m) = listing.next().await {
        let m = m.map_err(SyncError::Destination)?;
        present.insert(m.key, m.size);
    }
    drop(listing);
    progress.destination_listed(present.len() as u64);

    let shared = Arc::new(Shared {
        summary: Mutex::new(SyncSummary::default()),
        consecutive_failures: AtomicU64::new(0),
        limiter: opts.bwlimit.map(RateLimiter::new),
    });
    let permits = Arc::new(Semaphore::new(opts.concurrency));
    let mut tasks = JoinSet::new();
    let mut listing = src.list(under);
    let mut incomplete = None;
    while let Some(item) = listing.next().await {
        let m = match item {
            Ok(m) => m,
            Err(e) => {
                incomplete = Some(format!("listing the source stopped: {e}"));
                break;
            }
        };
        let have = present.get(&m.key).copied();
        let plan = match have {
            None => Plan::Copy,
            Some(size) if size != m.size && opts.replace_different => Plan::Replace,
            Some(size) if size != m.size => {
                warn!(key = %m.key, dst = %dst.display(), "differs in size; left alone");
                Plan::Skip
            }
            Some(_) if opts.check && opts.replace_different => Plan::Compare,
            Some(_) => Plan::Skip,
        };
        {
            let mut s = shared.summary.lock().await;
            s.scanned += 1;
            s.scanned_bytes += m.size;
        }
        progress.scanned(&m.key, m.size, !matches!(plan, Plan::Skip));
        match plan {
            Plan::Skip => {
                shared.summary.lock().await.skipped += 1;
                progress.done(&m.key, m.size, ObjectOutcome::Skipped);
                continue;
            }
            Plan::Copy | Plan::Replace if opts.dry_run => {
                {
                    let mut s = shared.summary.lock().await;
                    s.would_copy += 1;
                    s.would_copy_bytes += m.size;
                }
                progress.done(&m.key, m.size, ObjectOutcome::WouldCopy);
                continue;
            }
            _ => {}
        }
        let limit = opts.max_consecutive_failures;
        if limit > 0 && shared.consecutive_failures.load(Ordering::Relaxed) >= limit {
            incomplete = Some(format!(
                "stopped after {limit} failures in a row; run the sync again once the cause is \
                 fixed"
            ));
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // Reap finished tasks so the set does not grow with the bucket.
        while tasks.try_join_next().is_some() {}
        let (src, dst, shared, progress) =
            (src.clone(), dst.clone(), shared.clone(), progress.clone());
        let dry_run = opts.dry_run;
        tasks.spawn(async move {
            let key = m.key;
            let r = copy_one(&src, &dst, &key, plan, dry_run, shared.limiter.as_ref()).await;
            let mut s = shared.summary.lock().await;
            match r {
                Ok((outcome, bytes)) => {
                    shared.consecutive_failures.store(0, Ordering::Relaxed);
                    match outcome {
                        ObjectOutcome::Copied => s.copied += 1,
                        ObjectOutcome::Replaced => s.replaced += 1,
                        ObjectOutcome::Skipped => s.skipped += 1,
                        ObjectOutcome::WouldCopy => {
                            s.would_copy += 1;
                            s.would_copy_bytes += bytes;
                        }
                    }
                    if matches!(outcome, ObjectOutcome::Copied | ObjectOutcome::Replaced) {
                        s.bytes += bytes;
                    }
                    drop(s);
                    progress.done(&key, bytes, outcome);
                }
                Err(e) => {
                    shared.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                    s.failed += 1;
                    if s.failures.len() < MAX_REPORTED_FAILURES {
                        s.failures.push((key.clone(), e.to_string()));
                    }
                    drop(s);
                    warn!(key = %key, error = %e, "copy failed");
                    progress.failed(&key, &e);
                }
            }
            drop(permit);
        });
    }
    drop(listing);
    progress.listing_done();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            let mut s = shared.summary.lock().await;
            s.failed += 1;
            s.failures
                .push(("?".into(), format!("copy task failed: {e}")));
        }
    }
    let mut summary = std::mem::take(&mut *shared.summary.lock().await);
    summary.incomplete = incomplete;
    summary.elapsed = started.elapsed();
    info!(
        src = %src.display(),
        dst = %dst.display(),
        scanned = summary.scanned,
        copied = summary.copied,
        replaced = summary.replaced,
        skipped = summary.skipped,
        failed = summary.failed,
        "sync finished"
    );
    Ok(summary)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Copy,
    /// Present with another size: proven different.
    Replace,
    /// Present with the same size: compare content.
    Compare,
    Skip,
}

struct Shared {
    summary: Mutex<SyncSummary>,
    consecutive_failures: AtomicU64,
    limiter: Option<RateLimiter>,
}

async fn copy_one(
    src: &Bucket,
    dst: &Bucket,
    key: &str,
    plan: Plan,
    dry_run: bool,
    limiter: Option<&RateLimiter>,
) -> Result<(ObjectOutcome, u64), ObjError> {
    let data = src.get_object(key).await?;
    let bytes = data.len() as u64;
    if let Some(l) = limiter {
        l.acquire(bytes).await;
    }
    match plan {
        Plan::Copy => {
            dst.create_object(key, data).await?;
            Ok((ObjectOutcome::Copied, bytes))
        }
        Plan::Compare => {
            let theirs = dst.get_object(key).await?;
            if checksum(&theirs) == checksum(&data) {
                return Ok((ObjectOutcome::Skipped, bytes));
            }
            if dry_run {
                return Ok((ObjectOutcome::WouldCopy, bytes));
            }
            warn!(key, dst = %dst.display(), "content differs from the source; replacing it");
            dst.replace_object(key, data).await?;
            Ok((ObjectOutcome::Replaced, bytes))
        }
        Plan::Replace => {
            warn!(key, dst = %dst.display(), "size differs from the source; replacing it");
            dst.replace_object(key, data).await?;
            Ok((ObjectOutcome::Replaced, bytes))
        }
        Plan::Skip => Ok((ObjectOutcome::Skipped, 0)),
    }
}

/// A token bucket shared by all copies: bytes are taken as they are read, and a reader that
/// overdraws waits until the debt is paid at `rate` bytes/s. The bucket holds at most a tenth
/// of a second of tokens, so bursts stay short.
pub struct RateLimiter {
    rate: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec.max(1) as f64,
            state: std::sync::Mutex::new((0.0, Instant::now())),
        }
    }

    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, last) = &mut *st;
            let burst = self.rate / 10.0;
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
            *last = now;
            *tokens -= n as f64;
            if *tokens < 0.0 {
                Duration::from_secs_f64(-*tokens / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// `1.5 MiB`-style sizes for summaries.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
