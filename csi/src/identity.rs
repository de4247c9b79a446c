//! The Identity service: the driver's name and version, its plugin capabilities, and a cheap
//! Probe that fails only for local faults (no `/dev/fuse` or mount binary on a node), never for
//! a remote one; it answers "not ready" while a restarted node plugin repairs its mounts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;
use crate::config::Config;
use crate::csi::{self, plugin_capability};
use crate::error::CsiError;
use crate::mounter::Mounter;

/// What Probe and `/healthz` look at.
pub struct Health {
    pub config: Arc<Config>,
    pub mounter: Arc<dyn Mounter>,
    /// True while a restarted node plugin repairs its staged volumes.
    pub recovering: AtomicBool,
}

impl Health {
    /// Local faults only.
    pub fn check(&self) -> Result<(), CsiError> {
        if self.config.role.node() {
            self.mounter.check_fuse().map_err(CsiError::NotReady)?;
        }
        Ok(())
    }
}

pub struct Identity {
    pub health: Arc<Health>,
}

#[tonic::async_trait]
impl csi::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        let service = |t: Type| csi::PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        // The same for every instance of a version whatever its role; topology only when the
        // deployment sets a region (controller and nodes alike).
        let mut capabilities = vec![service(Type::ControllerService)];
        if self.health.config.region.is_some() {
            capabilities.push(service(Type::VolumeAccessibilityConstraints));
        }
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        self.health.check()?;
        let ready = !self.health.recovering.load(Ordering::SeqCst);
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}
