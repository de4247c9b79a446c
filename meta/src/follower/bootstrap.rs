//! Bootstrap: make the local mirrored keyspace equal to a source snapshot at revision R.
//!
//! The snapshot streams in key order; it is merged against the local `m/` keys, read in pages
//! in the same order: a put for every new or changed pair, a delete for every local key the
//! snapshot does not have, nothing for equal pairs (a re-bootstrap after compaction rewrites only
//! what changed). Mutations go out in local transactions of at most [`BATCH_MUTATIONS`], so
//! neither side is ever held in memory whole.
//!
//! The first transaction writes the marker `l/mirror/bootstrap` (target R): from then on the
//! mirrored keyspace is at no source revision, and a follower that restarts finds the marker and
//! bootstraps again instead of tailing from a half-written state. The last transaction writes
//! `l/mirror/applied = R` and removes the marker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb};
use mirrorfs_api::records::{Applied, MirrorBootstrap};
use tokio::sync::mpsc;

use super::Shared;
use super::error::FollowError;
use super::position::{APPLIED_KEY, BOOTSTRAP_KEY, Position, to_commit_time, to_timestamp};
use super::source::{Source, check_cluster, classify};
use super::status::State;
use super::tail::AbortOnDrop;
use crate::engine::{CommitTime, Engine, KeyValue, Mutation, Txn, TxnOutcome, prefix_end};
use crate::fs::keys;
use crate::keyspace::{MIRRORED, is_mirrored};

/// Most mutations per bootstrap transaction.
pub const BATCH_MUTATIONS: usize = 8000;
/// Most bytes of keys and values per bootstrap transaction.
const BATCH_BYTES: usize = 16 << 20;
/// Local keys read per range call.
const PAGE: usize = 4096;

/// Receives snapshot chunks in the background, so the network keeps flowing while a batch
/// commits.
async fn receive(
    mut stream: tonic::Streaming<pb::SnapshotChunk>,
    url: String,
    out: mpsc::Sender<Result<pb::SnapshotChunk, FollowError>>,
) {
    loop {
        let r = match stream.message().await {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => Err(FollowError::Unreachable {
                url: url.clone(),
                reason: "the snapshot stream ended before its last chunk".into(),
            }),
            Err(s) => Err(classify(&url, &s, Revision(0))),
        };
        let stop = r.is_err();
        if out.send(r).await.is_err() || stop {
            return;
        }
    }
}

/// The local mirrored keys in key order, a page at a time.
struct LocalKeys<'a> {
    engine: &'a dyn Engine,
    page: VecDeque<KeyValue>,
    next: Vec<u8>,
    end: Vec<u8>,
    done: bool,
}

impl<'a> LocalKeys<'a> {
    fn new(engine: &'a dyn Engine) -> Self {
        Self {
            engine,
            page: VecDeque::new(),
            next: MIRRORED.to_vec(),
            end: prefix_end(MIRRORED),
            done: false,
        }
    }

    /// The smallest local key not yet consumed.
    ///
    /// Pages are read only when the previous one is used up, and everything this bootstrap has
    /// written so far sorts before the current page's keys, so a page never sees its own writes.
    async fn peek(&mut self) -> Result<Option<&KeyValue>, FollowError> {
        if self.page.is_empty() && !self.done {
            let page = self.engine.range(&self.next, &self.end, PAGE).await?;
            self.done = page.len() < PAGE;
            if let Some(last) = page.last() {
                self.next = last.key.clone();
                self.next.push(0);
            }
            self.page = page.into();
        }
        Ok(self.page.front())
    }

    fn pop(&mut self) -> Option<KeyValue> {
        self.page.pop_front()
    }

    /// The first local key not yet consumed, if any (the start of what is left).
    fn rest(&self) -> Option<Vec<u8>> {
        match self.page.front() {
            Some(kv) => Some(kv.key.clone()),
            None if !self.done => Some(self.next.clone()),
            None => None,
        }
    }
}

/// Mutations waiting for the next transaction.
#[derive(Default)]
struct Batch {
    mutations: Vec<Mutation>,
    bytes: usize,
}

impl Batch {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.mutations.push(Mutation::Put { key, value });
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.bytes += key.len();
        self.mutations.push(Mutation::Delete { key });
    }

    fn full(&self) -> bool {
        self.mutations.len() >= BATCH_MUTATIONS || self.bytes >= BATCH_BYTES
    }
}

/// Counts for the log.
#[derive(Default)]
struct Counts {
    pairs: u64,
    puts: u64,
    deletes: u64,
    txns: u64,
}

/// Bootstraps from a fresh source snapshot. `reason` is logged.
pub async fn run(
    shared: &Arc<Shared>,
    source: &Source,
    pos: &mut Position,
    reason: &str,
) -> Result<(), FollowError> {
    let started = Instant::now();
    let url = source.url.clone();
    let stream = match source.client.clone().snapshot(pb::SnapshotRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(classify(&url, &s, Revision(0))),
    };
    let (tx, mut chunks) = mpsc::channel(16);
    let _receiver = AbortOnDrop(tokio::spawn(receive(stream, url.clone(), tx)));
    let next_chunk = |c: Option<Result<pb::SnapshotChunk, FollowError>>| {
        c.unwrap_or_else(|| {
            Err(FollowError::Unreachable {
                url: url.clone(),
                reason: "the snapshot receiver stopped".into(),
            })
        })
    };

    let first = next_chunk(chunks.recv().await)?;
    let (cluster, revision) = (first.cluster_id.clone(), Revision(first.revision));
    let time = to_commit_time(first.committed.as_ref());
    check_cluster(&url, pos.source_cluster(), &cluster)?;
    if revision < pos.applied_revision() {
        return Err(FollowError::SourceBehind {
            url,
            cluster,
            head: revision,
            applied: pos.applied_revision(),
        });
    }
    tracing::info!(
        source = %url,
        source_cluster = %cluster,
        %revision,
        reason,
        "bootstrapping the mirror from a source snapshot"
    );
    shared.status().saw_revision(revision, time);

    // The marker, alone, before anything is read: it also makes any transaction still queued by
    // an earlier instance of this follower fail its compares.
    let marker = MirrorBootstrap {
        revision: revision.0,
        source_cluster_id: cluster.clone(),
        started: Some(to_timestamp(CommitTime::now())),
    };
    let mut txn = Txn::new();
    txn.compares.extend(pos.guards());
    let txn = txn.put(BOOTSTRAP_KEY, keys::encode(&marker));
    {
        let _gate = shared.gate.lock().await;
        match shared.engine.txn(txn).await? {
            TxnOutcome::Committed(c) => {
                pos.marker = Some(marker);
                pos.marker_mod = c.revision;
            }
            TxnOutcome::Conflict => return Err(FollowError::Moved),
        }
        shared.status().rewriting = true;
    }

    let engine = shared.engine.clone();
    let mut local = LocalKeys::new(engine.as_ref());
    let mut batch = Batch::default();
    let mut counts = Counts::default();
    let mut last_key: Option<Vec<u8>> = None;
    let mut chunk = first;
    loop {
        if chunk.cluster_id != cluster || Revision(chunk.revision) != revision {
            return Err(FollowError::InvalidSnapshot {
                url,
                detail: format!(
                    "a chunk of cluster {:?} at revision {} in a snapshot of cluster {cluster:?} at revision {revision}",
                    chunk.cluster_id, chunk.revision
                ),
            });
        }
        for kv in std::mem::take(&mut chunk.pairs) {
            if !is_mirrored(&kv.key) || last_key.as_ref().is_some_and(|l| *l >= kv.key) {
                return Err(FollowError::InvalidSnapshot {
                    url,
                    detail: format!(
                        "key {:?} is outside the mirrored keyspace or out of order",
                        String::from_utf8_lossy(&kv.key)
                    ),
                });
            }
            counts.pairs += 1;
            merge_one(&mut local, &mut batch, &mut counts, &kv).await?;
            last_key = Some(kv.key.clone());
            if batch.full() {
                commit(shared, pos, std::mem::take(&mut batch), None).await?;
                counts.txns += 1;
            }
        }
        if chunk.last {
            break;
        }
        chunk = next_chunk(chunks.recv().await)?;
    }
    // Every local key from here on is absent from the snapshot.
    if let Some(start) = local.rest() {
        batch.mutations.push(Mutation::DeleteRange {
            start,
            end: prefix_end(MIRRORED),
        });
        counts.deletes += 1;
    }
    let applied = Applied {
        revision: revision.0,
        committed: Some(to_timestamp(time)),
        source_cluster_id: cluster.clone(),
    };
    commit(shared, pos, batch, Some(applied)).await?;
    counts.txns += 1;
    tracing::info!(
        %revision,
        pairs = counts.pairs,
        puts = counts.puts,
        deletes = counts.deletes,
        transactions = counts.txns,
        took = ?started.elapsed(),
        "mirror bootstrapped"
    );
    Ok(())
}

/// Merges one snapshot pair: deletes the local keys before it, then puts it unless the local
/// copy is already equal.
async fn merge_one(
    local: &mut LocalKeys<'_>,
    batch: &mut Batch,
    counts: &mut Counts,
    kv: &pb::KeyValue,
) -> Result<(), FollowError> {
    loop {
        match local.peek().await? {
            Some(l) if l.key < kv.key => {
                if let Some(l) = local.pop() {
                    batch.delete(l.key);
                    counts.deletes += 1;
                }
            }
            Some(l) if l.key == kv.key => {
                let same = l.value == kv.value;
                local.pop();
                if !same {
                    batch.put(kv.key.clone(), kv.value.clone());
                    counts.puts += 1;
                }
                return Ok(());
            }
            _ => {
                batch.put(kv.key.clone(), kv.value.clone());
                counts.puts += 1;
                return Ok(());
            }
        }
    }
}

/// Commits one bootstrap transaction; the last one (`finish`) records the position and removes
/// the marker.
async fn commit(
    shared: &Shared,
    pos: &mut Position,
    batch: Batch,
    finish: Option<Applied>,
) -> Result<(), FollowError> {
    let mut txn = Txn::new();
    txn.compares.extend(pos.guards());
    txn.mutations = batch.mutations;
    if let Some(applied) = &finish {
        txn = txn
            .put(APPLIED_KEY, keys::encode(applied))
            .delete(BOOTSTRAP_KEY);
    }
    let _gate = shared.gate.lock().await;
    let c = match shared.engine.txn(txn).await? {
        TxnOutcome::Committed(c) => c,
        TxnOutcome::Conflict => return Err(FollowError::Moved),
    };
    if let Some(applied) = finish {
        let (revision, time) = (
            Revision(applied.revision),
            to_commit_time(applied.committed.as_ref()),
        );
        let cluster = applied.source_cluster_id.clone();
        pos.applied = Some(applied);
        pos.applied_mod = c.revision;
        pos.marker = None;
        pos.marker_mod = Revision(0);
        let now = CommitTime::now();
        {
            let mut st = shared.status();
            st.forget_unapplied();
            st.set_applied(revision, time);
            st.rewriting = false;
            st.source_cluster_id = cluster;
            st.bootstrapped(revision, now);
            st.state = State::Tailing;
            st.publish(&shared.metrics, now);
        }
        shared.metrics.bootstraps_total.inc();
        // Published last, so whoever waits for it sees the status that goes with it.
        shared.applied.send_replace(revision);
    }
    Ok(())
}
