//! The `Admin` gRPC service: volumes, status, compaction and the block listing of garbage
//! collection, behind the admin token.

use std::sync::Arc;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::MetaState;
use crate::engine::CommitTime;
use crate::error::MetaError;
use crate::fs::NewVolume;

pub struct AdminService(pub Arc<MetaState>);

/// Converts a commit time to the wire's timestamp.
pub(crate) fn timestamp(t: CommitTime) -> pb::Timestamp {
    t.to_timestamp()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeReply>, Status> {
        let s = &self.0;
        s.observe("CreateVolume", async {
            s.admin.check(req.metadata())?;
            let r = req.into_inner();
            let (volume, token) =
                s.fs.create_volume(NewVolume {
                    name: r.name,
                    storage: r.storage.unwrap_or_default(),
                    capacity_bytes: r.capacity_bytes,
                    capacity_inodes: r.capacity_inodes,
                    source_volume: r.source_volume,
                })
                .await?;
            tracing::info!(volume = %volume.name, id = volume.id, "volume created");
            Ok(pb::CreateVolumeReply {
                volume: Some(volume),
                token,
            })
        })
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesReply>, Status> {
        let s = &self.0;
        s.observe("ListVolumes", async {
            s.admin.check(req.metadata())?;
            Ok(pb::ListVolumesReply {
                volumes: s.fs.list_volumes().await?,
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeReply>, Status> {
        let s = &self.0;
        s.observe("DeleteVolume", async {
            s.admin.check(req.metadata())?;
            let name = &req.get_ref().name;
            let revision = s.fs.delete_volume(name).await?;
            tracing::info!(volume = %name, %revision, "volume deleted");
            Ok(pb::DeleteVolumeReply {
                revision: revision.0,
            })
        })
        .await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = &self.0;
        s.observe("Status", async {
            s.admin.check(req.metadata())?;
            let head = s.fs.engine().head().await?;
            Ok(pb::StatusReply {
                cluster_id: s.fs.cluster_id().await?,
                engine: s.fs.engine().kind().into(),
                revision: head.revision.0,
                compacted_revision: head.compacted.0,
                last_commit: Some(timestamp(head.time)),
                uptime_seconds: s.started.elapsed().as_secs(),
                version: env!("CARGO_PKG_VERSION").into(),
                volumes: s.fs.list_volumes().await?.len() as u64,
                role: s.role().into(),
                mirror: s.mirror.as_ref().map(|m| m.status()),
                replication: match &s.mirror {
                    Some(m) => Some(m.replication().status().await?),
                    None => None,
                },
            })
        })
        .await
    }

    async fn check_mirror(
        &self,
        req: Request<pb::CheckMirrorRequest>,
    ) -> Result<Response<pb::CheckMirrorReply>, Status> {
        let s = &self.0;
        s.observe("CheckMirror", async {
            s.admin.check(req.metadata())?;
            let Some(mirror) = &s.mirror else {
                return Err(MetaError::InvalidArgument(
                    "this cluster is a source, not a mirror: run the check against a mirror's meta service".into(),
                ));
            };
            mirror.check().await
        })
        .await
    }

    async fn compact(
        &self,
        req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactReply>, Status> {
        let s = &self.0;
        s.observe("Compact", async {
            s.admin.check(req.metadata())?;
            let engine = s.fs.engine();
            let up_to = match req.get_ref().revision {
                0 => engine.head().await?.revision,
                r => Revision(r),
            };
            let compacted = engine.compact(up_to).await?;
            s.metrics.compacted_revision.set(compacted.0);
            tracing::info!(%compacted, "changelog compacted");
            Ok(pb::CompactReply {
                compacted_revision: compacted.0,
            })
        })
        .await
    }

    async fn list_blocks(
        &self,
        req: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksReply>, Status> {
        let s = &self.0;
        s.observe("ListBlocks", async {
            s.admin.check(req.metadata())?;
            let r = req.into_inner();
            // Read before the page: every extent of the page is at this revision or later.
            let revision = s.read_revision().await?;
            let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
            let page = s.fs.list_blocks(&r.volume, &r.after, limit).await?;
            Ok(pb::ListBlocksReply {
                block_ids: page.block_ids,
                next: page.next,
                revision: revision.0,
                volume_id: page.volume_id.0,
            })
        })
        .await
    }
}
