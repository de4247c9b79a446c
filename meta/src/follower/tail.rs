//! Tailing: `Watch(applied + 1)`, every entry validated, entries applied in batches.
//!
//! A reader task receives and validates entries into a bounded queue (bounded in entries and in
//! bytes), so the network keeps flowing while a batch commits. The applier takes every entry
//! that is already queued — up to `max_batch_entries`, the engine's mutation limit and a byte
//! budget — and applies them in one local transaction together with the new
//! `l/mirror/applied`, guarded by compares on the position keys. The mirror is therefore only
//! ever at a source revision boundary, and one fsync covers many source transactions, which is
//! what lets a mirror keep up with a source that commits concurrently.
//!
//! The difference check can hold the applier at a source revision: entries beyond it wait in the
//! queue (a batch is split at the hold) until the check releases it.

use std::collections::VecDeque;
use std::sync::Arc;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb, mutation::Op};
use mirrorfs_api::records::Applied;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Shared;
use super::error::{FollowError, InvalidEntry};
use super::position::{APPLIED_KEY, Position, to_commit_time, to_timestamp};
use super::source::{Source, classify};
use crate::engine::{CommitTime, Mutation, Txn, TxnOutcome, embedded, prefix_end};
use crate::fs::keys;
use crate::keyspace::{MIRRORED, is_mirrored};

/// Most mutations of one local transaction (the embedded engine's limit), the position included.
pub const MAX_TXN_MUTATIONS: usize = embedded::MAX_MUTATIONS;
/// Most bytes of source entries applied in one local transaction (half the embedded engine's
/// limit, which also counts the encoding overhead).
const MAX_BATCH_BYTES: usize = embedded::MAX_TXN_BYTES / 2;
/// Most bytes of entries received and not yet applied.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// A validated source transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub revision: Revision,
    pub time: CommitTime,
    pub mutations: Vec<Mutation>,
    /// Encoded size on the wire.
    pub bytes: usize,
}

/// Checks that `e` is the entry of revision `expected` from cluster `cluster`, that it carries
/// a commit time, and that every mutation has an operation and touches only mirrored keys;
/// returns it as engine mutations.
pub fn validate(
    e: pb::ChangelogEntry,
    cluster: &str,
    expected: Revision,
) -> Result<Entry, InvalidEntry> {
    let revision = e.revision;
    if e.cluster_id != cluster {
        return Err(InvalidEntry::WrongCluster {
            revision,
            expected: cluster.to_owned(),
            found: e.cluster_id,
        });
    }
    if Revision(revision) != expected {
        return Err(InvalidEntry::Gap {
            expected,
            found: Revision(revision),
        });
    }
    let Some(committed) = &e.committed else {
        return Err(InvalidEntry::MissingTime { revision });
    };
    let bytes = e.encoded_len();
    let foreign = |index: usize, key: &[u8]| InvalidEntry::ForeignKey {
        revision,
        index,
        key: String::from_utf8_lossy(key).into_owned(),
    };
    let mirrored_end = prefix_end(MIRRORED);
    let mut mutations = Vec::with_capacity(e.mutations.len());
    for (index, m) in e.mutations.into_iter().enumerate() {
        let m = match m.op {
            None => return Err(InvalidEntry::MissingOp { revision, index }),
            Some(Op::Put(p)) if is_mirrored(&p.key) => Mutation::Put {
                key: p.key,
                value: p.value,
            },
            Some(Op::Delete(d)) if is_mirrored(&d.key) => Mutation::Delete { key: d.key },
            Some(Op::DeleteRange(r)) if is_mirrored(&r.start) && r.end <= mirrored_end => {
                Mutation::DeleteRange {
                    start: r.start,
                    end: r.end,
                }
            }
            Some(Op::Put(pb::Put { key, .. }) | Op::Delete(pb::Delete { key })) => {
                return Err(foreign(index, &key));
            }
            Some(Op::DeleteRange(r)) => {
                let bad = if is_mirrored(&r.start) {
                    r.end
                } else {
                    r.start
                };
                return Err(foreign(index, &bad));
            }
        };
        mutations.push(m);
    }
    Ok(Entry {
        revision: Revision(revision),
        time: to_commit_time(Some(committed)),
        mutations,
        bytes,
    })
}

type Queued = (Entry, OwnedSemaphorePermit);

/// Aborts a spawned task when dropped (a stopped follower leaves nothing running).
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Receives and validates entries from `from` on, until the stream fails or a bad entry comes.
async fn read(
    mut stream: tonic::Streaming<pb::ChangelogEntry>,
    from: Revision,
    cluster: String,
    shared: Arc<Shared>,
    url: String,
    queue: mpsc::Sender<Result<Queued, FollowError>>,
) {
    let budget = Arc::new(Semaphore::new(MAX_QUEUED_BYTES));
    let mut expected = from;
    let failure = loop {
        let e = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => {
                break FollowError::Unreachable {
                    url,
                    reason: "the source ended the changelog stream (shutting down?)".into(),
                };
            }
            Err(s) => break classify(&url, &s, expected),
        };
        let entry = match validate(e, &cluster, expected) {
            Ok(entry) => entry,
            Err(InvalidEntry::WrongCluster {
                expected, found, ..
            }) => {
                break FollowError::ForeignSource {
                    url,
                    expected,
                    found,
                };
            }
            Err(detail) => break FollowError::InvalidEntry { url, detail },
        };
        let want = u32::try_from(entry.bytes.clamp(1, MAX_QUEUED_BYTES)).unwrap_or(u32::MAX);
        let Ok(permit) = budget.clone().acquire_many_owned(want).await else {
            return;
        };
        shared.status().received(entry.revision, entry.time);
        expected = expected.next();
        if queue.send(Ok((entry, permit))).await.is_err() {
            return;
        }
    };
    let _ = queue.send(Err(failure)).await;
}

/// Tails the source until something fails; returns what did. Only returns; never gives up on
/// its own.
pub async fn run(shared: &Arc<Shared>, source: &Source, pos: &mut Position) -> FollowError {
    let Some(cluster) = pos.source_cluster().map(str::to_owned) else {
        return FollowError::Local(crate::error::MetaError::InvalidArgument(
            "the mirror has no source position to tail from".into(),
        ));
    };
    let from = pos.applied_revision().next();
    let stream = match source
        .client
        .clone()
        .watch(pb::WatchRequest {
            from_revision: from.0,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return classify(&source.url, &s, from),
    };
    tracing::debug!(from = %from, "tailing the source changelog");
    let max_entries = shared.config.max_batch_entries;
    let (tx, mut rx) = mpsc::channel(max_entries.saturating_mul(4).clamp(64, 16_384));
    let _reader = AbortOnDrop(tokio::spawn(read(
        stream,
        from,
        cluster.clone(),
        shared.clone(),
        source.url.clone(),
        tx,
    )));
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut ended: Option<FollowError> = None;
    let mut hold = shared.hold.subscribe();
    loop {
        if pending.is_empty() {
            if let Some(e) = ended.take() {
                return e;
            }
            match rx.recv().await {
                Some(Ok(q)) => pending.push_back(q),
                Some(Err(e)) => return e,
                None => {
                    return FollowError::Unreachable {
                        url: source.url.clone(),
                        reason: "the changelog reader stopped".into(),
                    };
                }
            }
        }
        while ended.is_none() && pending.len() < max_entries {
            match rx.try_recv() {
                Ok(Ok(q)) => pending.push_back(q),
                Ok(Err(e)) => ended = Some(e),
                Err(_) => break,
            }
        }

        let gate = shared.gate.lock().await;
        let limit = hold.borrow_and_update().unwrap_or(Revision(u64::MAX));
        let take = match batch_len(&pending, max_entries, limit) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if take == 0 {
            // Held by the difference check at the applied revision: wait for the release.
            drop(gate);
            if hold.changed().await.is_err() {
                return FollowError::Moved;
            }
            continue;
        }
        let batch = pending.range(..take).map(|(e, _)| e);
        if let Err(e) = apply(shared, pos, &cluster, batch, take).await {
            return e;
        }
        drop(gate);
        pending.drain(..take);
    }
}

/// How many entries from the front of `pending` go into the next local transaction: all at or
/// below `hold`, within the entry, mutation and byte limits, and at least one (or zero when the
/// first is beyond the hold).
fn batch_len(
    pending: &VecDeque<Queued>,
    max_entries: usize,
    hold: Revision,
) -> Result<usize, FollowError> {
    let (mut n, mut mutations, mut bytes) = (0, 0, 0);
    for (e, _) in pending.iter().take(max_entries) {
        if e.revision > hold {
            break;
        }
        let m = mutations + e.mutations.len();
        let b = bytes + e.bytes;
        if n > 0 && (m + 1 > MAX_TXN_MUTATIONS || b > MAX_BATCH_BYTES) {
            break;
        }
        if n == 0 && m + 1 > MAX_TXN_MUTATIONS {
            return Err(FollowError::TooLarge {
                revision: e.revision,
                mutations: m,
                limit: MAX_TXN_MUTATIONS - 1,
            });
        }
        (n, mutations, bytes) = (n + 1, m, b);
    }
    Ok(n)
}

/// Applies consecutive entries in one local transaction with the new position, then publishes
/// it. The caller holds the gate.
async fn apply<'a>(
    shared: &Shared,
    pos: &mut Position,
    cluster: &str,
    batch: impl Iterator<Item = &'a Entry>,
    count: usize,
) -> Result<(), FollowError> {
    let mut txn = Txn::new();
    txn.compares.extend(pos.guards());
    let mut last = None;
    for e in batch {
        txn.mutations.extend(e.mutations.iter().cloned());
        last = Some((e.revision, e.time));
    }
    let Some((revision, time)) = last else {
        return Ok(());
    };
    let applied = Applied {
        revision: revision.0,
        committed: Some(to_timestamp(time)),
        source_cluster_id: cluster.to_owned(),
    };
    let txn = txn.put(APPLIED_KEY, keys::encode(&applied));
    match shared.engine.txn(txn).await? {
        TxnOutcome::Committed(c) => {
            pos.applied = Some(applied);
            pos.applied_mod = c.revision;
        }
        TxnOutcome::Conflict => return Err(FollowError::Moved),
    }
    let m = &shared.metrics;
    m.applied_transactions_total.inc_by(count as u64);
    m.apply_batch_entries.observe(count as f64);
    {
        let mut st = shared.status();
        st.set_applied(revision, time);
        st.publish(m, CommitTime::now());
    }
    shared.applied.send_replace(revision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: u64, mutations: Vec<pb::Mutation>) -> pb::ChangelogEntry {
        pb::ChangelogEntry {
            cluster_id: "src".into(),
            revision,
            committed: Some(pb::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            mutations,
        }
    }

    fn put(key: &[u8]) -> pb::Mutation {
        pb::Mutation {
            op: Some(Op::Put(pb::Put {
                key: key.to_vec(),
                value: b"v".to_vec(),
            })),
        }
    }

    fn delete_range(start: &[u8], end: &[u8]) -> pb::Mutation {
        pb::Mutation {
            op: Some(Op::DeleteRange(pb::DeleteRange {
                start: start.to_vec(),
                end: end.to_vec(),
            })),
        }
    }

    #[test]
    fn a_valid_entry_becomes_engine_mutations() {
        let e = entry(
            7,
            vec![
                put(b"m/i/1"),
                pb::Mutation {
                    op: Some(Op::Delete(pb::Delete {
                        key: b"m/d/2".to_vec(),
                    })),
                },
                delete_range(b"m/x/", b"m/x0"),
                delete_range(b"m/", b"m0"),
            ],
        );
        let v = validate(e, "src", Revision(7)).unwrap();
        assert_eq!(v.revision, Revision(7));
        assert_eq!(v.time, CommitTime(1_700_000_000_005));
        assert_eq!(v.mutations.len(), 4);
        assert_eq!(
            v.mutations[0],
            Mutation::Put {
                key: b"m/i/1".to_vec(),
                value: b"v".to_vec()
            }
        );
        // An entry whose mutations were all cluster-local arrives empty and is valid.
        assert!(validate(entry(8, vec![]), "src", Revision(8)).is_ok());
    }

    #[test]
    fn invalid_entries_are_refused() {
        let gap = validate(entry(9, vec![]), "src", Revision(8)).unwrap_err();
        assert!(matches!(gap, InvalidEntry::Gap { .. }), "{gap}");
        let repeat = validate(entry(7, vec![]), "src", Revision(8)).unwrap_err();
        assert!(matches!(repeat, InvalidEntry::Gap { .. }), "{repeat}");

        let wrong = validate(entry(8, vec![]), "other", Revision(8)).unwrap_err();
        assert!(
            matches!(wrong, InvalidEntry::WrongCluster { .. }),
            "{wrong}"
        );

        let missing = validate(
            entry(8, vec![pb::Mutation { op: None }]),
            "src",
            Revision(8),
        );
        assert_eq!(
            missing.unwrap_err(),
            InvalidEntry::MissingOp {
                revision: 8,
                index: 0
            }
        );

        for bad in [
            put(b"l/cluster"),
            put(b"l/mirror/applied"),
            put(b"m"),
            put(b""),
            pb::Mutation {
                op: Some(Op::Delete(pb::Delete {
                    key: b"l/mv/x".to_vec(),
                })),
            },
            delete_range(b"l/", b"l0"),
            delete_range(b"m/", b"n"),
            delete_range(b"m/x", b"\xff"),
        ] {
            let e = entry(8, vec![put(b"m/ok"), bad.clone()]);
            let err = validate(e, "src", Revision(8)).unwrap_err();
            assert!(
                matches!(err, InvalidEntry::ForeignKey { index: 1, .. }),
                "{bad:?}: {err}"
            );
        }

        let mut no_time = entry(8, vec![]);
        no_time.committed = None;
        assert!(matches!(
            validate(no_time, "src", Revision(8)),
            Err(InvalidEntry::MissingTime { .. })
        ));
    }

    fn queued(revision: u64, mutations: usize) -> Queued {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.try_acquire_owned().unwrap();
        let e = Entry {
            revision: Revision(revision),
            time: CommitTime(1),
            mutations: vec![
                Mutation::Delete {
                    key: b"m/k".to_vec()
                };
                mutations
            ],
            bytes: mutations * 10,
        };
        (e, permit)
    }

    #[test]
    fn batches_respect_the_hold_and_the_limits() {
        let pending: VecDeque<Queued> = (1..=10).map(|r| queued(r, 3)).collect();
        assert_eq!(batch_len(&pending, 100, Revision(u64::MAX)).unwrap(), 10);
        assert_eq!(batch_len(&pending, 4, Revision(u64::MAX)).unwrap(), 4);
        assert_eq!(batch_len(&pending, 100, Revision(6)).unwrap(), 6);
        assert_eq!(batch_len(&pending, 100, Revision(0)).unwrap(), 0);

        let big: VecDeque<Queued> = (1..=3)
            .map(|r| queued(r, MAX_TXN_MUTATIONS / 2 - 1))
            .collect();
        assert_eq!(batch_len(&big, 100, Revision(u64::MAX)).unwrap(), 2);
        let too_big: VecDeque<Queued> = [queued(1, MAX_TXN_MUTATIONS)].into();
        assert!(matches!(
            batch_len(&too_big, 100, Revision(u64::MAX)),
            Err(FollowError::TooLarge { .. })
        ));
    }
}
