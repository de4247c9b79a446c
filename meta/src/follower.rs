//! The mirror follower: makes a local engine equal to a source cluster's mirrored keyspace and
//! keeps it so. An explicit state machine: bootstrap from a source snapshot at revision R, tail
//! the changelog from R+1 applying each source transaction (with the applied revision) in one
//! local transaction, re-bootstrap when the source has compacted past the local position.

use std::sync::Arc;
use std::time::Duration;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{CheckMirrorReply, MirrorStatus};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::error::MetaError;

/// How to follow a source.
#[derive(Clone, Debug)]
pub struct FollowerConfig {
    /// The source meta service, e.g. `http://source:7400`.
    pub source_url: String,
    /// The replication credential: a token the source's `Changelog` service accepts.
    pub token: String,
    /// Per connection attempt.
    pub connect_timeout: Duration,
    /// Reconnect backoff: doubles from `backoff_min` up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Most source transactions applied in one local transaction.
    pub max_batch_entries: usize,
    /// Run the difference check this often (`None`: only on demand).
    pub check_interval: Option<Duration>,
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
        }
    }
}

/// Starts following and returns at once; the follower stops when `shutdown` becomes true.
pub async fn start(
    engine: Arc<dyn Engine>,
    config: FollowerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<FollowerHandle, MetaError> {
    let _ = (engine, config, shutdown);
    todo!("follower::start")
}

/// A running follower. Cheap to clone.
#[derive(Clone)]
pub struct FollowerHandle {}

impl FollowerHandle {
    /// Lag and health, as `mirrorfs status` shows them.
    pub fn status(&self) -> MirrorStatus {
        todo!()
    }

    /// The applied source revision, updated after every local commit.
    pub fn applied(&self) -> watch::Receiver<Revision> {
        todo!()
    }

    /// Compares this mirror with the source at one revision.
    pub async fn check(&self) -> Result<CheckMirrorReply, MetaError> {
        todo!()
    }
}
