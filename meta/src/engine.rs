//! The metadata engine: an ordered, transactional key-value store with revisions and a
//! changelog. Its concepts are etcd's own (compare-and-commit transactions, a revision per
//! commit, watch from a revision, compaction), so that an etcd-backed engine implements the
//! same trait as the embedded one.
//!
//! Contract, checked by [`conformance`] for every engine:
//! - every successful [`Engine::txn`] commits atomically and gets the next revision (strictly
//!   increasing by one, starting at 1) and a commit timestamp (never decreasing);
//! - a transaction whose compares do not all hold commits nothing and returns
//!   [`TxnOutcome::Conflict`]; an acknowledged commit is durable;
//! - [`Engine::watch`] yields every committed transaction from a retained revision on, in order,
//!   with no gap, then follows new commits; a revision below the compaction point fails with
//!   [`EngineError::Compacted`];
//! - [`Engine::snapshot`] is a consistent copy of the whole keyspace at one revision.

pub mod conformance;
pub mod embedded;
pub mod etcd;
mod follow;
pub mod memory;
mod record;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;
use mirrorfs_api::Revision;

/// What an engine can fail with. Variants differ by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The requested changelog position was compacted away: re-bootstrap from a snapshot.
    #[error(
        "changelog revision {requested} was compacted (history starts after revision {compacted}); re-bootstrap from a snapshot"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// Stored data is damaged. Names the file (or key) so an operator can act.
    #[error("corrupt metadata in {location}: {detail}")]
    Corrupt { location: String, detail: String },
    /// The engine cannot be reached or is shutting down: retry with backoff.
    #[error("metadata engine unavailable: {0}")]
    Unavailable(String),
    /// The request is too large or malformed for this engine.
    #[error("invalid engine request: {0}")]
    Invalid(String),
    /// A local I/O failure (disk full, permissions).
    #[error("metadata engine I/O error in {location}: {source}")]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A stored key with its value and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
}

/// A condition a transaction requires at commit time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key was last written at exactly `revision`; [`Revision(0)`](Revision) means the key
    /// must be absent.
    ModRevision { key: Vec<u8>, revision: Revision },
}

impl Compare {
    /// The key must not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision: Revision(0),
        }
    }

    /// The key must be unchanged since it was read as `kv`.
    pub fn unchanged(kv: &KeyValue) -> Self {
        Compare::ModRevision {
            key: kv.key.clone(),
            revision: kv.mod_revision,
        }
    }
}

/// One write of a transaction. The changelog records them exactly as committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Compares that must all hold, and the mutations applied, in order, if they do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub mutations: Vec<Mutation>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.mutations.push(Mutation::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.mutations.push(Mutation::Delete { key: key.into() });
        self
    }
}

/// Milliseconds since the Unix epoch, as recorded with each commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTime(pub u64);

impl CommitTime {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        CommitTime(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The wire's timestamp of this time.
    pub fn to_timestamp(self) -> mirrorfs_api::meta::Timestamp {
        mirrorfs_api::meta::Timestamp {
            seconds: i64::try_from(self.0 / 1000).unwrap_or(i64::MAX),
            nanos: u32::try_from(self.0 % 1000).unwrap_or(0) * 1_000_000,
        }
    }

    pub fn as_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

/// Where a commit landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub revision: Revision,
    pub time: CommitTime,
}

/// The result of [`Engine::txn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed(Commit),
    /// A compare did not hold; nothing was written.
    Conflict,
}

/// One committed transaction, as the changelog keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEntry {
    pub revision: Revision,
    pub time: CommitTime,
    pub mutations: Vec<Mutation>,
}

/// The engine's current position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Revision of the latest commit (0 if none).
    pub revision: Revision,
    /// Commit time of the latest commit (0 if none).
    pub time: CommitTime,
    /// Changelog entries at or below this revision are gone; watch from `compacted + 1` works.
    pub compacted: Revision,
}

/// A stream of changelog entries.
pub type ChangeStream = BoxStream<'static, Result<ChangeEntry>>;

/// A consistent copy of the whole keyspace at `revision`, delivered in sorted chunks.
pub struct Snapshot {
    pub revision: Revision,
    pub time: CommitTime,
    pub chunks: BoxStream<'static, Result<Vec<KeyValue>>>,
}

/// An ordered, transactional, revisioned key-value store. See the module docs for the contract.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for status output: "embedded", "etcd", "memory".
    fn kind(&self) -> &'static str;

    /// The latest value of `key`.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>>;

    /// Up to `limit` keys in `[start, end)`, in key order, at one revision.
    async fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>>;

    /// Commits `txn` if all its compares hold.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;

    /// The latest revision, its commit time, and the compaction point.
    async fn head(&self) -> Result<Head>;

    /// Every committed transaction with revision `>= from`, then new ones as they commit.
    /// `from = 0` and `from = 1` both start at the beginning of retained history.
    async fn watch(&self, from: Revision) -> Result<ChangeStream>;

    /// Drops changelog entries with revision `<= up_to` (capped at the head). Keys are kept.
    async fn compact(&self, up_to: Revision) -> Result<Revision>;

    /// A consistent snapshot of every key at the current revision.
    async fn snapshot(&self) -> Result<Snapshot>;
}

/// The end of the range of every key that starts with `prefix` (for [`Engine::range`]).
///
/// Every prefix this crate uses begins with an ASCII tag (`m/`, `l/`), so a byte below 0xff
/// always exists to increment. A prefix made only of 0xff bytes has no finite bound in this
/// scheme; it gets `prefix + 0xff`, which covers the keys one byte longer than the prefix only.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        for key in [&b"m/"[..], b"m/\x00", b"m/\xff\xff\xff", b"m/zzz"] {
            assert!(
                key >= &b"m/"[..] && key < prefix_end(b"m/").as_slice(),
                "{key:?}"
            );
        }
        assert!(b"m0".as_slice() >= prefix_end(b"m/").as_slice());
    }
}
