//! The callers Kubernetes puts in front of a CSI driver, reduced to what they send:
//!
//! - [`Provisioner`]: external-provisioner with `--extra-create-metadata`. CreateVolume named
//!   after the PV (`pvc-<claim uid>`), the StorageClass parameters plus
//!   `csi.storage.k8s.io/pvc/name`, `pvc/namespace`, `pv/name`, one capability per access mode
//!   of the claim, the claim's size as `required_bytes`, the provisioner secret; the PV it
//!   writes keeps `volume_context` plus `storage.kubernetes.io/csiProvisionerIdentity` as its
//!   `volumeAttributes`. DeleteVolume with the PV's handle.
//! - [`Kubelet`]: kubelet's path layout under a kubelet root
//!   (`plugins/kubernetes.io/csi/<driver>/<sha256(volume handle)>/globalmount` for staging,
//!   `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount` for targets); it creates the staging
//!   directory and only the parent of a target, passes the PV's `volumeAttributes` as
//!   `volume_context`, the node-stage secret to NodeStage only, and `readonly=false` unless the
//!   pod sets `persistentVolumeClaim.readOnly` (a ReadOnlyMany claim alone does not).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mirrorfs_csi::csi::node_client::NodeClient;
use mirrorfs_csi::csi::volume_capability::access_mode::Mode;
use mirrorfs_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use mirrorfs_csi::csi::{self as pb, VolumeCapability};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// The driver name, as in the CSIDriver object.
pub const DRIVER: &str = "csi.mirrorfs.io";
/// The attribute external-provisioner adds to every PV it provisions.
pub const PROVISIONER_IDENTITY: &str = "storage.kubernetes.io/csiProvisionerIdentity";

/// A mount (filesystem) capability with `mode`, as kubelet and the provisioner send it for a
/// PV without `fsType` or mount options.
pub fn capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: Vec::new(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// Secrets with the contract's `token` key (and nothing else).
pub fn token_secret(token: &str) -> HashMap<String, String> {
    HashMap::from([("token".to_owned(), token.to_owned())])
}

/// A StorageClass: its parameters (reserved `csi.storage.k8s.io/*` keys already stripped, as
/// the provisioner does) and the provisioner and node-stage secrets it names.
#[derive(Clone, Debug, Default)]
pub struct StorageClass {
    pub parameters: HashMap<String, String>,
    pub provisioner_secrets: HashMap<String, String>,
    pub node_stage_secrets: HashMap<String, String>,
}

impl StorageClass {
    /// A class for mirror volume `volume` served at `meta`, with `token` in both secrets and
    /// `extra` parameters (`subdir`, `pathPattern`, `lenient`).
    pub fn mirror(volume: &str, meta: &str, token: &str, extra: &[(&str, &str)]) -> StorageClass {
        let mut parameters = HashMap::from([
            ("volume".to_owned(), volume.to_owned()),
            ("metaAddress".to_owned(), meta.to_owned()),
        ]);
        for (k, v) in extra {
            parameters.insert((*k).to_owned(), (*v).to_owned());
        }
        StorageClass {
            parameters,
            provisioner_secrets: token_secret(token),
            node_stage_secrets: token_secret(token),
        }
    }
}

/// A PersistentVolumeClaim.
#[derive(Clone, Debug)]
pub struct Claim {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub access_modes: Vec<Mode>,
    pub size_bytes: i64,
}

impl Claim {
    /// A ReadOnlyMany claim of 1 GiB.
    pub fn read_only_many(name: &str, namespace: &str, uid: &str) -> Claim {
        Claim {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            access_modes: vec![Mode::MultiNodeReaderOnly],
            size_bytes: 1 << 30,
        }
    }

    /// The PV name the provisioner gives it (`--volume-name-prefix pvc`).
    pub fn pv_name(&self) -> String {
        format!("pvc-{}", self.uid)
    }
}

/// A PersistentVolume as kubelet sees it.
#[derive(Clone, Debug)]
pub struct PersistentVolume {
    pub name: String,
    pub volume_handle: String,
    pub volume_attributes: HashMap<String, String>,
    pub access_modes: Vec<Mode>,
    pub node_stage_secrets: HashMap<String, String>,
    /// `nodePublishSecretRef` (none in the usual StorageClass).
    pub node_publish_secrets: HashMap<String, String>,
}

impl PersistentVolume {
    /// A statically provisioned PV (`volumeHandle` plus `volumeAttributes`).
    pub fn static_pv(
        name: &str,
        handle: &str,
        attributes: &[(&str, &str)],
        mode: Mode,
        node_stage_secrets: HashMap<String, String>,
    ) -> PersistentVolume {
        PersistentVolume {
            name: name.into(),
            volume_handle: handle.into(),
            volume_attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            access_modes: vec![mode],
            node_stage_secrets,
            node_publish_secrets: HashMap::new(),
        }
    }

    /// The capability kubelet sends for this PV (its first access mode).
    pub fn capability(&self) -> VolumeCapability {
        capability(self.access_modes.first().copied().unwrap_or(Mode::Unknown))
    }
}

/// The external-provisioner's side of CreateVolume/DeleteVolume.
pub struct Provisioner {
    /// The provisioner's identity string (added to every PV).
    pub identity: String,
}

impl Default for Provisioner {
    fn default() -> Self {
        Provisioner {
            identity: "1764000000000-8081-csi.mirrorfs.io".into(),
        }
    }
}

impl Provisioner {
    /// The CreateVolume request for `claim` in class `sc`.
    pub fn create_request(&self, sc: &StorageClass, claim: &Claim) -> pb::CreateVolumeRequest {
        let pv = claim.pv_name();
        let mut parameters = sc.parameters.clone();
        parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.name.clone());
        parameters.insert(
            "csi.storage.k8s.io/pvc/namespace".into(),
            claim.namespace.clone(),
        );
        parameters.insert("csi.storage.k8s.io/pv/name".into(), pv.clone());
        pb::CreateVolumeRequest {
            name: pv,
            capacity_range: Some(pb::CapacityRange {
                required_bytes: claim.size_bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: claim.access_modes.iter().map(|m| capability(*m)).collect(),
            parameters,
            secrets: sc.provisioner_secrets.clone(),
            ..Default::default()
        }
    }

    /// Calls CreateVolume for `claim` and builds the PV the provisioner would write.
    pub async fn provision(
        &self,
        controller: &mut pb::controller_client::ControllerClient<Channel>,
        sc: &StorageClass,
        claim: &Claim,
    ) -> Result<PersistentVolume, tonic::Status> {
        let r = controller
            .create_volume(self.create_request(sc, claim))
            .await?
            .into_inner();
        let v = r
            .volume
            .ok_or_else(|| tonic::Status::internal("CreateVolume answered without a volume"))?;
        Ok(self.pv_from(claim, sc, v))
    }

    /// The PV the provisioner writes from a CreateVolume answer.
    pub fn pv_from(&self, claim: &Claim, sc: &StorageClass, v: pb::Volume) -> PersistentVolume {
        let mut attributes = v.volume_context;
        attributes.insert(PROVISIONER_IDENTITY.into(), self.identity.clone());
        PersistentVolume {
            name: claim.pv_name(),
            volume_handle: v.volume_id,
            volume_attributes: attributes,
            access_modes: claim.access_modes.clone(),
            node_stage_secrets: sc.node_stage_secrets.clone(),
            node_publish_secrets: HashMap::new(),
        }
    }

    /// DeleteVolume for `pv` (reclaim policy Delete).
    pub fn delete_request(
        &self,
        sc: &StorageClass,
        pv: &PersistentVolume,
    ) -> pb::DeleteVolumeRequest {
        pb::DeleteVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            secrets: sc.provisioner_secrets.clone(),
        }
    }
}

/// Kubelet's side of the node calls, under its root directory.
pub struct Kubelet {
    pub root: PathBuf,
}

impl Kubelet {
    /// A kubelet root at `root` (created, with `plugins/` and `pods/`).
    pub fn new(root: &Path) -> Kubelet {
        for d in ["plugins", "pods", "plugins_registry"] {
            std::fs::create_dir_all(root.join(d)).expect("create the kubelet root");
        }
        Kubelet {
            root: root.to_owned(),
        }
    }

    /// `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`.
    pub fn staging_path(&self, handle: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(handle.as_bytes()));
        self.root
            .join("plugins/kubernetes.io/csi")
            .join(DRIVER)
            .join(digest)
            .join("globalmount")
    }

    /// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`.
    pub fn target_path(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.root
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    }

    /// The NodeStage request kubelet sends for `pv`.
    pub fn stage_request(&self, pv: &PersistentVolume) -> pb::NodeStageVolumeRequest {
        pb::NodeStageVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            publish_context: HashMap::new(),
            staging_target_path: self.staging_path(&pv.volume_handle).display().to_string(),
            volume_capability: Some(pv.capability()),
            secrets: pv.node_stage_secrets.clone(),
            volume_context: pv.volume_attributes.clone(),
        }
    }

    /// The NodePublish request kubelet sends for `pv` in pod `pod_uid` (`readonly` as the pod's
    /// `persistentVolumeClaim.readOnly`).
    pub fn publish_request(
        &self,
        pv: &PersistentVolume,
        pod_uid: &str,
        readonly: bool,
    ) -> pb::NodePublishVolumeRequest {
        pb::NodePublishVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            publish_context: HashMap::new(),
            staging_target_path: self.staging_path(&pv.volume_handle).display().to_string(),
            target_path: self.target_path(pod_uid, &pv.name).display().to_string(),
            volume_capability: Some(pv.capability()),
            readonly,
            secrets: pv.node_publish_secrets.clone(),
            volume_context: pv.volume_attributes.clone(),
        }
    }

    /// MountDevice: creates the staging directory (and `vol_data.json` beside it), NodeStage.
    pub async fn stage(
        &self,
        node: &mut NodeClient<Channel>,
        pv: &PersistentVolume,
    ) -> Result<PathBuf, tonic::Status> {
        let staging = self.staging_path(&pv.volume_handle);
        std::fs::create_dir_all(&staging).expect("create the staging dir");
        self.write_vol_data(staging.parent().expect("parent"), pv);
        node.node_stage_volume(self.stage_request(pv)).await?;
        Ok(staging)
    }

    /// SetUp: creates only the target's parent (and `vol_data.json` there), NodePublish with
    /// `readonly=false` (a ReadOnlyMany claim without `readOnly: true` in the pod).
    pub async fn publish(
        &self,
        node: &mut NodeClient<Channel>,
        pv: &PersistentVolume,
        pod_uid: &str,
    ) -> Result<PathBuf, tonic::Status> {
        let target = self.target_path(pod_uid, &pv.name);
        let parent = target.parent().expect("parent");
        std::fs::create_dir_all(parent).expect("create the target's parent");
        self.write_vol_data(parent, pv);
        node.node_publish_volume(self.publish_request(pv, pod_uid, false))
            .await?;
        Ok(target)
    }

    /// TearDown: NodeUnpublish.
    pub async fn unpublish(
        &self,
        node: &mut NodeClient<Channel>,
        pv: &PersistentVolume,
        pod_uid: &str,
    ) -> Result<(), tonic::Status> {
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            target_path: self.target_path(pod_uid, &pv.name).display().to_string(),
        })
        .await?;
        Ok(())
    }

    /// UnmountDevice: NodeUnstage.
    pub async fn unstage(
        &self,
        node: &mut NodeClient<Channel>,
        pv: &PersistentVolume,
    ) -> Result<(), tonic::Status> {
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            staging_target_path: self.staging_path(&pv.volume_handle).display().to_string(),
        })
        .await?;
        Ok(())
    }

    fn write_vol_data(&self, dir: &Path, pv: &PersistentVolume) {
        let data = serde_json::json!({
            "driverName": DRIVER,
            "volumeHandle": pv.volume_handle,
            "specVolID": pv.name,
        });
        std::fs::write(dir.join("vol_data.json"), data.to_string()).expect("write vol_data.json");
    }
}
