//! The `Replication` gRPC service of a mirror cluster: the block-copy queue for workers. The
//! admin token reaches every volume; a mirror volume's token reaches that volume's tasks alone,
//! so every mirror client can run workers for the volume it mounts.

use std::sync::Arc;
use std::time::Duration;

use mirrorfs_api::meta::{self as pb, replication_server::Replication as ReplicationApi};
use mirrorfs_api::{BlockId, Checksum, VolumeId};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::MetaState;
use super::auth::bearer;
use crate::error::MetaError;
use crate::replication::Replication;

pub struct ReplicationService(pub Arc<MetaState>);

impl ReplicationService {
    /// The queue, and the one source volume the caller may touch (`None`: all, admin token).
    async fn authorize(
        &self,
        md: &MetadataMap,
        volume: Option<&pb::VolumeRef>,
    ) -> Result<(Arc<Replication>, Option<VolumeId>), MetaError> {
        let st = &self.0;
        let Some(mirror) = &st.mirror else {
            return Err(MetaError::InvalidArgument(
                "this cluster is a source: block replication runs against a mirror cluster's meta service".into(),
            ));
        };
        let queue = mirror.replication().clone();
        match volume.map(|v| v.volume.as_str()).filter(|v| !v.is_empty()) {
            None => {
                st.admin.check(md)?;
                Ok((queue, None))
            }
            Some(name) => {
                let token = bearer(md, &format!("mirror volume {name:?}"))?;
                let vol = st.fs.authenticate(name, token).await?;
                Ok((queue, Some(vol.id)))
            }
        }
    }
}

fn block_id(s: &str) -> Result<BlockId, MetaError> {
    BlockId::parse(s).map_err(|e| MetaError::InvalidArgument(e.to_string()))
}

#[tonic::async_trait]
impl ReplicationApi for ReplicationService {
    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        self.0
            .observe("Lease", async {
                let (md, _, r) = req.into_parts();
                let (queue, only) = self.authorize(&md, r.volume.as_ref()).await?;
                let tasks = queue
                    .lease(
                        only,
                        &r.worker,
                        r.max_tasks as usize,
                        Duration::from_secs(r.lease_seconds.into()),
                        Duration::from_millis(r.wait_ms.into()),
                    )
                    .await?;
                Ok(pb::LeaseReply { tasks })
            })
            .await
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        self.0
            .observe("Complete", async {
                let (md, _, r) = req.into_parts();
                let (queue, only) = self.authorize(&md, r.volume.as_ref()).await?;
                let (acknowledged, requeued, lease_lost) =
                    queue.complete(only, &r.worker, r.results).await?;
                Ok(pb::CompleteReply {
                    acknowledged,
                    requeued,
                    lease_lost,
                })
            })
            .await
    }

    async fn repair(
        &self,
        req: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairReply>, Status> {
        self.0
            .observe("Repair", async {
                let (md, _, r) = req.into_parts();
                let (queue, only) = self.authorize(&md, r.volume.as_ref()).await?;
                let vol = VolumeId(r.volume_id);
                if only.is_some_and(|o| o != vol) {
                    return Err(MetaError::PermissionDenied(format!(
                        "this token opens one mirror volume; it cannot queue repairs for source volume id {}",
                        r.volume_id
                    )));
                }
                let checksum = Checksum::from_slice(&r.checksum)
                    .map_err(|e| MetaError::InvalidArgument(e.to_string()))?;
                queue
                    .repair(vol, &block_id(&r.block_id)?, r.block_size, checksum, &r.reason)
                    .await?;
                Ok(pb::RepairReply {})
            })
            .await
    }

    async fn targets(
        &self,
        req: Request<pb::TargetsRequest>,
    ) -> Result<Response<pb::TargetsReply>, Status> {
        self.0
            .observe("Targets", async {
                let (md, _, r) = req.into_parts();
                let (queue, only) = self.authorize(&md, r.volume.as_ref()).await?;
                Ok(pb::TargetsReply {
                    targets: queue.targets(only).await?,
                })
            })
            .await
    }
}
