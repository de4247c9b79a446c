//! Replication of blocks into mirror buckets (mirror clusters only): the task queue in the
//! cluster-local keyspace, and the enqueuer that fills it. Workers (in every mirror client, and
//! `mirrorfs replicate`) reach it through the `Replication` gRPC service.
//!
//! - [`keys`]: the queue's layout;
//! - [`enqueuer`]: follows this cluster's own changelog; every extent put into a volume that a
//!   mirror volume with a dedicated bucket exposes queues a copy of its block, in one local
//!   transaction with the enqueuer's position. A mirror volume getting a dedicated bucket, or
//!   a changelog compacted past the position, queues a full sync of the volume's blocks;
//! - [`queue`]: lease (ready → leased, the lease being the revision of the leased record),
//!   complete (delete, or back to ready for a later retry), repair (priority), lease expiry.
//!
//! Copies are idempotent (a block is immutable and the copy verifies its checksum), so a task
//! may run twice, never zero times: a worker killed between copy and acknowledgement leaves its
//! leased task to expire and run again.

mod enqueuer;
pub mod keys;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mirrorfs_api::VolumeId;
use mirrorfs_api::meta::{ReplicationStatus, ReplicationTarget};
use tokio::sync::{Notify, watch};

use crate::engine::Engine;
use crate::error::Result;
use crate::fs::FsMeta;
use crate::metrics::ReplicationMetrics;

pub use queue::{DEFAULT_LEASE, MAX_WAIT};

/// How a mirror cluster's replication queue runs.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Queue a reconciliation of every replicated volume this often (every block checked in
    /// both buckets and copied whichever way is missing); `None` disables it.
    pub reconcile_every: Option<Duration>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            reconcile_every: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// The replication queue of one mirror cluster. Cheap to share.
pub struct Replication {
    config: ReplicationConfig,
    engine: Arc<dyn Engine>,
    fs: FsMeta,
    /// Woken when tasks become ready.
    ready: Notify,
    metrics: ReplicationMetrics,
    /// The local revision the enqueuer has read up to.
    enqueued_up_to: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    bytes_copied: AtomicU64,
    last_error: std::sync::Mutex<String>,
}

impl Replication {
    pub fn new(
        engine: Arc<dyn Engine>,
        fs: FsMeta,
        metrics: ReplicationMetrics,
        config: ReplicationConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            engine,
            fs,
            ready: Notify::new(),
            metrics,
            enqueued_up_to: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(String::new()),
        })
    }

    /// Starts the enqueuer and the lease keeper; they stop when `shutdown` becomes true.
    pub fn spawn(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let me = self.clone();
        let rx = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = enqueuer::run(&me) => {}
                () = stop(rx) => {}
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = queue::keep(&me) => {}
                () = stop(shutdown) => {}
            }
        });
    }

    /// Where each replicated volume's blocks come from and go to.
    pub async fn targets(&self, only: Option<VolumeId>) -> Result<Vec<ReplicationTarget>> {
        self.fs.replication_targets(only).await
    }

    /// The queue's state, as `mirrorfs status` shows it.
    pub async fn status(&self) -> Result<ReplicationStatus> {
        let mut st = queue::count(self).await?;
        let head = self.engine.head().await?.revision.0;
        let at = self.enqueued_up_to.load(Ordering::Relaxed);
        st.enqueuer_revision = at;
        st.enqueuer_lag = head.saturating_sub(at);
        st.completed_total = self.completed.load(Ordering::Relaxed);
        st.failed_total = self.failed.load(Ordering::Relaxed);
        st.bytes_copied_total = self.bytes_copied.load(Ordering::Relaxed);
        st.last_error = self.last_error().clone();
        st.replicated_volumes = self
            .targets(None)
            .await?
            .into_iter()
            .flat_map(|t| t.mirror_volumes)
            .collect();
        Ok(st)
    }

    fn last_error(&self) -> std::sync::MutexGuard<'_, String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_error(&self, what: &str, e: &impl std::fmt::Display) {
        tracing::warn!(error = %e, "replication: {what}");
        *self.last_error() = format!("{what}: {e}");
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
fn now_ms() -> u64 {
    crate::engine::CommitTime::now().0
}

/// Backoff before retry `attempt` (1-based) of a failed task: 1 s doubling up to 5 minutes.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}
