//! The enqueuer: follows this mirror cluster's own changelog and queues a copy of every block
//! that an extent put references in a replicated volume (one exposed by a mirror volume with its
//! own bucket). Everything that adds blocks shows up there: the follower's applied source
//! transactions and its bootstraps alike.
//!
//! Its position (`l/rq/cursor`) is written in the same transaction as the tasks it queued, so a
//! restart resumes after the last batch that queued anything, and re-reading a batch only puts
//! the same task keys again. Batches that queue nothing (most of them, and all of this
//! module's own commits) advance the position in memory and persist it now and then.
//!
//! A volume that becomes replicated, a first start, and a changelog compacted past the position
//! queue a full sync of the volume's blocks instead; a volume that stops being replicated has its
//! queue dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use mirrorfs_api::meta::Extent;
use mirrorfs_api::records::{FullSync, Reconciled, ReplicationCursor, ReplicationTask};
use mirrorfs_api::{BlockId, Revision, VolumeId};

use super::keys::{self, PRIORITY_NEW};
use super::{Replication, now_ms};
use crate::engine::{
    ChangeEntry, Compare, EngineError, KeyValue, Mutation, Txn, TxnOutcome, prefix_end,
};
use crate::error::{MetaError, Result};
use crate::fs::keys::{EXTENT, VOLUME_NAME, decode, encode};
use crate::fs::mirror::MIRROR_VOLUME;

/// Most entries read into one batch.
const BATCH_ENTRIES: usize = 256;
/// Most mutations per enqueuer transaction (below etcd's default of 128 operations).
const TXN_MUTATIONS: usize = 100;
/// Extents read per full-sync step (each may queue a task: the step's transaction stays below
/// etcd's default of 128 operations).
const FULL_SYNC_PAGE: usize = 100;
/// How often an advanced position is persisted when nothing was queued.
const PERSIST_EVERY: Duration = Duration::from_secs(30);

/// Runs until dropped; errors are logged and the enqueuer restarts from its stored position.
pub(super) async fn run(r: &Replication) {
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        if let Err(e) = follow(r).await {
            r.note_error(
                "the enqueuer stopped; restarting from its stored position",
                &e,
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            delay = Duration::from_millis(100);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The enqueuer's state between batches.
struct Follow<'a> {
    r: &'a Replication,
    /// Source volume ids that are replicated.
    replicated: BTreeSet<u64>,
    /// The stored cursor (for the compare), and the revision read up to.
    cursor: Option<KeyValue>,
    read_up_to: Revision,
    persisted_at: Instant,
}

async fn follow(r: &Replication) -> Result<()> {
    let mut f = Follow {
        r,
        replicated: replicated(r).await?,
        cursor: r.engine.get(keys::CURSOR).await?,
        read_up_to: Revision(0),
        persisted_at: Instant::now(),
    };
    match &f.cursor {
        Some(kv) => f.read_up_to = Revision(decode::<ReplicationCursor>(kv)?.revision),
        None => f.restart_at_head("replication started").await?,
    }
    loop {
        let mut stream = match r.engine.watch(f.read_up_to.next()).await {
            Ok(s) => s,
            Err(EngineError::Compacted { .. }) => {
                f.restart_at_head("the local changelog was compacted past the enqueuer")
                    .await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        r.enqueued_up_to.store(f.read_up_to.0, Ordering::Relaxed);
        loop {
            let idle = if full_sync_pending(r).await? {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            let first = tokio::select! {
                e = stream.next() => e,
                () = tokio::time::sleep(idle) => {
                    f.full_sync_step().await?;
                    f.persist_if_due().await?;
                    continue;
                }
            };
            let mut batch = Vec::new();
            match first {
                Some(Ok(e)) => batch.push(e),
                Some(Err(EngineError::Compacted { .. })) => {
                    f.restart_at_head("the local changelog was compacted past the enqueuer")
                        .await?;
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(MetaError::Engine(EngineError::Unavailable(
                        "the local changelog stream ended".into(),
                    )));
                }
            }
            while batch.len() < BATCH_ENTRIES {
                match stream.next().now_or_never() {
                    Some(Some(Ok(e))) => batch.push(e),
                    Some(Some(Err(e))) => return Err(e.into()),
                    _ => break,
                }
            }
            f.apply(&batch).await?;
        }
    }
}

impl Follow<'_> {
    /// Queues the blocks of one batch of local changelog entries.
    async fn apply(&mut self, batch: &[ChangeEntry]) -> Result<()> {
        let Some(last) = batch.last().map(|e| e.revision) else {
            return Ok(());
        };
        let mut writes = Vec::new();
        if batch
            .iter()
            .flat_map(|e| &e.mutations)
            .any(changes_membership)
        {
            writes.extend(self.update_membership().await?);
        }
        let mut tasks = BTreeMap::new();
        for m in batch.iter().flat_map(|e| &e.mutations) {
            if let Mutation::Put { key, value } = m
                && let Some((vol, block, task)) = self.block_of(key, value)
            {
                tasks.insert(keys::ready(vol, PRIORITY_NEW, 0, &block), encode(&task));
            }
        }
        let queued = tasks.len();
        writes.extend(
            tasks
                .into_iter()
                .map(|(key, value)| Mutation::Put { key, value }),
        );
        if writes.is_empty() {
            self.read_up_to = last;
        } else {
            self.commit(writes, last).await?;
            self.r.metrics.enqueued_total.inc_by(queued as u64);
            self.r.ready.notify_waiters();
        }
        self.r.enqueued_up_to.store(last.0, Ordering::Relaxed);
        self.persist_if_due().await
    }

    /// The block an extent put references, if its volume is replicated.
    fn block_of(&self, key: &[u8], value: &[u8]) -> Option<(VolumeId, BlockId, ReplicationTask)> {
        let vol = u64::from_be_bytes(key.strip_prefix(EXTENT)?.get(..8)?.try_into().ok()?);
        if !self.replicated.contains(&vol) {
            return None;
        }
        let e: Extent = prost::Message::decode(value)
            .inspect_err(|err| {
                self.r.note_error(
                    &format!("skipping an undecodable extent {}", key.escape_ascii()),
                    err,
                );
            })
            .ok()?;
        let block = BlockId::parse(&e.block_id).ok()?;
        Some((VolumeId(vol), block, new_task(&e)))
    }

    /// Re-reads which volumes are replicated; queues full syncs for new ones and drops the queue
    /// of those no longer replicated. Returns the writes that do so.
    async fn update_membership(&mut self) -> Result<Vec<Mutation>> {
        let now = replicated(self.r).await?;
        let mut writes = Vec::new();
        for vol in now.difference(&self.replicated) {
            tracing::info!(
                volume_id = vol,
                "volume is now replicated: queueing a full sync"
            );
            writes.push(full_sync_marker(
                VolumeId(*vol),
                "a mirror volume got its own bucket",
                false,
            ));
        }
        for vol in self.replicated.difference(&now) {
            tracing::info!(
                volume_id = vol,
                "volume is no longer replicated: dropping its queue"
            );
            let v = VolumeId(*vol);
            for prefix in [
                keys::ready_volume(v),
                keys::leased_volume(v),
                keys::full_sync(v),
            ] {
                writes.push(Mutation::DeleteRange {
                    end: prefix_end(&prefix),
                    start: prefix,
                });
            }
        }
        self.replicated = now;
        Ok(writes)
    }

    /// Commits `writes` in transactions of bounded size, the last one with the position `at`.
    async fn commit(&mut self, writes: Vec<Mutation>, at: Revision) -> Result<()> {
        let mut chunks: Vec<Vec<Mutation>> = writes
            .chunks(TXN_MUTATIONS)
            .map(<[Mutation]>::to_vec)
            .collect();
        let last = chunks.pop().unwrap_or_default();
        for chunk in chunks {
            let txn = Txn {
                compares: vec![self.guard()],
                mutations: chunk,
            };
            self.expect_committed(txn).await?;
        }
        let cursor = encode(&ReplicationCursor { revision: at.0 });
        let txn = Txn {
            compares: vec![self.guard()],
            mutations: last,
        }
        .put(keys::CURSOR, cursor.clone());
        let revision = self.expect_committed(txn).await?;
        self.cursor = Some(KeyValue {
            key: keys::CURSOR.to_vec(),
            value: cursor,
            mod_revision: revision,
        });
        self.read_up_to = at;
        self.persisted_at = Instant::now();
        Ok(())
    }

    fn guard(&self) -> Compare {
        match &self.cursor {
            Some(kv) => Compare::unchanged(kv),
            None => Compare::absent(keys::CURSOR),
        }
    }

    async fn expect_committed(&self, txn: Txn) -> Result<Revision> {
        match self.r.engine.txn(txn).await? {
            TxnOutcome::Committed(c) => Ok(c.revision),
            TxnOutcome::Conflict => Err(MetaError::Contention {
                volume: "(replication queue: another enqueuer moved the position)".into(),
                attempts: 1,
            }),
        }
    }

    /// Stores the position read so far if it moved and it has not been stored for a while.
    async fn persist_if_due(&mut self) -> Result<()> {
        let stored = match &self.cursor {
            Some(kv) => Revision(decode::<ReplicationCursor>(kv)?.revision),
            None => Revision(0),
        };
        if self.read_up_to > stored && self.persisted_at.elapsed() >= PERSIST_EVERY {
            self.commit(Vec::new(), self.read_up_to).await?;
        }
        Ok(())
    }

    /// Starts over at the local head, with a full sync of every replicated volume (used when
    /// the changes since the position cannot be read).
    async fn restart_at_head(&mut self, why: &str) -> Result<()> {
        let head = self.r.engine.head().await?.revision;
        tracing::info!(
            revision = head.0,
            volumes = self.replicated.len(),
            "{why}: queueing a full sync of every replicated volume"
        );
        let writes = self
            .replicated
            .iter()
            .map(|v| full_sync_marker(VolumeId(*v), why, false))
            .collect();
        self.commit(writes, head).await
    }

    /// Queues the blocks of one page of extents of each full sync in progress.
    async fn full_sync_step(&mut self) -> Result<()> {
        let end = prefix_end(keys::FULL_SYNC);
        for kv in self.r.engine.range(keys::FULL_SYNC, &end, 16).await? {
            let Some(vol) = keys::parse_full_sync(&kv.key) else {
                continue;
            };
            let mut sync: FullSync = decode(&kv)?;
            let mut prefix = EXTENT.to_vec();
            prefix.extend_from_slice(&vol.to_be_bytes());
            let start = if sync.after.is_empty() {
                prefix.clone()
            } else {
                let mut s = sync.after.clone();
                s.push(0);
                s
            };
            let page = self
                .r
                .engine
                .range(&start, &prefix_end(&prefix), FULL_SYNC_PAGE)
                .await?;
            let mut tasks = BTreeMap::new();
            for x in &page {
                if let Some((vol, block, mut task)) = self.block_of(&x.key, &x.value) {
                    task.reconcile = sync.reconcile;
                    tasks.insert(keys::ready(vol, PRIORITY_NEW, 0, &block), encode(&task));
                }
            }
            let queued = tasks.len();
            let mut txn = Txn::new().when(Compare::unchanged(&kv));
            for (k, v) in tasks {
                txn = txn.put(k, v);
            }
            sync.queued += queued as u64;
            let done = page.len() < FULL_SYNC_PAGE;
            if done {
                txn = txn.delete(kv.key.clone());
                tracing::info!(volume_id = vol.0, blocks = sync.queued, reason = %sync.reason, "full sync queued every block of the volume");
            } else if let Some(last) = page.last() {
                sync.after = last.key.clone();
                txn = txn.put(kv.key.clone(), encode(&sync));
            }
            // A conflict means another enqueuer did this step: look again next time.
            if let TxnOutcome::Committed(_) = self.r.engine.txn(txn).await? {
                self.r.metrics.enqueued_total.inc_by(queued as u64);
                if queued > 0 {
                    self.r.ready.notify_waiters();
                }
            }
        }
        Ok(())
    }
}

fn new_task(e: &Extent) -> ReplicationTask {
    ReplicationTask {
        block_size: e.block_size,
        checksum: e.checksum.clone(),
        enqueued_ms: now_ms(),
        priority: u32::from(PRIORITY_NEW),
        ..Default::default()
    }
}

fn full_sync_marker(vol: VolumeId, reason: &str, reconcile: bool) -> Mutation {
    Mutation::Put {
        key: keys::full_sync(vol),
        value: encode(&FullSync {
            after: Vec::new(),
            started_ms: now_ms(),
            queued: 0,
            reason: reason.to_owned(),
            reconcile,
        }),
    }
}

/// Queues a reconciliation of every replicated volume if the last one is `every` old: a full
/// sync whose tasks check both buckets. The time is stored, so restarts keep the schedule; the
/// first call only starts the clock (a volume gets a full sync when it becomes replicated).
pub(super) async fn reconcile_if_due(r: &Replication, every: Duration) -> Result<bool> {
    let now = now_ms();
    let Some(stored) = r.engine.get(keys::RECONCILED).await? else {
        let txn = Txn::new()
            .when(Compare::absent(keys::RECONCILED))
            .put(keys::RECONCILED, encode(&Reconciled { at_ms: now }));
        r.engine.txn(txn).await?;
        return Ok(false);
    };
    let last = decode::<Reconciled>(&stored)?.at_ms;
    if now.saturating_sub(last) < every.as_millis() as u64 {
        return Ok(false);
    }
    let volumes = replicated(r).await?;
    let mut txn = Txn::new()
        .when(Compare::unchanged(&stored))
        .put(keys::RECONCILED, encode(&Reconciled { at_ms: now }));
    for v in &volumes {
        txn.mutations.push(full_sync_marker(
            VolumeId(*v),
            "periodic reconciliation",
            true,
        ));
    }
    let queued = matches!(r.engine.txn(txn).await?, TxnOutcome::Committed(_));
    if queued {
        tracing::info!(
            volumes = volumes.len(),
            "periodic reconciliation queued: every block is checked in both buckets"
        );
    }
    Ok(queued)
}

/// Whether a mutation can change which volumes are replicated: mirror volumes, and the source
/// volume names they refer to.
fn changes_membership(m: &Mutation) -> bool {
    let touches = |k: &[u8]| k.starts_with(MIRROR_VOLUME) || k.starts_with(VOLUME_NAME);
    match m {
        Mutation::Put { key, .. } | Mutation::Delete { key } => touches(key),
        Mutation::DeleteRange { start, end } => [MIRROR_VOLUME, VOLUME_NAME]
            .iter()
            .any(|p| start.as_slice() < prefix_end(p).as_slice() && end.as_slice() > *p),
    }
}

pub(super) async fn replicated(r: &Replication) -> Result<BTreeSet<u64>> {
    Ok(r.targets(None)
        .await?
        .into_iter()
        .map(|t| t.source_volume_id)
        .collect())
}

async fn full_sync_pending(r: &Replication) -> Result<bool> {
    let end = prefix_end(keys::FULL_SYNC);
    Ok(!r.engine.range(keys::FULL_SYNC, &end, 1).await?.is_empty())
}
