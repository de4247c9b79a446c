//! An in-memory engine: the reference the conformance suite is checked against, and a fast
//! double for tests of the layers above. Not durable.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::stream;
use mirrorfs_api::Revision;
use tokio::sync::watch;

use super::{
    ChangeEntry, ChangeStream, Commit, CommitTime, Compare, Engine, EngineError, Head, KeyValue,
    Mutation, Result, Snapshot, Txn, TxnOutcome, follow::follow,
};

#[derive(Default)]
struct State {
    kv: BTreeMap<Vec<u8>, (Vec<u8>, Revision)>,
    log: VecDeque<ChangeEntry>,
    head: Head,
}

pub struct MemoryEngine {
    state: std::sync::Arc<Mutex<State>>,
    head_tx: watch::Sender<Revision>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self {
            state: Default::default(),
            head_tx: watch::Sender::new(Revision(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written (every write below is
        // a single map operation after all checks), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn apply(kv: &mut BTreeMap<Vec<u8>, (Vec<u8>, Revision)>, m: &Mutation, rev: Revision) {
    match m {
        Mutation::Put { key, value } => {
            kv.insert(key.clone(), (value.clone(), rev));
        }
        Mutation::Delete { key } => {
            kv.remove(key);
        }
        // An empty or inverted range deletes nothing (BTreeMap::range would panic on it).
        Mutation::DeleteRange { start, end } if start < end => {
            let doomed: Vec<_> = kv
                .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                kv.remove(&k);
            }
        }
        Mutation::DeleteRange { .. } => {}
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.lock().kv.get(key).map(|(v, r)| KeyValue {
            key: key.to_vec(),
            value: v.clone(),
            mod_revision: *r,
        }))
    }

    async fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .kv
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(k, (v, r))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *r,
            })
            .collect())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let mut st = self.lock();
        let holds = txn.compares.iter().all(|c| match c {
            Compare::ModRevision { key, revision } => {
                st.kv.get(key).map_or(Revision(0), |(_, r)| *r) == *revision
            }
        });
        if !holds {
            return Ok(TxnOutcome::Conflict);
        }
        let revision = st.head.revision.next();
        let time = CommitTime::now().max(st.head.time);
        for m in &txn.mutations {
            apply(&mut st.kv, m, revision);
        }
        st.log.push_back(ChangeEntry {
            revision,
            time,
            mutations: txn.mutations,
        });
        st.head.revision = revision;
        st.head.time = time;
        drop(st);
        // Concurrent commits may get here out of order: never move the signal back, or a
        // watcher would wait for a revision that has already been committed.
        self.head_tx.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
        Ok(TxnOutcome::Committed(Commit { revision, time }))
    }

    async fn head(&self) -> Result<Head> {
        Ok(self.lock().head)
    }

    async fn watch(&self, from: Revision) -> Result<ChangeStream> {
        let compacted = self.lock().head.compacted;
        if from.0 != 0 && from <= compacted {
            return Err(EngineError::Compacted {
                requested: from,
                compacted,
            });
        }
        // `0` means "from the start of retained history".
        let from = if from.0 == 0 { compacted.next() } else { from };
        let state = self.state.clone();
        Ok(follow(from, self.head_tx.subscribe(), move |next, max| {
            let state = state.clone();
            async move {
                let st = state.lock().unwrap_or_else(|p| p.into_inner());
                if next <= st.head.compacted {
                    return Err(EngineError::Compacted {
                        requested: next,
                        compacted: st.head.compacted,
                    });
                }
                Ok(st
                    .log
                    .iter()
                    .skip_while(|e| e.revision < next)
                    .take(max)
                    .cloned()
                    .collect())
            }
        }))
    }

    async fn compact(&self, up_to: Revision) -> Result<Revision> {
        let mut st = self.lock();
        let up_to = up_to.min(st.head.revision).max(st.head.compacted);
        while st.log.front().is_some_and(|e| e.revision <= up_to) {
            st.log.pop_front();
        }
        st.head.compacted = up_to;
        Ok(up_to)
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let st = self.lock();
        let pairs: Vec<KeyValue> = st
            .kv
            .iter()
            .map(|(k, (v, r))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *r,
            })
            .collect();
        let chunks: Vec<Result<Vec<KeyValue>>> =
            pairs.chunks(1024).map(|c| Ok(c.to_vec())).collect();
        Ok(Snapshot {
            revision: st.head.revision,
            time: st.head.time,
            chunks: Box::pin(stream::iter(chunks)),
        })
    }
}
