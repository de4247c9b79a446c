//! Why following stopped, by what the driver does next: retry with backoff, re-bootstrap, or
//! refuse (a source that is not this mirror's source, or that lost history).

use mirrorfs_api::Revision;

use crate::error::MetaError;

/// Why a changelog entry was refused. Nothing of a refused entry is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEntry {
    #[error("entry of revision {revision} comes from cluster {found:?}, not {expected:?}")]
    WrongCluster {
        revision: u64,
        expected: String,
        found: String,
    },
    #[error("expected revision {expected} next, got {found} (a gap or a repeat)")]
    Gap { expected: Revision, found: Revision },
    #[error("mutation {index} of revision {revision} has no operation")]
    MissingOp { revision: u64, index: usize },
    #[error(
        "mutation {index} of revision {revision} touches {key:?}, outside the mirrored keyspace (m/)"
    )]
    ForeignKey {
        revision: u64,
        index: usize,
        key: String,
    },
    #[error("entry of revision {revision} has no commit time")]
    MissingTime { revision: u64 },
}

/// What ended a follower session.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the source at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the source at {url} refused the replication credential ({message}); give the mirror the source's replication token (or admin token)"
    )]
    Refused { url: String, message: String },
    #[error(
        "the source has compacted its changelog past revision {requested} (history now starts after revision {compacted})"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error(
        "this mirror follows source cluster {expected} but {url} is cluster {found}: refusing to mix two histories; point the mirror back at its source, or wipe the mirror's data directory to follow the new source"
    )]
    ForeignSource {
        url: String,
        expected: String,
        found: String,
    },
    #[error(
        "source cluster {cluster} at {url} is at revision {head}, but this mirror has already applied revision {applied}: the source lost history (restored from a backup?); wipe the mirror's data directory to mirror it again"
    )]
    SourceBehind {
        url: String,
        cluster: String,
        head: Revision,
        applied: Revision,
    },
    #[error("refused an invalid changelog entry from {url}: {detail}")]
    InvalidEntry { url: String, detail: InvalidEntry },
    #[error("refused an invalid snapshot from {url}: {detail}")]
    InvalidSnapshot { url: String, detail: String },
    #[error("the source at {url} failed: {message}")]
    Source { url: String, message: String },
    #[error(
        "source revision {revision} has {mutations} mutations, more than one local transaction can hold ({limit})"
    )]
    TooLarge {
        revision: Revision,
        mutations: usize,
        limit: usize,
    },
    #[error(
        "the mirror's position changed underneath the follower (is another follower writing to the same data directory?)"
    )]
    Moved,
    #[error("local metadata: {0}")]
    Local(#[from] MetaError),
}

impl From<crate::engine::EngineError> for FollowError {
    fn from(e: crate::engine::EngineError) -> Self {
        FollowError::Local(e.into())
    }
}

/// What the driver does after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Back off, reconnect and resume from the applied revision.
    Retry,
    /// Back off a little, then bootstrap from a fresh snapshot.
    Bootstrap,
    /// Apply nothing; keep checking at the longest backoff so a fixed configuration recovers.
    Refuse,
}

impl FollowError {
    pub fn recovery(&self) -> Recovery {
        use FollowError::*;
        match self {
            Compacted { .. } => Recovery::Bootstrap,
            ForeignSource { .. } | SourceBehind { .. } => Recovery::Refuse,
            Unreachable { .. }
            | Refused { .. }
            | InvalidEntry { .. }
            | InvalidSnapshot { .. }
            | Source { .. }
            | TooLarge { .. }
            | Moved
            | Local(_) => Recovery::Retry,
        }
    }

    /// Whether the error means the source could not be reached at all.
    pub fn unreachable(&self) -> bool {
        matches!(self, FollowError::Unreachable { .. })
    }
}
