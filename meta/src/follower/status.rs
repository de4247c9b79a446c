//! What the follower reports: its state, position, lag and health, as `MirrorStatus` and as
//! metrics.
//!
//! Lag is computed, not sampled: `lag_revisions` is the latest source revision known minus the
//! applied one, and `lag_seconds` the age (on this mirror's clock) of the oldest source commit
//! not yet applied. Commit times come from the source's clock, so the age is clamped at zero:
//! clock skew between regions can hide a little lag, never make it negative.

use std::collections::VecDeque;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{CheckMirrorReply, MirrorStatus};

use super::position::{Position, to_timestamp};
use crate::engine::CommitTime;
use crate::metrics::MirrorMetrics;

/// The state of the follower's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Bootstrapping,
    Tailing,
    Retrying,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Bootstrapping => "bootstrapping",
            State::Tailing => "tailing",
            State::Retrying => "retrying",
            State::Failed => "failed",
        }
    }
}

/// `(lag_revisions, lag_seconds)`.
///
/// `oldest_unapplied` is the source commit time of `applied + 1` when the follower has received
/// it; otherwise the age of the latest known source commit (`source_time`) is used, which is a
/// lower bound (that commit is not older than the oldest unapplied one).
pub fn lag(
    applied: Revision,
    source: Revision,
    oldest_unapplied: Option<CommitTime>,
    source_time: CommitTime,
    now: CommitTime,
) -> (u64, f64) {
    let revisions = source.0.saturating_sub(applied.0);
    if revisions == 0 {
        return (0, 0.0);
    }
    let since = oldest_unapplied.unwrap_or(source_time);
    if since.0 == 0 {
        return (revisions, 0.0);
    }
    // Saturating: a source clock ahead of ours gives 0, never a negative age.
    let ms = now.0.saturating_sub(since.0);
    (revisions, ms as f64 / 1000.0)
}

/// Everything `status()` reports, updated by the follower's tasks.
pub struct Tracker {
    source_url: String,
    pub source_cluster_id: String,
    pub state: State,
    applied: Revision,
    applied_time: CommitTime,
    source_revision: Revision,
    source_time: CommitTime,
    /// Received but not yet applied source commits, oldest first.
    unapplied: VecDeque<(Revision, CommitTime)>,
    reachable: bool,
    unreachable_since: Option<CommitTime>,
    last_bootstrap: Option<CommitTime>,
    last_bootstrap_revision: Revision,
    bootstraps: u64,
    last_error: String,
    pub last_check: Option<CheckMirrorReply>,
    /// A bootstrap is rewriting the mirrored keyspace (it is at no source revision).
    pub rewriting: bool,
}

impl Tracker {
    pub fn new(source_url: &str, pos: &Position) -> Self {
        Self {
            source_url: source_url.to_owned(),
            source_cluster_id: pos.source_cluster().unwrap_or_default().to_owned(),
            state: if pos.bootstrap_reason().is_some() {
                State::Bootstrapping
            } else {
                State::Tailing
            },
            applied: pos.applied_revision(),
            applied_time: pos.applied_time(),
            source_revision: pos.applied_revision(),
            source_time: pos.applied_time(),
            unapplied: VecDeque::new(),
            // Unknown until the first attempt; not reported as an outage before it fails.
            reachable: true,
            unreachable_since: None,
            last_bootstrap: None,
            last_bootstrap_revision: Revision(0),
            bootstraps: 0,
            last_error: String::new(),
            last_check: None,
            rewriting: pos.marker.is_some(),
        }
    }

    pub fn applied(&self) -> Revision {
        self.applied
    }

    /// A local commit made the mirror equal to the source at `revision`.
    pub fn set_applied(&mut self, revision: Revision, time: CommitTime) {
        self.applied = revision;
        self.applied_time = time;
        while self.unapplied.front().is_some_and(|(r, _)| *r <= revision) {
            self.unapplied.pop_front();
        }
        self.saw_revision(revision, time);
    }

    /// The source committed `revision` at `time` (an entry arrived).
    pub fn received(&mut self, revision: Revision, time: CommitTime) {
        if revision > self.applied {
            self.unapplied.push_back((revision, time));
        }
        self.saw_revision(revision, time);
        self.set_reachable();
    }

    /// Entries received but not applied are dropped when a connection ends.
    pub fn forget_unapplied(&mut self) {
        self.unapplied.clear();
    }

    /// The source's head, from `Head` or a snapshot.
    pub fn saw_revision(&mut self, revision: Revision, time: CommitTime) {
        if revision >= self.source_revision {
            self.source_revision = revision;
            self.source_time = self.source_time.max(time);
        }
    }

    pub fn set_reachable(&mut self) {
        self.reachable = true;
        self.unreachable_since = None;
    }

    pub fn set_unreachable(&mut self, now: CommitTime) {
        if self.reachable || self.unreachable_since.is_none() {
            self.unreachable_since = Some(now);
        }
        self.reachable = false;
    }

    pub fn bootstrapped(&mut self, revision: Revision, now: CommitTime) {
        self.bootstraps += 1;
        self.last_bootstrap = Some(now);
        self.last_bootstrap_revision = revision;
    }

    pub fn set_error(&mut self, message: String) {
        self.last_error = message;
    }

    pub fn clear_error(&mut self) {
        self.last_error.clear();
    }

    pub fn bootstraps(&self) -> u64 {
        self.bootstraps
    }

    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    pub fn lag(&self, now: CommitTime) -> (u64, f64) {
        let oldest = self
            .unapplied
            .front()
            .filter(|(r, _)| *r == self.applied.next())
            .map(|(_, t)| *t);
        lag(
            self.applied,
            self.source_revision,
            oldest,
            self.source_time,
            now,
        )
    }

    pub fn to_wire(&self, now: CommitTime) -> MirrorStatus {
        let (lag_revisions, lag_seconds) = self.lag(now);
        MirrorStatus {
            source_url: self.source_url.clone(),
            source_cluster_id: self.source_cluster_id.clone(),
            state: self.state.as_str().into(),
            applied_revision: self.applied.0,
            applied_committed: (self.applied_time.0 != 0).then(|| to_timestamp(self.applied_time)),
            source_revision: self.source_revision.0,
            lag_revisions,
            lag_seconds,
            source_reachable: self.reachable,
            unreachable_since: self.unreachable_since.map(to_timestamp),
            last_bootstrap: self.last_bootstrap.map(to_timestamp),
            last_bootstrap_revision: self.last_bootstrap_revision.0,
            bootstraps: self.bootstraps,
            last_error: self.last_error.clone(),
            last_check: self.last_check.clone(),
        }
    }

    pub fn publish(&self, m: &MirrorMetrics, now: CommitTime) {
        let (lag_revisions, lag_seconds) = self.lag(now);
        m.applied_revision.set(self.applied.0);
        m.source_revision.set(self.source_revision.0);
        m.lag_revisions.set(lag_revisions);
        m.lag_seconds.set(lag_seconds);
        m.source_reachable.set(i64::from(self.reachable));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: CommitTime = CommitTime(1_700_000_100_000);

    #[test]
    fn caught_up_means_no_lag() {
        assert_eq!(
            lag(
                Revision(10),
                Revision(10),
                None,
                CommitTime(1_700_000_000_000),
                NOW
            ),
            (0, 0.0)
        );
        // A head older than what was applied (a stale poll) is no lag either.
        assert_eq!(
            lag(Revision(12), Revision(10), None, CommitTime(1), NOW),
            (0, 0.0)
        );
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unapplied_commit() {
        let oldest = CommitTime(NOW.0 - 2_500);
        let (revs, secs) = lag(
            Revision(10),
            Revision(15),
            Some(oldest),
            CommitTime(NOW.0 - 100),
            NOW,
        );
        assert_eq!(revs, 5);
        assert!((secs - 2.5).abs() < 1e-9, "{secs}");
        // Without the entry itself, the head's age is a lower bound.
        let (_, secs) = lag(
            Revision(10),
            Revision(15),
            None,
            CommitTime(NOW.0 - 100),
            NOW,
        );
        assert!((secs - 0.1).abs() < 1e-9, "{secs}");
    }

    #[test]
    fn a_source_clock_ahead_of_ours_never_gives_negative_lag() {
        // The source's clock is an hour ahead: its commits look like they come from the future.
        let ahead = CommitTime(NOW.0 + 3_600_000);
        for oldest in [Some(ahead), None] {
            let (revs, secs) = lag(Revision(1), Revision(3), oldest, ahead, NOW);
            assert_eq!(revs, 2);
            assert!(secs >= 0.0 && secs == 0.0, "{secs}");
        }
        // A source clock behind ours makes lag look larger, but it stays finite and positive.
        let behind = CommitTime(NOW.0 - 3_600_000);
        let (_, secs) = lag(Revision(1), Revision(3), Some(behind), behind, NOW);
        assert!((secs - 3600.0).abs() < 1e-9);
    }

    #[test]
    fn the_tracker_uses_the_next_revision_it_has_received() {
        let mut t = Tracker::new("http://s", &Position::default());
        t.received(Revision(1), CommitTime(NOW.0 - 4_000));
        t.received(Revision(2), CommitTime(NOW.0 - 1_000));
        assert_eq!(t.lag(NOW), (2, 4.0));
        t.set_applied(Revision(1), CommitTime(NOW.0 - 4_000));
        assert_eq!(t.lag(NOW), (1, 1.0));
        t.set_applied(Revision(2), CommitTime(NOW.0 - 1_000));
        assert_eq!(t.lag(NOW), (0, 0.0));
        let w = t.to_wire(NOW);
        assert_eq!((w.applied_revision, w.source_revision), (2, 2));
        assert!(w.source_reachable && w.unreachable_since.is_none());
        t.set_unreachable(NOW);
        t.set_unreachable(CommitTime(NOW.0 + 5));
        let w = t.to_wire(NOW);
        assert!(!w.source_reachable);
        assert_eq!(w.unreachable_since, Some(to_timestamp(NOW)));
    }
}
