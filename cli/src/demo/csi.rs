//! The CSI half of the demo: the driver served on a temporary socket and called the way
//! Kubernetes calls it — CreateVolume as the external-provisioner does for a ReadOnlyMany claim
//! (one existing directory, one missing), then NodeStageVolume and NodePublishVolume as the
//! kubelet does, with its directory layout under a temporary kubelet root. A "pod" then reads the
//! published directory, a write to it fails read-only, and NodeUnpublish/NodeUnstage undo it all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use mirrorfs_csi::csi::controller_client::ControllerClient;
use mirrorfs_csi::csi::node_client::NodeClient;
use mirrorfs_csi::csi::{self, volume_capability};
use tonic::transport::Channel;

/// The driver on a temporary socket, and what the kubelet would have made for one volume.
pub struct Kubernetes {
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    kubelet_dir: PathBuf,
    /// The volume context CreateVolume returned (the kubelet passes it on).
    context: HashMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// (volume id, path) once staged, and once published.
    staged: Option<(String, PathBuf)>,
    published: Option<(String, PathBuf)>,
}

/// Fails early, with what to do, where the node path cannot work.
pub fn check_node_prerequisites() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the demo mounts a mirror volume through the CSI node path (FUSE and bind mounts), which needs root: run `sudo ./scripts/demo.sh`"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        anyhow::bail!(
            "the demo mounts a mirror volume with FUSE, but /dev/fuse does not exist: load the module (`modprobe fuse`) or, in a container, pass the device (`--device /dev/fuse`)"
        );
    }
    Ok(())
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::MultiNodeReaderOnly as i32,
        }),
    }
}

impl Kubernetes {
    /// Serves the driver (controller and node) on a socket in `dir`; FUSE mounts are
    /// `mirrorfs mount` processes of this executable.
    pub async fn start(dir: &Path) -> anyhow::Result<Kubernetes> {
        let socket = dir.join("csi/csi.sock");
        let endpoint = format!("unix://{}", socket.display());
        let kubelet_dir = dir.join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)?;
        let config = mirrorfs_csi::Config {
            endpoint: endpoint.clone(),
            role: mirrorfs_csi::Role::All,
            node_id: Some("demo-node".into()),
            region: None,
            kubelet_dir: kubelet_dir.clone(),
            state_dir: dir.join("csi-state"),
            path_wait: Duration::from_secs(2),
            max_lag: Duration::from_secs(300),
            metrics_addr: None,
            mount_binary: std::env::current_exe()
                .context("cannot find the running executable for `mirrorfs mount`")?,
            cache_root: None,
            cache_size: mirrorfs_api::size::DEFAULT_CACHE_SIZE,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mirrorfs_csi::serve(config, async {
                let _ = stopped.await;
            })
            .await
            .map_err(anyhow::Error::from)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match mirrorfs_csi::client::connect(&endpoint, Duration::from_secs(1)).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow::anyhow!("the CSI driver did not start: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        Ok(Kubernetes {
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            kubelet_dir,
            context: HashMap::new(),
            stop: Some(stop),
            task: Some(task),
            staged: None,
            published: None,
        })
    }

    /// CreateVolume for claim `pvc` of a StorageClass naming `volume` and `subdir`: the volume
    /// id, or the driver's message when the directory does not exist.
    pub async fn create_volume(
        &mut self,
        pvc: &str,
        volume: &str,
        meta_url: &str,
        subdir: &str,
        token: &str,
    ) -> Result<String, tonic::Status> {
        let parameters = HashMap::from([
            ("volume".to_owned(), volume.to_owned()),
            ("metaAddress".to_owned(), meta_url.to_owned()),
            ("subdir".to_owned(), subdir.to_owned()),
            ("csi.storage.k8s.io/pvc/name".to_owned(), pvc.to_owned()),
            (
                "csi.storage.k8s.io/pvc/namespace".to_owned(),
                "default".to_owned(),
            ),
            ("csi.storage.k8s.io/pv/name".to_owned(), format!("pv-{pvc}")),
        ]);
        let r = self
            .controller
            .create_volume(csi::CreateVolumeRequest {
                name: format!("pv-{pvc}"),
                volume_capabilities: vec![capability()],
                parameters,
                secrets: HashMap::from([("token".to_owned(), token.to_owned())]),
                ..Default::default()
            })
            .await?
            .into_inner();
        let v = r
            .volume
            .ok_or_else(|| tonic::Status::internal("CreateVolume answered without a volume"))?;
        self.context = v.volume_context;
        Ok(v.volume_id)
    }

    /// NodeStageVolume then NodePublishVolume (readonly=false, as the kubelet sends for a
    /// ReadOnlyMany claim) into a pod's volume directory; returns the pod's path.
    pub async fn stage_and_publish(
        &mut self,
        volume_id: &str,
        token: &str,
    ) -> anyhow::Result<PathBuf> {
        let key = blake3::hash(volume_id.as_bytes()).to_hex();
        let staging = self
            .kubelet_dir
            .join("plugins/kubernetes.io/csi")
            .join(mirrorfs_csi::DRIVER_NAME)
            .join(key.as_str())
            .join("globalmount");
        std::fs::create_dir_all(&staging)?;
        let secrets = HashMap::from([("token".to_owned(), token.to_owned())]);
        self.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume_id.into(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability()),
                secrets: secrets.clone(),
                volume_context: self.context.clone(),
                ..Default::default()
            })
            .await
            .context("NodeStageVolume")?;
        self.staged = Some((volume_id.to_owned(), staging.clone()));
        let pod = self
            .kubelet_dir
            .join("pods/6f1e9a52-demo-pod/volumes/kubernetes.io~csi")
            .join(volume_id);
        std::fs::create_dir_all(&pod)?;
        let target = pod.join("mount");
        self.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: volume_id.into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(capability()),
                readonly: false,
                secrets,
                volume_context: self.context.clone(),
                ..Default::default()
            })
            .await
            .context("NodePublishVolume")?;
        self.published = Some((volume_id.to_owned(), target.clone()));
        Ok(target)
    }

    /// NodeUnpublish, NodeUnstage (each if done) and the driver's shutdown.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some((id, target)) = self.published.take() {
            self.node
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: id,
                    target_path: target.display().to_string(),
                })
                .await
                .context("NodeUnpublishVolume")?;
        }
        if let Some((id, staging)) = self.staged.take() {
            self.node
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging.display().to_string(),
                })
                .await
                .context("NodeUnstageVolume")?;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// The `ro` flag of the mount at exactly `path`, from `/proc/self/mountinfo`.
pub fn mounted_read_only(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let table = mirrorfs_csi::mountinfo::parse(&text);
    mirrorfs_csi::mountinfo::top_at(&table, path).map(|m| m.read_only())
}
