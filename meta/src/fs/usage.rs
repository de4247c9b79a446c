//! Volume usage (bytes and inodes) without a hot key.
//!
//! Every operation that changes a volume's usage writes, in its own transaction, a small
//! [`UsageDelta`](mirrorfs_api::records::UsageDelta) record under a key that is unique to the
//! writing process and operation (`m/u/<vol>\x01<instance><seq>`), so concurrent creates never
//! conflict on a shared counter. The folded total lives in `m/u/<vol>\x00`
//! ([`Usage`](mirrorfs_api::records::Usage)). The usage of a volume is the folded total plus
//! every pending delta, all under one prefix:
//!
//! - **Consistency.** Usage is exact: every committed change is counted, immediately, and
//!   survives crashes (the delta commits atomically with the change). Usage read by one range
//!   call is the usage at one revision; a volume with more pending deltas than one page is
//!   summed over a few pages, each consistent, and folding keeps pending deltas few.
//! - **Folding.** A process folds a volume's deltas into the total after it has written
//!   [`FOLD_EVERY`] of them (in the background) and when a read finds more than
//!   [`FOLD_EVERY`] pending (deltas of crashed processes are folded by whoever reads next). A
//!   fold is one transaction: it compares the total, writes the new total and deletes exactly
//!   the deltas it summed (deltas are immutable), so concurrent folds and writers are safe.
//! - **Capacity.** Limits are checked against an estimate per process: the usage read at most
//!   [`REFRESH`] ago, plus this process's own changes committed since, plus what its
//!   operations in flight have reserved. In one process the limit is exact (it errs, if ever,
//!   towards refusing for an instant around a refresh); other processes' writes are seen
//!   within [`REFRESH`], so several processes writing at once may overshoot a limit by what
//!   they write in that window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mirrorfs_api::VolumeId;
use mirrorfs_api::records::{Usage as UsageRecord, UsageDelta};

use super::keys;
use super::txn::{Backoff, Delta};
use crate::engine::{Compare, Engine, KeyValue, Mutation, Txn, TxnOutcome, prefix_end};
use crate::error::{MetaError, Result};

/// Deltas a process writes to a volume before it folds them.
pub const FOLD_EVERY: u64 = 1024;
/// How old the usage behind capacity checks may be.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Page size of usage reads.
const PAGE: usize = 4096;

/// A volume's usage, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: i128,
    pub inodes: i128,
    /// Deltas not folded yet.
    pub pending: usize,
}

impl Totals {
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.bytes.max(0)).unwrap_or(u64::MAX)
    }
    pub fn inodes(&self) -> u64 {
        u64::try_from(self.inodes.max(0)).unwrap_or(u64::MAX)
    }
}

/// Every usage key of `vol`, read page by page.
async fn read_all(engine: &dyn Engine, vol: VolumeId) -> Result<Vec<KeyValue>> {
    let prefix = keys::usage(vol);
    let end = prefix_end(&prefix);
    let mut start = prefix;
    let mut out = Vec::new();
    loop {
        let page = engine.range(&start, &end, PAGE).await?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            start = last.key.clone();
            start.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

fn sum(kvs: &[KeyValue]) -> Result<Totals> {
    let mut t = Totals::default();
    for kv in kvs {
        if keys::is_usage_base(&kv.key) {
            let u: UsageRecord = keys::decode(kv)?;
            t.bytes += i128::from(u.bytes);
            t.inodes += i128::from(u.inodes);
        } else {
            let d: UsageDelta = keys::decode(kv)?;
            t.bytes += i128::from(d.bytes);
            t.inodes += i128::from(d.inodes);
            t.pending += 1;
        }
    }
    Ok(t)
}

/// The usage of `vol` now.
pub async fn totals(engine: &dyn Engine, vol: VolumeId) -> Result<Totals> {
    sum(&read_all(engine, vol).await?)
}

/// Most deltas one fold transaction deletes.
pub const FOLD_CHUNK: usize = 4096;

fn non_negative(bytes: i128, inodes: i128) -> bool {
    bytes >= 0 && inodes >= 0
}

/// Folds every pending delta of `vol` into its total, [`FOLD_CHUNK`] at a time. Returns the
/// totals it last saw.
///
/// The total is unsigned, and the deltas of one chunk (in key order, not commit order) may sum
/// below what the total can absorb (a file's removal folded before its creation); such a chunk
/// is replaced by non-negative deltas only, which folds the creations first.
pub async fn fold(engine: &dyn Engine, vol: VolumeId, volume: &str) -> Result<Totals> {
    let mut backoff = Backoff::new(volume);
    let base_key = keys::usage_base(vol);
    loop {
        let kvs = read_all(engine, vol).await?;
        let t = sum(&kvs)?;
        if t.pending == 0 {
            return Ok(t);
        }
        let base_kv = kvs.iter().find(|kv| kv.key == base_key);
        let base = match base_kv {
            Some(kv) => keys::decode::<UsageRecord>(kv)?,
            None => UsageRecord::default(),
        };
        let mut deltas = Vec::with_capacity(t.pending);
        for kv in kvs.iter().filter(|kv| kv.key != base_key) {
            deltas.push((kv, keys::decode::<UsageDelta>(kv)?));
        }
        let total = |chosen: &[&(&KeyValue, UsageDelta)]| {
            chosen.iter().fold(
                (i128::from(base.bytes), i128::from(base.inodes)),
                |(b, i), (_, d)| (b + i128::from(d.bytes), i + i128::from(d.inodes)),
            )
        };
        let mut chosen: Vec<_> = deltas.iter().take(FOLD_CHUNK).collect();
        let mut sums = total(&chosen);
        if !non_negative(sums.0, sums.1) {
            chosen = deltas
                .iter()
                .filter(|(_, d)| d.bytes >= 0 && d.inodes >= 0)
                .take(FOLD_CHUNK)
                .collect();
            sums = total(&chosen);
        }
        if chosen.is_empty() || !non_negative(sums.0, sums.1) {
            // Nothing can be folded safely right now (reads raced with writers): leave it.
            return Ok(t);
        }
        let mut txn = Txn::new().when(match base_kv {
            Some(kv) => Compare::unchanged(kv),
            None => Compare::absent(base_key.clone()),
        });
        for (kv, _) in &chosen {
            txn.mutations.push(Mutation::Delete {
                key: kv.key.clone(),
            });
        }
        let record = UsageRecord {
            bytes: u64::try_from(sums.0).unwrap_or(u64::MAX),
            inodes: u64::try_from(sums.1).unwrap_or(u64::MAX),
        };
        txn = txn.put(base_key.clone(), keys::encode(&record));
        match engine.txn(txn).await? {
            TxnOutcome::Committed(_) if chosen.len() == t.pending => {
                return Ok(Totals { pending: 0, ..t });
            }
            TxnOutcome::Committed(_) => {}
            TxnOutcome::Conflict => backoff.conflict().await?,
        }
    }
}

/// A process's view of a volume's usage, for capacity checks.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// When `bytes` and `inodes` were last read from the engine.
    at: Instant,
    /// Usage read at `at`, plus this process's changes committed since.
    bytes: i128,
    inodes: i128,
    /// Reserved by operations of this process that have not finished.
    in_flight_bytes: i128,
    in_flight_inodes: i128,
}

/// Per-process usage bookkeeping of one volume.
#[derive(Default)]
pub struct UsageState {
    written: AtomicU64,
    folding: AtomicBool,
    estimate: Mutex<Option<Estimate>>,
}

/// The capacity of a volume (0: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub bytes: u64,
    pub inodes: u64,
}

/// Usage reserved by an operation in flight; released when dropped, committed or not (the
/// committed change is added separately by [`UsageState::committed`]).
pub struct Reservation<'a> {
    state: &'a UsageState,
    delta: Delta,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.delta.is_zero() {
            return;
        }
        if let Some(e) = self.state.lock().as_mut() {
            e.in_flight_bytes -= i128::from(self.delta.bytes);
            e.in_flight_inodes -= i128::from(self.delta.inodes);
        }
    }
}

impl UsageState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Estimate>> {
        self.estimate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adjust(&self, bytes: i128, inodes: i128) {
        if let Some(e) = self.lock().as_mut() {
            e.bytes += bytes;
            e.inodes += inodes;
        }
    }

    /// Records fresh totals as the base of the estimate.
    pub fn observed(&self, t: &Totals) {
        let mut guard = self.lock();
        let (in_flight_bytes, in_flight_inodes) = guard
            .as_ref()
            .map_or((0, 0), |e| (e.in_flight_bytes, e.in_flight_inodes));
        *guard = Some(Estimate {
            at: Instant::now(),
            bytes: t.bytes,
            inodes: t.inodes,
            in_flight_bytes,
            in_flight_inodes,
        });
    }

    /// Reserves `want` (positive parts only are checked) against `cap`, or fails with
    /// [`MetaError::NoSpace`].
    pub async fn reserve(
        &self,
        engine: &dyn Engine,
        vol: VolumeId,
        volume: &str,
        cap: Capacity,
        want: Delta,
    ) -> Result<Reservation<'_>> {
        let limited = (want.inodes > 0 && cap.inodes > 0) || (want.bytes > 0 && cap.bytes > 0);
        if !limited {
            return Ok(Reservation {
                state: self,
                delta: Delta::default(),
            });
        }
        let fresh = matches!(*self.lock(), Some(e) if e.at.elapsed() < REFRESH);
        if !fresh {
            let t = totals(engine, vol).await?;
            self.observed(&t);
        }
        let mut guard = self.lock();
        let Some(e) = guard.as_mut() else {
            // Reset concurrently; be permissive rather than fail a write for bookkeeping.
            return Ok(Reservation {
                state: self,
                delta: Delta::default(),
            });
        };
        let (bytes, inodes) = (i128::from(want.bytes), i128::from(want.inodes));
        let (used_bytes, used_inodes) =
            (e.bytes + e.in_flight_bytes, e.inodes + e.in_flight_inodes);
        if want.inodes > 0 && cap.inodes > 0 && used_inodes + inodes > i128::from(cap.inodes) {
            return Err(MetaError::NoSpace {
                volume: volume.to_owned(),
                what: format!(
                    "{} of {} inodes are in use; delete files or raise the volume's inode capacity",
                    used_inodes.max(0),
                    cap.inodes
                ),
            });
        }
        if want.bytes > 0 && cap.bytes > 0 && used_bytes + bytes > i128::from(cap.bytes) {
            return Err(MetaError::NoSpace {
                volume: volume.to_owned(),
                what: format!(
                    "{} of {} bytes are in use and {} more were asked for",
                    used_bytes.max(0),
                    cap.bytes,
                    want.bytes
                ),
            });
        }
        e.in_flight_bytes += bytes;
        e.in_flight_inodes += inodes;
        Ok(Reservation {
            state: self,
            delta: want,
        })
    }

    /// Accounts a committed change. Returns true when this process should fold the volume's
    /// deltas now (the caller then calls [`UsageState::fold_done`] when finished).
    pub fn committed(&self, delta: Delta) -> bool {
        if delta.is_zero() {
            return false;
        }
        self.adjust(i128::from(delta.bytes), i128::from(delta.inodes));
        let written = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        written >= FOLD_EVERY && self.start_fold()
    }

    /// Claims the right to fold; false if a fold of this process is already running.
    pub fn start_fold(&self) -> bool {
        let won = !self.folding.swap(true, Ordering::AcqRel);
        if won {
            self.written.store(0, Ordering::Relaxed);
        }
        won
    }

    pub fn fold_done(&self) {
        self.folding.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemoryEngine;

    async fn put_delta(e: &MemoryEngine, vol: VolumeId, seq: u64, bytes: i64, inodes: i64) {
        let key = keys::usage_delta(vol, &[1; 8], seq);
        let r = e
            .txn(Txn::new().put(key, keys::encode(&UsageDelta { bytes, inodes })))
            .await;
        assert!(matches!(r, Ok(TxnOutcome::Committed(_))));
    }

    #[tokio::test]
    async fn fold_keeps_totals_and_clears_deltas() -> Result<()> {
        let e = MemoryEngine::new();
        let vol = VolumeId(7);
        for seq in 0..5000 {
            put_delta(&e, vol, seq, 10, 1).await;
        }
        put_delta(&e, vol, 9999, -20_000, -10).await;
        let before = totals(&e, vol).await?;
        assert_eq!(
            (before.bytes, before.inodes, before.pending),
            (30_000, 4990, 5001)
        );
        let folded = fold(&e, vol, "v").await?;
        assert_eq!((folded.bytes, folded.inodes), (30_000, 4990));
        let after = totals(&e, vol).await?;
        assert_eq!(
            (after.bytes, after.inodes, after.pending),
            (30_000, 4990, 0)
        );
        assert_eq!(after.pending, 0);
        // Another volume's keys are untouched.
        put_delta(&e, VolumeId(8), 0, 1, 1).await;
        fold(&e, vol, "v").await?;
        assert_eq!(totals(&e, VolumeId(8)).await?.pending, 1);
        Ok(())
    }

    #[tokio::test]
    async fn removals_sorted_before_their_creations_still_fold() -> Result<()> {
        let e = MemoryEngine::new();
        let vol = VolumeId(3);
        // Instance [0; 8] sorts first and removed what instance [1; 8] created.
        for seq in 0..(FOLD_CHUNK as u64 + 10) {
            let key = keys::usage_delta(vol, &[0; 8], seq);
            let d = UsageDelta {
                bytes: -5,
                inodes: -1,
            };
            e.txn(Txn::new().put(key, keys::encode(&d))).await?;
        }
        for seq in 0..(FOLD_CHUNK as u64 + 20) {
            put_delta(&e, vol, seq, 5, 1).await;
        }
        let folded = fold(&e, vol, "v").await?;
        assert_eq!((folded.bytes, folded.inodes, folded.pending), (50, 10, 0));
        let after = totals(&e, vol).await?;
        assert_eq!((after.bytes, after.inodes, after.pending), (50, 10, 0));
        Ok(())
    }

    #[tokio::test]
    async fn reservations_are_released_unless_committed() -> Result<()> {
        let e = MemoryEngine::new();
        let vol = VolumeId(1);
        put_delta(&e, vol, 0, 0, 1).await;
        let s = UsageState::default();
        let cap = Capacity {
            bytes: 0,
            inodes: 3,
        };
        let one = Delta {
            bytes: 0,
            inodes: 1,
        };
        {
            let _r = s.reserve(&e, vol, "v", cap, one).await?;
            let _r2 = s.reserve(&e, vol, "v", cap, one).await?;
            assert!(s.reserve(&e, vol, "v", cap, one).await.is_err());
        }
        // Both released: two more fit, and after committing them a third does not.
        for _ in 0..2 {
            let _r = s.reserve(&e, vol, "v", cap, one).await?;
            s.committed(one);
        }
        let err = s.reserve(&e, vol, "v", cap, one).await.err();
        assert!(matches!(err, Some(MetaError::NoSpace { .. })), "{err:?}");
        Ok(())
    }
}
