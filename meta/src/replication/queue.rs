//! Leasing, completing, repairing and expiring replication tasks. Every move of a task is one
//! transaction guarded by a compare on the record it moves, so two workers never both own a
//! task, and a worker whose lease expired and was taken over cannot acknowledge it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mirrorfs_api::meta::{LeasedTask, ReplicationStatus, TaskResult};
use mirrorfs_api::records::ReplicationTask;
use mirrorfs_api::{BlockId, Checksum, Revision, VolumeId};
use rand::seq::SliceRandom;

use super::keys::{self, PRIORITY_NEW, PRIORITY_REPAIR, PRIORITY_RETRY};
use super::{Replication, now_ms, retry_delay};
use crate::engine::{Compare, KeyValue, Txn, TxnOutcome, prefix_end};
use crate::error::{MetaError, Result};
use crate::fs::keys::{decode, encode};

/// Lease length when the worker asks for none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Longest long poll of a lease call.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most tasks one lease call hands out.
const MAX_TASKS: usize = 256;
/// How often the keeper looks for expired leases.
const KEEP_EVERY: Duration = Duration::from_secs(1);
/// The keeper refreshes the queue gauges every this many ticks.
const COUNT_EVERY_TICKS: u64 = 10;
/// Status counts stop here.
const COUNT_LIMIT: usize = 100_000;

impl Replication {
    /// Leases up to `max` ready tasks (of `only`'s volume, or any), waiting up to `wait` while
    /// none is ready.
    pub async fn lease(
        &self,
        only: Option<VolumeId>,
        worker: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<LeasedTask>> {
        let max = max.clamp(1, MAX_TASKS);
        let lease = if lease.is_zero() {
            DEFAULT_LEASE
        } else {
            lease
        };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Registered before looking, so a task queued meanwhile is not missed.
            let woken = self.ready.notified();
            let got = self.try_lease(only, worker, max, lease).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Retries become due without a notification: look again at least every second.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), woken).await;
        }
    }

    async fn try_lease(
        &self,
        only: Option<VolumeId>,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<LeasedTask>> {
        let now = now_ms();
        let volumes = match only {
            Some(v) => vec![v],
            None => self.volumes_with_ready_tasks().await?,
        };
        let mut candidates = Vec::new();
        for vol in volumes {
            let prefix = keys::ready_volume(vol);
            for kv in self
                .engine
                .range(&prefix, &prefix_end(&prefix), max * 4)
                .await?
            {
                match keys::parse_ready(&kv.key) {
                    Some(k) if k.not_before_ms > now => break,
                    Some(_) => candidates.push(kv),
                    None => {
                        self.note_error("skipping a damaged ready task key", &kv.key.escape_ascii())
                    }
                }
            }
        }
        // Workers that look at once take different tasks, mostly.
        let urgent = candidates
            .iter()
            .take_while(|kv| keys::parse_ready(&kv.key).is_some_and(|k| k.priority == 0))
            .count();
        candidates[urgent..].shuffle(&mut rand::rng());
        candidates.truncate(max);
        let until = now + lease.as_millis() as u64;
        let takes = candidates
            .into_iter()
            .map(|kv| self.take(kv, worker, until));
        let mut out = Vec::new();
        for taken in futures::future::join_all(takes).await {
            if let Some(t) = taken? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Moves one ready task to leased; `None` if another worker took it first.
    async fn take(&self, kv: KeyValue, worker: &str, until: u64) -> Result<Option<LeasedTask>> {
        let Some(k) = keys::parse_ready(&kv.key) else {
            return Ok(None);
        };
        let mut task: ReplicationTask = decode(&kv)?;
        task.lease_owner = worker.to_owned();
        task.lease_until_ms = until;
        let txn = Txn::new()
            .when(Compare::unchanged(&kv))
            .delete(kv.key.clone())
            .put(keys::leased(k.vol, &k.block), encode(&task));
        match self.engine.txn(txn).await? {
            TxnOutcome::Committed(c) => Ok(Some(LeasedTask {
                volume_id: k.vol.0,
                block_id: k.block.as_str().to_owned(),
                block_size: task.block_size,
                checksum: task.checksum,
                lease: c.revision.0,
                attempts: task.attempts,
                priority: task.priority,
                reconcile: task.reconcile,
            })),
            TxnOutcome::Conflict => Ok(None),
        }
    }

    /// Volumes with at least one ready task, found by skipping from one volume to the next.
    async fn volumes_with_ready_tasks(&self) -> Result<Vec<VolumeId>> {
        let end = prefix_end(keys::READY);
        let mut start = keys::READY.to_vec();
        let mut out = Vec::new();
        while let Some(kv) = self.engine.range(&start, &end, 1).await?.pop() {
            let Some(k) = keys::parse_ready(&kv.key) else {
                start = kv.key;
                start.push(0);
                continue;
            };
            out.push(k.vol);
            start = prefix_end(&keys::ready_volume(k.vol));
        }
        Ok(out)
    }

    /// Applies workers' results. A result for a lease that is no longer current (it expired and
    /// another worker took the task) changes nothing and counts as lost.
    pub async fn complete(
        &self,
        only: Option<VolumeId>,
        worker: &str,
        results: Vec<TaskResult>,
    ) -> Result<(u32, u32, u32)> {
        let (mut acked, mut requeued, mut lost) = (0, 0, 0);
        for r in results {
            let vol = VolumeId(r.volume_id);
            if only.is_some_and(|o| o != vol) {
                return Err(MetaError::PermissionDenied(format!(
                    "this token opens one mirror volume; it cannot complete tasks of source volume id {}",
                    r.volume_id
                )));
            }
            let block = BlockId::parse(&r.block_id)
                .map_err(|e| MetaError::InvalidArgument(e.to_string()))?;
            let key = keys::leased(vol, &block);
            let Some(kv) = self.engine.get(&key).await? else {
                lost += 1;
                continue;
            };
            if kv.mod_revision != Revision(r.lease) {
                lost += 1;
                continue;
            }
            let mut txn = Txn::new().when(Compare::unchanged(&kv)).delete(key);
            if !r.ok {
                let mut task: ReplicationTask = decode(&kv)?;
                task.attempts += 1;
                task.last_error = r.error.chars().take(1024).collect();
                task.lease_owner.clear();
                task.lease_until_ms = 0;
                task.priority = u32::from(PRIORITY_RETRY);
                let due = now_ms() + retry_delay(task.attempts).as_millis() as u64;
                txn = txn.put(keys::ready(vol, PRIORITY_RETRY, due, &block), encode(&task));
                self.note_error(
                    &format!(
                        "worker {worker:?} failed to copy block {block} of volume id {}",
                        vol.0
                    ),
                    &r.error,
                );
            }
            match self.engine.txn(txn).await? {
                TxnOutcome::Committed(_) if r.ok => {
                    acked += 1;
                    self.completed.fetch_add(1, Ordering::Relaxed);
                    self.bytes_copied
                        .fetch_add(r.bytes_copied, Ordering::Relaxed);
                    self.metrics.completed_total.inc();
                    self.metrics.bytes_copied_total.inc_by(r.bytes_copied);
                }
                TxnOutcome::Committed(_) => {
                    requeued += 1;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failed_total.inc();
                }
                TxnOutcome::Conflict => lost += 1,
            }
        }
        Ok((acked, requeued, lost))
    }

    /// Queues a priority copy of a block a reader found missing or corrupt in a mirror bucket.
    pub async fn repair(
        &self,
        vol: VolumeId,
        block: &BlockId,
        block_size: u64,
        checksum: Checksum,
        reason: &str,
    ) -> Result<()> {
        if self.targets(Some(vol)).await?.is_empty() {
            return Err(MetaError::InvalidArgument(format!(
                "source volume id {} has no mirror volume with its own bucket here: its blocks are read from the source bucket and nothing is replicated",
                vol.0
            )));
        }
        let task = ReplicationTask {
            block_size,
            checksum: checksum.0.to_vec(),
            enqueued_ms: now_ms(),
            priority: u32::from(PRIORITY_REPAIR),
            last_error: format!("reader reported the mirror copy {reason}"),
            ..Default::default()
        };
        let key = keys::ready(vol, PRIORITY_REPAIR, 0, block);
        self.engine.txn(Txn::new().put(key, encode(&task))).await?;
        self.metrics.repairs_total.inc();
        self.ready.notify_waiters();
        Ok(())
    }

    /// Returns every task whose lease has expired to the ready queue.
    async fn expire_leases(&self) -> Result<usize> {
        let now = now_ms();
        let end = prefix_end(keys::LEASED);
        let mut start = keys::LEASED.to_vec();
        let mut expired = 0;
        loop {
            let page = self.engine.range(&start, &end, 512).await?;
            for kv in &page {
                let Some((vol, block)) = keys::parse_leased(&kv.key) else {
                    continue;
                };
                let mut task: ReplicationTask = decode(kv)?;
                if task.lease_until_ms > now {
                    continue;
                }
                task.attempts += 1;
                task.last_error = format!("the lease of worker {:?} expired", task.lease_owner);
                task.lease_owner.clear();
                task.lease_until_ms = 0;
                task.priority = u32::from(PRIORITY_NEW);
                let txn = Txn::new()
                    .when(Compare::unchanged(kv))
                    .delete(kv.key.clone())
                    .put(keys::ready(vol, PRIORITY_NEW, 0, &block), encode(&task));
                if let TxnOutcome::Committed(_) = self.engine.txn(txn).await? {
                    expired += 1;
                    self.metrics.expired_total.inc();
                }
            }
            match page.last() {
                Some(last) if page.len() == 512 => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(expired),
            }
        }
    }
}

/// The lease keeper: returns expired leases to the queue, and wakes waiting workers when it
/// does, or when retries become due.
pub(super) async fn keep(r: &Replication) {
    let mut tick = tokio::time::interval(KEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = 0u64;
    loop {
        tick.tick().await;
        if let Some(every) = r.config.reconcile_every
            && let Err(e) = super::enqueuer::reconcile_if_due(r, every).await
        {
            r.note_error("queueing the periodic reconciliation", &e);
        }
        match r.expire_leases().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    tasks = n,
                    "replication leases expired; the tasks are queued again"
                );
                r.ready.notify_waiters();
            }
            Err(e) => r.note_error("expiring leases", &e),
        }
        counted += 1;
        if counted.is_multiple_of(COUNT_EVERY_TICKS) {
            match count(r).await {
                Ok(st) => {
                    r.metrics.ready.set(st.ready as i64);
                    r.metrics.leased.set(st.leased as i64);
                }
                Err(e) => r.note_error("counting the queue", &e),
            }
        }
    }
}

/// Counts the queue (up to a limit per part).
pub(super) async fn count(r: &Replication) -> Result<ReplicationStatus> {
    let mut st = ReplicationStatus {
        counted_exactly: true,
        ..Default::default()
    };
    let mut oldest = u64::MAX;
    for (prefix, leased) in [(keys::READY, false), (keys::LEASED, true)] {
        let end = prefix_end(prefix);
        let mut start = prefix.to_vec();
        let mut n = 0usize;
        loop {
            let page = r.engine.range(&start, &end, 1024).await?;
            for kv in &page {
                n += 1;
                if let Ok(task) = decode::<ReplicationTask>(kv) {
                    oldest = oldest.min(task.enqueued_ms);
                    if leased {
                        st.leased += 1;
                    } else if task.priority == u32::from(PRIORITY_RETRY) {
                        st.retrying += 1;
                        st.ready += 1;
                    } else {
                        st.ready += 1;
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == 1024 && n < COUNT_LIMIT => {
                    start = last.key.clone();
                    start.push(0);
                }
                Some(_) if page.len() == 1024 => {
                    st.counted_exactly = false;
                    break;
                }
                _ => break,
            }
        }
    }
    let end = prefix_end(keys::FULL_SYNC);
    st.full_syncs = r.engine.range(keys::FULL_SYNC, &end, 10_000).await?.len() as u64;
    if oldest != u64::MAX {
        st.oldest_enqueued = Some(crate::engine::CommitTime(oldest).to_timestamp());
    }
    Ok(st)
}
