//! Where the mirror is: `l/mirror/applied` (the source revision the local `m/` keyspace equals,
//! its source commit time and the source cluster id) and, while a bootstrap is rewriting `m/`,
//! the marker `l/mirror/bootstrap`.
//!
//! Every follower transaction compares both keys' mod revisions with what this follower last
//! read or wrote. A transaction of an earlier follower instance that was still queued when it
//! was stopped therefore fails instead of writing over the work of its successor.

use mirrorfs_api::Revision;
use mirrorfs_api::meta::Timestamp;
use mirrorfs_api::records::{Applied, MirrorBootstrap};

use crate::engine::{CommitTime, Compare, Engine, KeyValue};
use crate::error::MetaError;
use crate::fs::keys;

/// The mirror's applied position (cluster-local).
pub const APPLIED_KEY: &[u8] = b"l/mirror/applied";
/// Present while a bootstrap is rewriting the mirrored keyspace (cluster-local).
pub const BOOTSTRAP_KEY: &[u8] = b"l/mirror/bootstrap";

/// The follower's view of its two position keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    pub applied: Option<Applied>,
    /// Local mod revision of the applied key (0: absent).
    pub applied_mod: Revision,
    pub marker: Option<MirrorBootstrap>,
    /// Local mod revision of the bootstrap marker (0: absent).
    pub marker_mod: Revision,
}

impl Position {
    pub async fn read(engine: &dyn Engine) -> Result<Self, MetaError> {
        let applied_kv = engine.get(APPLIED_KEY).await?;
        let marker_kv = engine.get(BOOTSTRAP_KEY).await?;
        let mod_of = |kv: &Option<KeyValue>| kv.as_ref().map_or(Revision(0), |kv| kv.mod_revision);
        Ok(Self {
            applied: applied_kv.as_ref().map(keys::decode).transpose()?,
            applied_mod: mod_of(&applied_kv),
            marker: marker_kv.as_ref().map(keys::decode).transpose()?,
            marker_mod: mod_of(&marker_kv),
        })
    }

    /// The source revision the mirrored keyspace equals (0 before the first bootstrap).
    pub fn applied_revision(&self) -> Revision {
        Revision(self.applied.as_ref().map_or(0, |a| a.revision))
    }

    pub fn applied_time(&self) -> CommitTime {
        self.applied
            .as_ref()
            .map_or(CommitTime(0), |a| to_commit_time(a.committed.as_ref()))
    }

    /// The source cluster this mirror has copied from, if it has copied anything.
    pub fn source_cluster(&self) -> Option<&str> {
        self.applied
            .as_ref()
            .map(|a| a.source_cluster_id.as_str())
            .or(self.marker.as_ref().map(|m| m.source_cluster_id.as_str()))
            .filter(|id| !id.is_empty())
    }

    /// Why the mirror must bootstrap before it can tail, if it must.
    pub fn bootstrap_reason(&self) -> Option<&'static str> {
        if self.marker.is_some() {
            Some("an interrupted bootstrap left the mirrored keyspace half-written")
        } else if self.applied.is_none() {
            Some("first start: the mirror has no copy of the source yet")
        } else {
            None
        }
    }

    /// The compares every follower transaction carries.
    pub fn guards(&self) -> [Compare; 2] {
        [
            Compare::ModRevision {
                key: APPLIED_KEY.to_vec(),
                revision: self.applied_mod,
            },
            Compare::ModRevision {
                key: BOOTSTRAP_KEY.to_vec(),
                revision: self.marker_mod,
            },
        ]
    }
}

/// Milliseconds since the epoch of a wire timestamp (before the epoch: 0).
pub fn to_commit_time(t: Option<&Timestamp>) -> CommitTime {
    let Some(t) = t else {
        return CommitTime(0);
    };
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    CommitTime(
        secs.saturating_mul(1000)
            .saturating_add(u64::from(t.nanos / 1_000_000)),
    )
}

pub fn to_timestamp(t: CommitTime) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(t.0 / 1000).unwrap_or(i64::MAX),
        nanos: u32::try_from(t.0 % 1000).unwrap_or(0) * 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_milliseconds() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123] {
            let t = CommitTime(ms);
            assert_eq!(to_commit_time(Some(&to_timestamp(t))), t);
        }
        let before_epoch = Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(to_commit_time(Some(&before_epoch)), CommitTime(0));
        assert_eq!(to_commit_time(None), CommitTime(0));
    }

    #[test]
    fn a_marker_or_no_position_means_bootstrap() {
        let mut p = Position::default();
        assert!(p.bootstrap_reason().unwrap_or("").contains("first start"));
        p.applied = Some(Applied {
            revision: 5,
            committed: None,
            source_cluster_id: "a".into(),
        });
        assert_eq!(p.bootstrap_reason(), None);
        assert_eq!(p.source_cluster(), Some("a"));
        p.marker = Some(MirrorBootstrap::default());
        assert!(p.bootstrap_reason().unwrap_or("").contains("interrupted"));
    }
}
