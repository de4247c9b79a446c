//! The generated gRPC traits, implemented as thin adapters over the controller and node cores.
//! `observe` is where every call is timed, counted and logged, and where a [`CsiError`] becomes
//! a `tonic::Status` (through the one `From` impl in `error.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::controller::ControllerCore;
use crate::csi;
use crate::error::{CsiError, Result};
use crate::metrics::Metrics;
use crate::node::NodeCore;

async fn observe<T>(
    metrics: &Metrics,
    method: &'static str,
    volume: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let span = tracing::info_span!("csi", method, volume);
    let r = fut.instrument(span).await;
    let code = r.as_ref().map_or_else(CsiError::code, |_| Code::Ok);
    metrics.record(method, code, start.elapsed());
    match r {
        Ok(v) => {
            tracing::debug!(method, volume, took = ?start.elapsed(), "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            tracing::warn!(method, volume, code = ?code, error = %e, "failed");
            Err(e.into())
        }
    }
}

pub struct ControllerService {
    pub core: Arc<ControllerCore>,
    pub metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let name = r.name.clone();
        observe(&self.metrics, "CreateVolume", &name, self.core.create(r)).await
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "DeleteVolume", &id, async {
            self.core.delete(r).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        observe(&self.metrics, "ControllerPublishVolume", "", async {
            Err(CsiError::NotSupported(
                "ControllerPublishVolume (attachRequired: false)",
            ))
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        observe(&self.metrics, "ControllerUnpublishVolume", "", async {
            Err(CsiError::NotSupported(
                "ControllerUnpublishVolume (attachRequired: false)",
            ))
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(
            &self.metrics,
            "ValidateVolumeCapabilities",
            &id,
            self.core.validate(r),
        )
        .await
    }

    async fn list_volumes(
        &self,
        _req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        observe(&self.metrics, "ListVolumes", "", async {
            Err(CsiError::NotSupported("ListVolumes"))
        })
        .await
    }

    async fn get_capacity(
        &self,
        _req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        observe(&self.metrics, "GetCapacity", "", async {
            Err(CsiError::NotSupported("GetCapacity"))
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        observe(&self.metrics, "ControllerGetCapabilities", "", async {
            Ok(self.core.capabilities())
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        _req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        observe(&self.metrics, "ControllerExpandVolume", "", async {
            Err(CsiError::NotSupported(
                "ControllerExpandVolume (mirror volumes are read-only)",
            ))
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        _req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        observe(&self.metrics, "ControllerGetVolume", "", async {
            Err(CsiError::NotSupported("ControllerGetVolume"))
        })
        .await
    }
}

pub struct NodeService {
    pub core: Arc<NodeCore>,
    pub metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "NodeStageVolume", &id, async {
            self.core.stage(r).await?;
            Ok(csi::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "NodeUnstageVolume", &id, async {
            self.core.unstage(r).await?;
            Ok(csi::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "NodePublishVolume", &id, async {
            self.core.publish(r).await?;
            Ok(csi::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "NodeUnpublishVolume", &id, async {
            self.core.unpublish(r).await?;
            Ok(csi::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        let id = r.volume_id.clone();
        observe(&self.metrics, "NodeGetVolumeStats", &id, self.core.stats(r)).await
    }

    async fn node_expand_volume(
        &self,
        _req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        observe(&self.metrics, "NodeExpandVolume", "", async {
            Err(CsiError::NotSupported(
                "NodeExpandVolume (mirror volumes are read-only)",
            ))
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{Rpc, Type, rpc::Type as T};
        let cap = |t: T| csi::NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        observe(&self.metrics, "NodeGetCapabilities", "", async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: vec![
                    cap(T::StageUnstageVolume),
                    cap(T::GetVolumeStats),
                    cap(T::VolumeCondition),
                ],
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        observe(&self.metrics, "NodeGetInfo", "", async {
            Ok(self.core.info())
        })
        .await
    }
}
