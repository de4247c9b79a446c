//! The Controller service: CreateVolume maps a claim onto an existing directory of a mirror
//! volume (creating nothing, failing fast with a message naming what is missing), DeleteVolume
//! drops only bookkeeping, ValidateVolumeCapabilities answers per spec.

use std::sync::Arc;

use crate::capability::{self, Refusal};
use crate::config::Config;
use crate::csi;
use crate::error::{CsiError, Result};
use crate::locks::Locks;
use crate::mirror::{self, MirrorView};
use crate::params::{self, Secrets, VolumeSpec};
use crate::state::{ClaimRecord, Store};
use crate::volume_id;

pub struct ControllerCore {
    config: Arc<Config>,
    mirror: Arc<dyn MirrorView>,
    store: Store,
    locks: Locks,
}

/// CSI's banned characters in a CreateVolume name: control characters other than tab, LF, CR.
fn bad_name_char(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

impl ControllerCore {
    pub fn new(config: Arc<Config>, mirror: Arc<dyn MirrorView>, store: Store) -> Self {
        Self {
            config,
            mirror,
            store,
            locks: Locks::default(),
        }
    }

    fn volume(&self, id: String, spec: &VolumeSpec) -> csi::Volume {
        csi::Volume {
            capacity_bytes: 0,
            volume_id: id,
            volume_context: spec.to_context(),
            content_source: None,
            accessible_topology: self
                .config
                .region
                .iter()
                .map(|r| csi::Topology {
                    segments: [(crate::TOPOLOGY_REGION_KEY.to_owned(), r.clone())].into(),
                })
                .collect(),
        }
    }

    pub async fn create(&self, r: csi::CreateVolumeRequest) -> Result<csi::CreateVolumeResponse> {
        let name = r.name.as_str();
        if name.is_empty() {
            return Err(CsiError::MissingField("name"));
        }
        if name.len() > 128 || name.chars().any(bad_name_char) {
            return Err(CsiError::invalid(
                "name",
                "must be at most 128 bytes without control characters",
            ));
        }
        let spec = params::from_parameters(&r.parameters)?;
        capability::for_controller(&r.volume_capabilities, &spec.volume, spec.lenient)?;
        if r.volume_content_source.is_some() {
            return Err(CsiError::invalid(
                "volume_content_source",
                "mirror volumes expose existing directories and cannot be created from a snapshot or another volume",
            ));
        }
        if !r.mutable_parameters.is_empty() {
            return Err(CsiError::invalid(
                "mutable_parameters",
                "not supported: mirror volumes have no modifiable parameters",
            ));
        }
        if let Some(c) = &r.capacity_range
            && (c.required_bytes < 0 || c.limit_bytes < 0)
        {
            return Err(CsiError::invalid("capacity_range", "must not be negative"));
        }
        let secrets = Secrets::parse(&r.secrets, "provisioner")?;
        let id = volume_id::for_claim(name, &spec);
        let _guard = self.locks.lock(name).await?;
        let known = self
            .store
            .load_claim(name)
            .map_err(|e| CsiError::Internal(format!("reading the record of {name:?}: {e}")))?;
        if let Some(c) = known {
            if c.volume_id == id {
                return Ok(csi::CreateVolumeResponse {
                    volume: Some(self.volume(id, &spec)),
                });
            }
            let old = c.spec();
            return Err(CsiError::Conflict(format!(
                "volume {name:?} already exists for directory {} of mirror volume {:?} ({}); a claim's parameters cannot change: delete the claim first",
                old.subdir, old.volume, old.meta_address
            )));
        }
        mirror::locate(
            &*self.mirror,
            &spec,
            &secrets.token,
            name,
            self.config.path_wait,
        )
        .await?;
        self.store
            .save_claim(&ClaimRecord {
                name: name.to_owned(),
                volume_id: id.clone(),
                volume: spec.volume.clone(),
                meta_address: spec.meta_address.clone(),
                subdir: spec.subdir.as_str().to_owned(),
                lenient: spec.lenient,
            })
            .map_err(|e| {
                CsiError::Internal(format!(
                    "writing the record of {name:?} in {}: {e}",
                    self.config.state_dir.display()
                ))
            })?;
        tracing::info!(name, volume_id = %id, volume = %spec.volume, subdir = %spec.subdir, "volume created (nothing was written to the mirror)");
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.volume(id, &spec)),
        })
    }

    pub async fn delete(&self, r: csi::DeleteVolumeRequest) -> Result<()> {
        let id = volume_id::check(&r.volume_id)?;
        let _guard = self.locks.lock(id).await?;
        if let Some(c) = self.store.claim_by_id(id) {
            self.store.remove_claim(&c.name).map_err(|e| {
                CsiError::Internal(format!("removing the record of volume {id:?}: {e}"))
            })?;
            tracing::info!(
                volume_id = id,
                "volume deleted (the mirror's data is untouched)"
            );
        }
        Ok(())
    }

    pub async fn validate(
        &self,
        r: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        let id = volume_id::check(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(CsiError::MissingField("volume_capabilities"));
        }
        let spec = if r.volume_context.is_empty() {
            match self.store.claim_by_id(id) {
                Some(c) => c.spec(),
                None if volume_id::is_generated(id) => {
                    return Err(CsiError::UnknownVolume(format!(
                        "volume {id:?} does not exist (it was deleted, or created by another controller state directory)"
                    )));
                }
                None => {
                    return Err(CsiError::UnknownVolume(format!(
                        "volume {id:?} is not a mirrorfs volume: give its volume context (volumeAttributes)"
                    )));
                }
            }
        } else {
            VolumeSpec::from_context(&r.volume_context)?
        };
        for cap in &r.volume_capabilities {
            if let Err(Refusal::Invalid(m) | Refusal::Writer(m)) =
                capability::check(cap, id, spec.lenient)
            {
                return Ok(csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: m,
                });
            }
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context,
                volume_capabilities: r.volume_capabilities,
                parameters: r.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        })
    }

    pub fn capabilities(&self) -> csi::ControllerGetCapabilitiesResponse {
        use csi::controller_service_capability::{Rpc, Type, rpc::Type as T};
        csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![csi::ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: T::CreateDeleteVolume as i32,
                })),
            }],
        }
    }
}
