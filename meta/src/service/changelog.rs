//! The `Changelog` gRPC service: the stream of committed transactions and consistent snapshots
//! that mirrors follow. Only the mirrored keyspace leaves the cluster: cluster-local keys are
//! filtered out of both, while every revision is still delivered (possibly with no mutations)
//! so a follower sees the sequence without gaps.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb, changelog_server::Changelog, mutation::Op};
use tonic::{Request, Response, Status};

use super::{MetaState, admin::timestamp};
use crate::engine::{ChangeEntry, Mutation};
use crate::error::MetaError;
use crate::keyspace::is_mirrored;

pub struct ChangelogService {
    pub state: Arc<MetaState>,
    /// Becomes `true` when the server shuts down; open streams end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl ChangelogService {
    /// Completes when the server begins to shut down.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Snapshot pairs per message.
const SNAPSHOT_CHUNK: usize = 1024;

/// The mirrored part of a mutation, or `None` if it touches only cluster-local keys.
pub(crate) fn mirrored(m: Mutation) -> Option<pb::Mutation> {
    let op = match m {
        Mutation::Put { key, value } if is_mirrored(&key) => Op::Put(pb::Put { key, value }),
        Mutation::Delete { key } if is_mirrored(&key) => Op::Delete(pb::Delete { key }),
        Mutation::DeleteRange { start, end } if is_mirrored(&start) => {
            Op::DeleteRange(pb::DeleteRange { start, end })
        }
        _ => return None,
    };
    Some(pb::Mutation { op: Some(op) })
}

fn to_wire(cluster_id: &str, e: ChangeEntry) -> pb::ChangelogEntry {
    pb::ChangelogEntry {
        cluster_id: cluster_id.to_owned(),
        revision: e.revision.0,
        committed: Some(timestamp(e.time)),
        mutations: e.mutations.into_iter().filter_map(mirrored).collect(),
    }
}

#[tonic::async_trait]
impl Changelog for ChangelogService {
    type WatchStream = BoxStream<pb::ChangelogEntry>;
    type SnapshotStream = BoxStream<pb::SnapshotChunk>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let s = self.state.clone();
        let stopped = self.stopped();
        s.clone()
            .observe("Watch", async move {
                s.check_replication(req.metadata())?;
                let cluster_id = s.fs.cluster_id().await?;
                let from = Revision(req.get_ref().from_revision);
                let entries = s.fs.engine().watch(from).await?;
                s.metrics.watchers.inc();
                let guard = WatcherGauge(s.clone());
                let stream = entries.map(move |r| {
                    let _alive = &guard;
                    r.map(|e| to_wire(&cluster_id, e))
                        .map_err(|e| Status::from(MetaError::from(e)))
                });
                Ok(Box::pin(stream.take_until(stopped)) as Self::WatchStream)
            })
            .await
    }

    async fn head(&self, req: Request<pb::HeadRequest>) -> Result<Response<pb::HeadReply>, Status> {
        let s = &self.state;
        s.observe("Head", async {
            s.check_replication(req.metadata())?;
            let head = s.fs.engine().head().await?;
            Ok(pb::HeadReply {
                cluster_id: s.fs.cluster_id().await?,
                revision: head.revision.0,
                committed: Some(timestamp(head.time)),
                compacted_revision: head.compacted.0,
            })
        })
        .await
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestReply>, Status> {
        let s = &self.state;
        s.observe("Digest", async {
            s.check_replication(req.metadata())?;
            let snap = s.fs.engine().snapshot().await?;
            let revision = snap.revision.0;
            Ok(pb::DigestReply {
                cluster_id: s.fs.cluster_id().await?,
                revision,
                sections: crate::digest::digest(snap.chunks).await?,
            })
        })
        .await
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let s = self.state.clone();
        let stopped = self.stopped();
        s.clone()
            .observe("Snapshot", async move {
                s.check_replication(req.metadata())?;
                let cluster_id = s.fs.cluster_id().await?;
                let snap = s.fs.engine().snapshot().await?;
                let (revision, committed) = (snap.revision.0, Some(timestamp(snap.time)));
                let header = pb::SnapshotChunk {
                    cluster_id,
                    revision,
                    committed,
                    pairs: Vec::new(),
                    last: false,
                };
                let pairs = snap
                    .chunks
                    .map(|chunk| {
                        chunk.map(|kvs| {
                            futures::stream::iter(
                                kvs.into_iter().filter(|kv| is_mirrored(&kv.key)).map(|kv| {
                                    Ok(pb::KeyValue {
                                        key: kv.key,
                                        value: kv.value,
                                    })
                                }),
                            )
                        })
                    })
                    .map(|r| match r {
                        Ok(s) => s.left_stream(),
                        Err(e) => futures::stream::iter([Err(e)]).right_stream(),
                    })
                    .flatten()
                    .chunks(SNAPSHOT_CHUNK);
                let body = {
                    let header = header.clone();
                    pairs.map(move |batch| {
                        let pairs = batch
                            .into_iter()
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| Status::from(MetaError::from(e)))?;
                        Ok(pb::SnapshotChunk {
                            pairs,
                            ..header.clone()
                        })
                    })
                };
                let last = futures::stream::once(async move {
                    Ok(pb::SnapshotChunk {
                        last: true,
                        ..header
                    })
                });
                Ok(Box::pin(body.chain(last).take_until(stopped)) as Self::SnapshotStream)
            })
            .await
    }
}

impl MetaState {
    /// The changelog opens with the admin token or the replication token.
    fn check_replication(&self, md: &tonic::metadata::MetadataMap) -> Result<(), MetaError> {
        super::auth::check_any(
            md,
            "the changelog (replication)",
            [Some(&self.admin), self.replication.as_ref()],
        )
    }
}

/// Keeps the open-watchers gauge right however a stream ends.
struct WatcherGauge(Arc<MetaState>);

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        self.0.metrics.watchers.dec();
    }
}
