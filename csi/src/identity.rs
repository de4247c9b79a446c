//! The Identity service: the driver's name and version, its plugin capabilities, and a cheap
//! Probe that fails only for local faults (no `/dev/fuse` on a node), never for a remote one.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;
use crate::config::Config;
use crate::csi::{self, plugin_capability};

pub struct Identity {
    config: Arc<Config>,
}

impl Identity {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
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
        // The same set for every instance of a version, whatever its role (spec).
        let _ = &self.config;
        let service = |t: plugin_capability::service::Type| csi::PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![service(plugin_capability::service::Type::ControllerService)],
        }))
    }

    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
