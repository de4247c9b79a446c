//! The replication worker: leases copy tasks from a mirror cluster's meta service, copies each
//! block from the source bucket into the mirror bucket(s) (verified against its checksum before
//! anything is written), and acknowledges. Copies run concurrently; leases are taken while
//! copies are in flight so the pipe stays full; results go back in batches.
//!
//! A worker killed at any point loses nothing: an unacknowledged task's lease expires and it
//! runs again, and a copy is idempotent (a block that is already there with the right size is
//! not copied twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::{
    CompleteRequest, LeaseRequest, LeasedTask, ReplicationTarget, TargetsRequest, TaskResult,
    VolumeRef, replication_client::ReplicationClient,
};
use mirrorfs_api::{BlockId, Checksum};
use mirrorfs_objstore::{BlockInfo, Bucket, BucketConfig, CopyOutcome, Credentials, ObjError};
use tokio::sync::watch;
use tonic::Code;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shown in the queue's leases and in logs.
    pub name: String,
    /// Only this mirror volume's tasks (the client's token is then that volume's token).
    pub volume: Option<String>,
    /// Copies in flight.
    pub concurrency: usize,
    /// Lease length; a task whose worker has not answered by then runs again elsewhere.
    pub lease: Duration,
    /// Long poll while the queue is empty.
    pub wait: Duration,
    /// For the source buckets (None: the backend's defaults, e.g. a local directory).
    pub source_credentials: Option<Credentials>,
    /// For the mirror buckets.
    pub mirror_credentials: Option<Credentials>,
    /// Return once the queue is empty (a long poll found nothing and nothing is in flight).
    pub exit_when_idle: bool,
}

impl WorkerConfig {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            volume: None,
            concurrency: 16,
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(10),
            source_credentials: None,
            mirror_credentials: None,
            exit_when_idle: false,
        }
    }
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The meta service refused the worker for good (wrong token, not a mirror, bad request).
    #[error("the mirror meta service refused the replication worker: {0}")]
    Refused(String),
    #[error("cannot open bucket for source volume id {volume_id}: {error}")]
    Bucket { volume_id: u64, error: ObjError },
}

/// What a worker has done since it started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub copied: AtomicU64,
    pub already_there: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
}

impl WorkerStats {
    /// Tasks finished, successfully or not.
    pub fn finished(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
            + self.already_there.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

/// The buckets of one replicated source volume.
struct Target {
    source: Bucket,
    mirrors: Vec<Bucket>,
    fetched: Instant,
}

/// How long a volume's bucket configuration is reused before it is read again.
const TARGET_TTL: Duration = Duration::from_secs(60);
/// Results sent in one `Complete` call at most.
const COMPLETE_BATCH: usize = 64;

pub struct Worker {
    client: ReplicationClient<Authed>,
    config: WorkerConfig,
    targets: tokio::sync::Mutex<HashMap<u64, Arc<Target>>>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    pub fn new(client: ReplicationClient<Authed>, mut config: WorkerConfig) -> Self {
        config.concurrency = config.concurrency.max(1);
        Self {
            client,
            config,
            targets: Default::default(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    fn volume_ref(&self) -> Option<VolumeRef> {
        self.config
            .volume
            .clone()
            .map(|volume| VolumeRef { volume })
    }

    /// Runs until `shutdown` becomes true (copies in flight are finished and acknowledged), or
    /// until the meta service refuses the worker.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let n = self.config.concurrency;
        let mut in_flight = FuturesUnordered::new();
        let mut done: Vec<TaskResult> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let stopping = *shutdown.borrow();
            if !stopping && in_flight.len() <= n / 2 {
                let idle = in_flight.is_empty() && done.is_empty();
                let wait = if idle {
                    self.config.wait
                } else {
                    Duration::ZERO
                };
                let leased = tokio::select! {
                    r = self.lease(n - in_flight.len(), wait) => r,
                    _ = shutdown.wait_for(|s| *s) => Ok(Vec::new()),
                };
                match leased {
                    Ok(tasks) if tasks.is_empty() && idle && self.config.exit_when_idle => {
                        return Ok(());
                    }
                    Ok(tasks) => {
                        backoff = Duration::from_millis(100);
                        for t in tasks {
                            in_flight.push(self.copy(t));
                        }
                    }
                    Err(e) if is_fatal(&e) => return Err(WorkerError::Refused(e.message().into())),
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "cannot lease replication tasks; retrying");
                        if in_flight.is_empty() {
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                _ = shutdown.wait_for(|s| *s) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
            if in_flight.is_empty() {
                self.flush(&mut done).await?;
                if *shutdown.borrow() {
                    return Ok(());
                }
                continue;
            }
            if let Some(r) = in_flight.next().await {
                done.push(r);
            }
            while let Some(Some(r)) = in_flight.next().now_or_never() {
                done.push(r);
            }
            if done.len() >= COMPLETE_BATCH || in_flight.len() <= n / 2 {
                self.flush(&mut done).await?;
            }
        }
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<LeasedTask>, tonic::Status> {
        let req = LeaseRequest {
            volume: self.volume_ref(),
            worker: self.config.name.clone(),
            max_tasks: u32::try_from(max).unwrap_or(u32::MAX),
            lease_seconds: u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        Ok(self.client.clone().lease(req).await?.into_inner().tasks)
    }

    /// Sends finished results; on a transient failure keeps them for the next flush (their
    /// leases may expire meanwhile, and the tasks then simply run again).
    async fn flush(&self, done: &mut Vec<TaskResult>) -> Result<(), WorkerError> {
        while !done.is_empty() {
            let batch: Vec<TaskResult> = done.drain(..done.len().min(COMPLETE_BATCH)).collect();
            let req = CompleteRequest {
                volume: self.volume_ref(),
                worker: self.config.name.clone(),
                results: batch.clone(),
            };
            match self.client.clone().complete(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.lease_lost > 0 {
                        tracing::info!(
                            tasks = r.lease_lost,
                            "leases expired before the copies were acknowledged; those tasks run again"
                        );
                    }
                }
                Err(e) if is_fatal(&e) => return Err(WorkerError::Refused(e.message().into())),
                Err(e) => {
                    tracing::warn!(error = %e.message(), tasks = batch.len(), "cannot acknowledge copies; their leases will expire and they run again");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Copies one block into every mirror bucket of its volume.
    async fn copy(&self, t: LeasedTask) -> TaskResult {
        let mut result = TaskResult {
            volume_id: t.volume_id,
            block_id: t.block_id.clone(),
            lease: t.lease,
            ok: false,
            error: String::new(),
            bytes_copied: 0,
        };
        match self.copy_inner(&t).await {
            Ok(bytes) => {
                result.ok = true;
                result.bytes_copied = bytes;
                let counter = if bytes > 0 {
                    &self.stats.copied
                } else {
                    &self.stats.already_there
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(block = %t.block_id, volume_id = t.volume_id, error = %e, "block copy failed; it will be retried");
                result.error = e.to_string();
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn copy_inner(&self, t: &LeasedTask) -> Result<u64, CopyError> {
        let block = BlockInfo {
            id: BlockId::parse(&t.block_id).map_err(|e| CopyError::Task(e.to_string()))?,
            size: t.block_size,
            checksum: Checksum::from_slice(&t.checksum)
                .map_err(|e| CopyError::Task(e.to_string()))?,
        };
        let Some(target) = self.target(t.volume_id).await? else {
            // No mirror volume keeps its own bucket for this volume any more: nothing to copy.
            return Ok(0);
        };
        let mut bytes = 0;
        for mirror in &target.mirrors {
            let outcome = if t.reconcile {
                reconcile(&target.source, mirror, &block).await?
            } else if t.priority == 0 {
                // A reader found a bad copy: verify what is there and replace it if bad.
                mirror.repair_block_from(&target.source, &block).await?
            } else {
                mirror.copy_block_from(&target.source, &block).await?
            };
            if let CopyOutcome::Copied { bytes: b } = outcome {
                bytes += b;
            }
        }
        Ok(bytes)
    }

    /// The buckets of a source volume, from a cache refreshed every [`TARGET_TTL`].
    async fn target(&self, volume_id: u64) -> Result<Option<Arc<Target>>, CopyError> {
        let mut cache = self.targets.lock().await;
        if let Some(t) = cache.get(&volume_id)
            && t.fetched.elapsed() < TARGET_TTL
        {
            return Ok(Some(t.clone()));
        }
        let reply = self
            .client
            .clone()
            .targets(TargetsRequest {
                volume: self.volume_ref(),
            })
            .await
            .map_err(|e| CopyError::Meta(e.message().to_owned()))?
            .into_inner();
        cache.clear();
        for t in reply.targets {
            let id = t.source_volume_id;
            match self.open(&t) {
                Ok(target) => {
                    cache.insert(id, Arc::new(target));
                }
                Err(error) => {
                    tracing::warn!(volume_id = id, %error, "cannot open the buckets of a replicated volume");
                    if id == volume_id {
                        return Err(CopyError::Object(error));
                    }
                }
            }
        }
        Ok(cache.get(&volume_id).cloned())
    }

    fn open(&self, t: &ReplicationTarget) -> Result<Target, ObjError> {
        let source = t.source_storage.clone().unwrap_or_default();
        let source = Bucket::open(&BucketConfig::from_storage(
            &source,
            self.config.source_credentials.clone(),
        )?)?;
        let mirrors = t
            .mirror_storage
            .iter()
            .map(|s| {
                Bucket::open(&BucketConfig::from_storage(
                    s,
                    self.config.mirror_credentials.clone(),
                )?)
            })
            .collect::<Result<_, _>>()?;
        Ok(Target {
            source,
            mirrors,
            fetched: Instant::now(),
        })
    }
}

/// One block of a reconciliation: present in both buckets with its size, or copied into the one
/// that lacks it (a block lost from the source bucket is restored from the mirror's, verified).
async fn reconcile(
    source: &Bucket,
    mirror: &Bucket,
    b: &BlockInfo,
) -> Result<CopyOutcome, ObjError> {
    let (in_source, in_mirror) = (
        source.head_block(&b.id).await?,
        mirror.head_block(&b.id).await?,
    );
    match (in_source, in_mirror) {
        (Some(s), Some(m)) if s == b.size && m == b.size => Ok(CopyOutcome::AlreadyThere),
        (Some(_), _) => mirror.copy_block_from(source, b).await,
        (None, _) => {
            let restored = source.copy_block_from(mirror, b).await?;
            tracing::warn!(block = %b.id, source = %source.display(), mirror = %mirror.display(), "the block was missing from the source bucket: restored from the mirror's copy");
            Ok(restored)
        }
    }
}

/// Why one block could not be copied (it is retried later).
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("invalid task: {0}")]
    Task(String),
    #[error("cannot read the volume's buckets from the meta service: {0}")]
    Meta(String),
    #[error(transparent)]
    Object(#[from] ObjError),
}

/// Errors that retrying will not cure.
fn is_fatal(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unimplemented
    )
}
