//! The mirror follower: makes a local engine equal to a source cluster's mirrored keyspace and
//! keeps it so. An explicit state machine (as etcd's `mirror/syncer.go`), one file per role:
//!
//! - [`state`]: the driver. Connect → (bootstrap | tail) → on error retry with backoff, on
//!   "compacted" re-bootstrap, on a foreign source refuse ("failed");
//! - [`position`]: where the mirror is (`l/mirror/applied`) and the bootstrap marker;
//! - [`bootstrap`]: a source snapshot at revision R merged into the local `m/` keyspace;
//! - [`tail`]: the changelog from applied + 1, validated and applied in batches;
//! - [`source`]: the connection, its `Head` poller, and how source errors are classified;
//! - [`status`]: lag, health and metrics; [`check`]: the difference check.
//!
//! The guarantee: the local `m/` keyspace always equals the source's at the revision recorded in
//! `l/mirror/applied` (except while a bootstrap marker says it is being rewritten), because every
//! local transaction that changes `m/` keys also writes that record, guarded by compares on it.
//! A kill at any point therefore loses nothing and applies nothing twice.

mod bootstrap;
mod check;
mod error;
mod position;
mod source;
mod state;
mod status;
mod tail;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{CheckMirrorReply, MirrorStatus};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::error::MetaError;
use crate::fs::FsMeta;
use crate::metrics::MirrorMetrics;
use crate::replication::{Replication, ReplicationConfig};

pub use error::{FollowError, InvalidEntry};
pub use status::lag;
pub use tail::{Entry, validate};

/// How to follow a source.
#[derive(Clone, Debug)]
pub struct FollowerConfig {
    /// The source meta service, e.g. `http://source:7400`.
    pub source_url: String,
    /// The replication credential: a token the source's `Changelog` service accepts.
    pub token: String,
    /// Per connection attempt (and per `Head` poll).
    pub connect_timeout: Duration,
    /// Reconnect backoff: doubles from `backoff_min` up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Most source transactions applied in one local transaction.
    pub max_batch_entries: usize,
    /// Run the difference check this often (`None`: only on demand).
    pub check_interval: Option<Duration>,
    /// How long a difference check waits for the mirror to reach the source digest's revision.
    pub check_wait: Duration,
    /// Where to export `mirrorfs_mirror_*` metrics (`None`: not exported).
    pub metrics: Option<Arc<MirrorMetrics>>,
    /// The block replication queue of this mirror cluster.
    pub replication: ReplicationConfig,
}

impl FollowerConfig {
    pub fn new(source_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            source_url: source_url.into(),
            token: token.into(),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_batch_entries: 1024,
            check_interval: None,
            check_wait: Duration::from_secs(60),
            metrics: None,
            replication: ReplicationConfig::default(),
        }
    }
}

/// Starts following and returns at once; the follower stops when `shutdown` becomes true.
///
/// Fails only if the local position cannot be read (an engine error or a damaged record).
pub async fn start(
    engine: Arc<dyn Engine>,
    mut config: FollowerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<FollowerHandle, MetaError> {
    config.max_batch_entries = config.max_batch_entries.max(1);
    config.backoff_min = config.backoff_min.max(Duration::from_millis(1));
    config.backoff_max = config.backoff_max.max(config.backoff_min);
    let pos = position::Position::read(engine.as_ref()).await?;
    let metrics = config
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(MirrorMetrics::unregistered()));
    let shared = Arc::new(Shared {
        status: Mutex::new(status::Tracker::new(&config.source_url, &pos)),
        applied: watch::Sender::new(pos.applied_revision()),
        gate: tokio::sync::Mutex::new(()),
        hold: watch::Sender::new(None),
        checking: tokio::sync::Mutex::new(()),
        stopped: watch::Sender::new(false),
        metrics,
        engine,
        config,
    });
    shared.publish_metrics();
    let replication = Replication::new(
        shared.engine.clone(),
        FsMeta::open_mirror(shared.engine.clone()).await?,
        shared.metrics.replication.clone(),
        shared.config.replication.clone(),
    );
    replication.spawn(shutdown.clone());
    let driver = state::Driver::new(shared.clone(), pos);
    tokio::spawn(stop_on(shutdown.clone(), shared.clone(), driver.run()));
    if let Some(every) = shared.config.check_interval {
        tokio::spawn(stop_on(
            shutdown,
            shared.clone(),
            check::periodic(shared.clone(), every),
        ));
    }
    Ok(FollowerHandle {
        shared,
        replication,
    })
}

/// Runs `work` until `shutdown` becomes true; then drops it wherever it is, like a kill. Every
/// local transaction is atomic, so that is always safe.
async fn stop_on(
    mut shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
    work: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = work => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
    shared.stopped.send_replace(true);
}

/// What the follower's tasks and its handles share.
struct Shared {
    config: FollowerConfig,
    engine: Arc<dyn Engine>,
    status: Mutex<status::Tracker>,
    /// The applied source revision, sent after every local commit.
    applied: watch::Sender<Revision>,
    /// Held by every local transaction of the follower, and by the difference check while it
    /// reads the hold and takes the local snapshot.
    gate: tokio::sync::Mutex<()>,
    /// Set by the difference check: do not apply beyond this source revision.
    hold: watch::Sender<Option<Revision>>,
    /// One difference check at a time.
    checking: tokio::sync::Mutex<()>,
    /// Becomes true when the driver has stopped.
    stopped: watch::Sender<bool>,
    metrics: Arc<MirrorMetrics>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, status::Tracker> {
        // The tracker holds plain values updated by single assignments: a panic elsewhere while
        // holding the lock cannot leave it inconsistent.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refreshes the gauges from the status (lag depends on the clock).
    fn publish_metrics(&self) {
        let now = crate::engine::CommitTime::now();
        self.status().publish(&self.metrics, now);
    }
}

/// A running follower. Cheap to clone.
#[derive(Clone)]
pub struct FollowerHandle {
    shared: Arc<Shared>,
    replication: Arc<Replication>,
}

impl FollowerHandle {
    /// Lag and health, as `mirrorfs status` shows them.
    pub fn status(&self) -> MirrorStatus {
        let now = crate::engine::CommitTime::now();
        self.shared.status().to_wire(now)
    }

    /// The queue of blocks to copy into this mirror's buckets.
    pub fn replication(&self) -> &Arc<Replication> {
        &self.replication
    }

    /// The applied source revision, updated after every local commit.
    pub fn applied(&self) -> watch::Receiver<Revision> {
        self.shared.applied.subscribe()
    }

    /// Compares this mirror with the source at one revision.
    pub async fn check(&self) -> Result<CheckMirrorReply, MetaError> {
        check::run(&self.shared).await
    }

    /// Completes once the follower has stopped (after `shutdown` became true).
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}
