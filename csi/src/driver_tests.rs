//! The driver served on a temporary Unix socket with the fake mounter and the fake mirror, and
//! driven as kubelet and external-provisioner do, through the generated clients: every RPC, the
//! codes and messages of the spec's error table, and each "bad input" case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use crate::capability::tests::cap;
use crate::config::{Config, Role};
use crate::csi::controller_client::ControllerClient;
use crate::csi::identity_client::IdentityClient;
use crate::csi::node_client::NodeClient;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::{self, VolumeCapability};
use crate::mirror::Follow;
use crate::mirror::fake::FakeMirror;
use crate::mounter::fake::FakeMounter;
use crate::mountinfo;
use crate::server::Driver;

const TOKEN: &str = "vol-token";

struct Harness {
    _dir: tempfile::TempDir,
    kubelet: PathBuf,
    state: PathBuf,
    mounter: Arc<FakeMounter>,
    mirror: Arc<FakeMirror>,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    region: Option<String>,
    cache_root: Option<PathBuf>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn config(
    kubelet: &Path,
    state: &Path,
    region: Option<String>,
    path_wait: Duration,
    cache_root: Option<PathBuf>,
) -> Config {
    Config {
        endpoint: "unix:///unused".into(),
        role: Role::All,
        node_id: Some("node-a".into()),
        region,
        kubelet_dir: kubelet.to_owned(),
        state_dir: state.to_owned(),
        path_wait,
        max_lag: Duration::from_secs(60),
        metrics_addr: None,
        mount_binary: "/nonexistent/mirrorfs".into(),
        cache_root,
        cache_size: mirrorfs_api::size::DEFAULT_CACHE_SIZE,
    }
}

async fn start(
    dir: &Path,
    mounter: Arc<FakeMounter>,
    mirror: Arc<FakeMirror>,
    region: Option<String>,
    path_wait: Duration,
    cache_root: Option<PathBuf>,
) -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let kubelet = dir.join("kubelet");
    let state = dir.join("state");
    let driver = Driver::new(
        config(&kubelet, &state, region, path_wait, cache_root),
        mounter,
        mirror,
    )
    .unwrap_or_else(|e| panic!("driver: {e}"));
    let sock = dir.join(format!("csi-{}.sock", rand_suffix()));
    let listener = crate::server::bind(&sock).unwrap_or_else(|e| panic!("bind: {e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(driver.serve_on(listener, async {
        let _ = rx.await;
    }));
    let endpoint = format!("unix://{}", sock.display());
    let channel = crate::client::connect(&endpoint, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    (channel, tx)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl Harness {
    async fn new() -> Self {
        Self::with(None, Duration::from_millis(600)).await
    }

    async fn with(region: Option<String>, path_wait: Duration) -> Self {
        Self::with_cache(region, path_wait, false).await
    }

    /// With `cache`, a `--cache-root` (a real directory, as the startup check wants).
    async fn with_cache(region: Option<String>, path_wait: Duration, cache: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache_root = cache.then(|| dir.path().join("cache"));
        if let Some(c) = &cache_root {
            std::fs::create_dir(c).unwrap_or_else(|e| panic!("{e}"));
        }
        let kubelet = dir.path().join("kubelet");
        let state = dir.path().join("state");
        let mounter = Arc::new(FakeMounter::new());
        for p in [
            kubelet.clone(),
            kubelet.join("plugins"),
            kubelet.join("pods"),
            kubelet.join("pods/p1"),
            kubelet.join("pods/p2"),
        ] {
            mounter.add_host_dir(&p);
        }
        let mirror = Arc::new(FakeMirror::new(TOKEN));
        for (v, p) in [("data", "team/a"), ("data", "team/b/deep")] {
            mirror.add_dir(v, p);
            mounter.add_volume_dir(v, p);
        }
        mirror.add_file("data", "team/file");
        mounter.add_volume_entry("data", "team/file", Some(crate::mirror::Kind::File));
        mirror.add_symlink("data", "team/link");
        mounter.add_volume_entry("data", "team/link", Some(crate::mirror::Kind::Symlink));
        mirror.set_follow(Follow::Mirror {
            lag_revisions: 0,
            lag_seconds: 0.5,
            source_reachable: true,
        });
        let (channel, stop) = start(
            dir.path(),
            mounter.clone(),
            mirror.clone(),
            region.clone(),
            path_wait,
            cache_root.clone(),
        )
        .await;
        Self {
            kubelet,
            state,
            _dir: dir,
            mounter,
            mirror,
            channel,
            stop: Some(stop),
            region,
            cache_root,
        }
    }

    /// Stops the driver and starts a new one on the same state directory and "host".
    async fn restart(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let dir = self._dir.path().to_owned();
        let (channel, stop) = start(
            &dir,
            self.mounter.clone(),
            self.mirror.clone(),
            self.region.clone(),
            Duration::from_millis(600),
            self.cache_root.clone(),
        )
        .await;
        self.channel = channel;
        self.stop = Some(stop);
    }

    fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }
    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }
    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    fn staging(&self, id: &str) -> PathBuf {
        let p = self
            .kubelet
            .join("plugins/kubernetes.io/csi/csi.mirrorfs.io")
            .join(blake3::hash(id.as_bytes()).to_hex().as_str());
        self.mounter
            .add_host_dir(p.parent().unwrap_or(Path::new("/")));
        self.mounter.add_host_dir(&p);
        p.join("globalmount")
    }

    fn target(&self, pod: &str) -> PathBuf {
        let p = self.kubelet.join("pods").join(pod).join("volumes");
        self.mounter.add_host_dir(&p);
        p.join("mount")
    }

    fn stage_req(&self, id: &str, subdir: &str) -> csi::NodeStageVolumeRequest {
        csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            publish_context: HashMap::new(),
            staging_target_path: self.staging(id).display().to_string(),
            volume_capability: Some(cap(Mode::MultiNodeReaderOnly, &[])),
            secrets: secrets(),
            volume_context: context(subdir),
        }
    }

    fn publish_req(&self, id: &str, subdir: &str, pod: &str) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            publish_context: HashMap::new(),
            staging_target_path: self.staging(id).display().to_string(),
            target_path: self.target(pod).display().to_string(),
            volume_capability: Some(cap(Mode::MultiNodeReaderOnly, &[])),
            readonly: false,
            secrets: HashMap::new(),
            volume_context: context(subdir),
        }
    }

    async fn stage_and_publish(&self, id: &str, subdir: &str, pod: &str) {
        let r = self
            .node()
            .node_stage_volume(self.stage_req(id, subdir))
            .await;
        assert!(r.is_ok(), "stage: {r:?}");
        let r = self
            .node()
            .node_publish_volume(self.publish_req(id, subdir, pod))
            .await;
        assert!(r.is_ok(), "publish: {r:?}");
    }
}

fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn secrets() -> HashMap<String, String> {
    map(&[("token", TOKEN)])
}

fn context(subdir: &str) -> HashMap<String, String> {
    let mut m = map(&[("volume", "data"), ("metaAddress", "http://meta:7400")]);
    if !subdir.is_empty() {
        m.insert("subdir".into(), subdir.into());
    }
    m
}

fn params(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m = map(&[("volume", "data"), ("metaAddress", "http://meta:7400")]);
    m.extend(map(extra));
    m
}

fn create_req(name: &str, extra: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: None,
        volume_capabilities: vec![cap(Mode::MultiNodeReaderOnly, &[])],
        parameters: params(extra),
        secrets: secrets(),
        volume_content_source: None,
        accessibility_requirements: None,
        mutable_parameters: HashMap::new(),
    }
}

/// The code and message of a failed call (panics if it succeeded).
fn failure<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("unexpectedly succeeded: {v:?}"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

fn assert_fails<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needles: &[&str],
) {
    let (c, m) = failure(r);
    assert_eq!(c, code, "{m}");
    for n in needles {
        assert!(m.contains(n), "{n:?} not in {m:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn identity_names_the_driver_and_probes_local_faults_only() {
    let h = Harness::with(Some("eu-west".into()), Duration::ZERO).await;
    let info = h
        .identity()
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .map(|r| r.into_inner());
    let info = info.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.name, "csi.mirrorfs.io");
    assert!(!info.vendor_version.is_empty());
    let caps = h
        .identity()
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .map(|r| r.into_inner().capabilities.len());
    assert_eq!(caps.ok(), Some(2), "controller service + topology");
    // The mirror is "down": Probe does not care.
    h.mirror.set_follow(Follow::Unknown("unreachable".into()));
    let p = h.identity().probe(csi::ProbeRequest {}).await;
    assert!(p.is_ok(), "{p:?}");
    h.mounter.remove_dev_fuse();
    assert_fails(
        h.identity().probe(csi::ProbeRequest {}).await,
        Code::FailedPrecondition,
        &["/dev/fuse"],
    );
    let info = h.node().node_get_info(csi::NodeGetInfoRequest {}).await;
    let info = info
        .map(|r| r.into_inner())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.node_id, "node-a");
    assert_eq!(
        info.accessible_topology
            .map(|t| t.segments.get("topology.csi.mirrorfs.io/region").cloned()),
        Some(Some("eu-west".into()))
    );
    let caps = h
        .node()
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .map(|r| r.into_inner().capabilities.len());
    assert_eq!(caps.ok(), Some(3));
}

// ---------------------------------------------------------------------------------------------
// Controller
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_volume_maps_an_existing_directory_idempotently() {
    let h = Harness::new().await;
    let deep = "team/b/deep";
    let r = h
        .controller()
        .create_volume(create_req("pvc-1", &[("subdir", deep)]))
        .await
        .map(|r| r.into_inner().volume.unwrap_or_default());
    let v = r.unwrap_or_else(|e| panic!("{e}"));
    assert!(v.volume_id.len() <= 128 && v.volume_id.starts_with("mfs1-"));
    assert_eq!(
        v.volume_context.get("subdir").map(String::as_str),
        Some(deep)
    );
    assert_eq!(
        v.volume_context.get("volume").map(String::as_str),
        Some("data")
    );
    assert!(!v.volume_context.values().any(|x| x.contains(TOKEN)));
    let again = h
        .controller()
        .create_volume(create_req("pvc-1", &[("subdir", deep)]))
        .await
        .map(|r| r.into_inner().volume.unwrap_or_default().volume_id);
    assert_eq!(again.ok(), Some(v.volume_id.clone()));
    assert_fails(
        h.controller()
            .create_volume(create_req("pvc-1", &[("subdir", "team/a")]))
            .await,
        Code::AlreadyExists,
        &["\"pvc-1\" already exists", "/team/b/deep"],
    );
    // Templated from the claim.
    let r = h
        .controller()
        .create_volume(create_req(
            "pvc-2",
            &[
                (
                    "pathPattern",
                    "${pvc.metadata.namespace}/${pvc.metadata.name}",
                ),
                ("csi.storage.k8s.io/pvc/name", "a"),
                ("csi.storage.k8s.io/pvc/namespace", "team"),
                ("csi.storage.k8s.io/pv/name", "pvc-2"),
            ],
        ))
        .await
        .map(|r| r.into_inner().volume.unwrap_or_default().volume_context);
    assert_eq!(
        r.ok().and_then(|c| c.get("subdir").cloned()),
        Some("team/a".into())
    );
    // Delete drops bookkeeping only; unknown and garbled ids are fine.
    for id in [
        v.volume_id.as_str(),
        v.volume_id.as_str(),
        "garbage",
        "mfs1-00",
    ] {
        let r = h
            .controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.into(),
                secrets: HashMap::new(),
            })
            .await;
        assert!(r.is_ok(), "{id}: {r:?}");
    }
    assert_fails(
        h.controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: String::new(),
                secrets: HashMap::new(),
            })
            .await,
        Code::InvalidArgument,
        &["volume_id is required"],
    );
    assert_fails(
        h.controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: "x".repeat(129),
                secrets: HashMap::new(),
            })
            .await,
        Code::InvalidArgument,
        &["at most 128"],
    );
}

#[tokio::test]
async fn create_volume_fails_fast_with_a_message_naming_what_is_missing() {
    let h = Harness::new().await;
    assert_fails(
        h.controller()
            .create_volume(create_req("pvc-9", &[("subdir", "team/x/y")]))
            .await,
        Code::NotFound,
        &[
            "volume \"pvc-9\"",
            "directory \"/team/x/y\" does not exist in mirror volume \"data\" (http://meta:7400)",
            "\"/team\" has no entry \"x\"",
            "at mirror revision 42",
            "mirror lag 0 revisions",
            "the source does not have it either",
            "never creates directories",
        ],
    );
    assert_fails(
        h.controller()
            .create_volume(create_req("pvc-9", &[("subdir", "team/file")]))
            .await,
        Code::FailedPrecondition,
        &["\"/team/file\"", "is a file, not a directory"],
    );
    assert_fails(
        h.controller()
            .create_volume(create_req("pvc-9", &[("subdir", "team/link")]))
            .await,
        Code::FailedPrecondition,
        &["symbolic link"],
    );
    // A lagging mirror is waited for (bounded), then named.
    h.mirror.set_follow(Follow::Mirror {
        lag_revisions: 7,
        lag_seconds: 2.0,
        source_reachable: true,
    });
    h.mirror
        .add_dir_after("data", "team/late", h.mirror.lookups() + 2);
    let r = h
        .controller()
        .create_volume(create_req("pvc-late", &[("subdir", "team/late")]))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_fails(
        h.controller()
            .create_volume(create_req("pvc-10", &[("subdir", "team/never")]))
            .await,
        Code::NotFound,
        &["mirror lag 7 revisions (2.0 s), so the source may have it (waited"],
    );
}

#[tokio::test]
async fn create_volume_bad_input_is_invalid_argument() {
    let h = Harness::new().await;
    let mut c = h.controller();
    let cases: Vec<(csi::CreateVolumeRequest, &str)> = vec![
        (create_req("", &[]), "name is required"),
        (
            csi::CreateVolumeRequest {
                volume_capabilities: vec![],
                ..create_req("n", &[])
            },
            "volume_capabilities is required",
        ),
        (
            csi::CreateVolumeRequest {
                parameters: map(&[("metaAddress", "http://m:1")]),
                ..create_req("n", &[])
            },
            "parameters volume: is required",
        ),
        (
            csi::CreateVolumeRequest {
                parameters: map(&[("volume", "data")]),
                ..create_req("n", &[])
            },
            "metaAddress: is required",
        ),
        (
            csi::CreateVolumeRequest {
                secrets: HashMap::new(),
                ..create_req("n", &[])
            },
            "provisioner secret: has no \"token\"",
        ),
        (
            create_req("n", &[("color", "blue")]),
            "unknown StorageClass parameter \"color\"",
        ),
        (create_req("n", &[("subdir", "../etc")]), "\"..\" component"),
        (create_req("n", &[("subdir", "/team/a")]), "is absolute"),
        (create_req("n", &[("subdir", "team\0a")]), "NUL"),
        (
            create_req("n", &[("subdir", &"x/".repeat(2100))]),
            "4096 bytes",
        ),
        (
            create_req("n", &[("pathPattern", "${pvc.metadata.uid}")]),
            "unknown variable",
        ),
        (
            create_req("n", &[("pathPattern", "${pvc.metadata.name")]),
            "unterminated",
        ),
        (
            create_req("n", &[("pathPattern", "a/${pvc.metadata.name}")]),
            "--extra-create-metadata",
        ),
        (create_req("n", &[("lenient", "maybe")]), "\"maybe\""),
        (create_req(&"n".repeat(129), &[]), "at most 128 bytes"),
        (
            csi::CreateVolumeRequest {
                volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter, &[])],
                ..create_req("n", &[])
            },
            "request ReadOnlyMany",
        ),
        (
            csi::CreateVolumeRequest {
                volume_capabilities: vec![VolumeCapability {
                    access_type: Some(csi::volume_capability::AccessType::Block(
                        csi::volume_capability::BlockVolume {},
                    )),
                    access_mode: Some(csi::volume_capability::AccessMode {
                        mode: Mode::MultiNodeReaderOnly as i32,
                    }),
                }],
                ..create_req("n", &[])
            },
            "raw block access is not supported",
        ),
        (
            csi::CreateVolumeRequest {
                volume_content_source: Some(csi::VolumeContentSource { r#type: None }),
                ..create_req("n", &[])
            },
            "cannot be created from a snapshot",
        ),
    ];
    for (req, needle) in cases {
        let r = c.create_volume(req).await;
        assert_fails(r, Code::InvalidArgument, &[needle]);
    }
    // Lenient accepts writer modes (the node still mounts read-only).
    let r = c
        .create_volume(csi::CreateVolumeRequest {
            volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter, &[])],
            ..create_req("n-lenient", &[("lenient", "true"), ("subdir", "team/a")])
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    // Wrong token.
    let mut req = create_req("n-auth", &[("subdir", "team/a")]);
    req.secrets = map(&[("token", "wrong")]);
    assert_fails(
        c.create_volume(req).await,
        Code::Unauthenticated,
        &["refused the token"],
    );
    // Not served.
    assert_fails(
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: String::new(),
        })
        .await,
        Code::Unimplemented,
        &[],
    );
}

#[tokio::test]
async fn validate_volume_capabilities_follows_the_spec() {
    let h = Harness::new().await;
    let mut c = h.controller();
    let req = |id: &str, ctx: HashMap<String, String>, mode: Mode| {
        csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_context: ctx,
            volume_capabilities: vec![cap(mode, &[])],
            parameters: HashMap::new(),
            secrets: HashMap::new(),
            mutable_parameters: HashMap::new(),
        }
    };
    assert_fails(
        c.validate_volume_capabilities(req("mfs1-nope", HashMap::new(), Mode::MultiNodeReaderOnly))
            .await,
        Code::NotFound,
        &["mfs1-nope"],
    );
    let ok = c
        .validate_volume_capabilities(req(
            "static-1",
            context("team/a"),
            Mode::MultiNodeReaderOnly,
        ))
        .await
        .map(|r| r.into_inner());
    assert!(ok.map(|r| r.confirmed.is_some()).unwrap_or(false));
    let writer = c
        .validate_volume_capabilities(req("static-1", context("team/a"), Mode::SingleNodeWriter))
        .await
        .map(|r| r.into_inner());
    let writer = writer.unwrap_or_else(|e| panic!("{e}"));
    assert!(writer.confirmed.is_none());
    assert!(
        writer.message.contains("ReadOnlyMany"),
        "{}",
        writer.message
    );
    assert_fails(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![],
            ..req("static-1", context(""), Mode::MultiNodeReaderOnly)
        })
        .await,
        Code::InvalidArgument,
        &["volume_capabilities is required"],
    );
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stage_publish_unpublish_unstage_cycle_is_read_only_and_idempotent() {
    let h = Harness::new().await;
    let id = "static-pv-1";
    h.stage_and_publish(id, "team/b", "p1").await;
    let staging = h.staging(id);
    let target = h.target("p1");
    let starts = h.mounter.fuse_starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].volume, "data");
    assert_eq!(starts[0].meta_address, "http://meta:7400");
    assert_eq!(starts[0].mount_point, staging);
    assert_eq!(starts[0].secrets.token, TOKEN);
    assert!(starts[0].log_file.starts_with(&h.state));
    let table = h.mounter.table();
    let bind = mountinfo::top_at(&table, &target).cloned();
    let bind = bind.unwrap_or_else(|| panic!("target not mounted"));
    assert!(bind.read_only());
    assert_eq!(bind.root, PathBuf::from("/team/b"));
    // Repeats change nothing.
    h.stage_and_publish(id, "team/b", "p1").await;
    let table = h.mounter.table();
    assert_eq!(mountinfo::count_at(&table, &target), 1);
    assert_eq!(mountinfo::count_at(&table, &staging), 1);
    assert_eq!(h.mounter.fuse_starts().len(), 1);
    // Stats of the published path.
    let stats = h
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.usage.len(), 2);
    let cond = stats.volume_condition.unwrap_or_default();
    assert!(!cond.abnormal, "{}", cond.message);
    // Unpublish twice, unstage twice.
    for _ in 0..2 {
        let r = h
            .node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert!(mountinfo::top_at(&h.mounter.table(), &target).is_none());
        assert!(!h.mounter.dir_exists(&target));
    }
    for _ in 0..2 {
        let r = h
            .node()
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert!(mountinfo::top_at(&h.mounter.table(), &staging).is_none());
    }
}

#[tokio::test]
async fn publish_refuses_missing_and_non_directories_and_foreign_targets() {
    let h = Harness::new().await;
    let id = "pv-root";
    let r = h.node().node_stage_volume(h.stage_req(id, "")).await;
    assert!(r.is_ok(), "{r:?}");
    // The context of one volume is fixed; other directories are other volumes.
    let stage_other = |sub: &str| {
        let mut r = h.stage_req(&format!("pv-{sub}"), sub);
        r.volume_id = format!("pv-{}", sub.replace('/', "-"));
        r.staging_target_path = h.staging(&r.volume_id).display().to_string();
        r
    };
    // Stage checks the directory exists in the mirror.
    assert_fails(
        h.node().node_stage_volume(stage_other("team/gone")).await,
        Code::NotFound,
        &[
            "\"/team/gone\" does not exist",
            "\"/team\" has no entry \"gone\"",
        ],
    );
    assert_fails(
        h.node().node_stage_volume(stage_other("team/file")).await,
        Code::FailedPrecondition,
        &["is a file, not a directory"],
    );
    // Present in the mirror metadata but not (yet) on this node's mount: publish waits up to
    // --path-wait, then fails naming the path.
    h.mirror.add_dir("data", "team/meta-only");
    let mut r = h.stage_req("pv-meta-only", "team/meta-only");
    r.staging_target_path = h.staging("pv-meta-only").display().to_string();
    assert!(h.node().node_stage_volume(r).await.is_ok());
    assert_fails(
        h.node()
            .node_publish_volume(h.publish_req("pv-meta-only", "team/meta-only", "p1"))
            .await,
        Code::NotFound,
        &["\"/team/meta-only\"", "not on this node's mount"],
    );
    assert!(
        !h.mounter.dir_exists(&h.target("p1"))
            || mountinfo::top_at(&h.mounter.table(), &h.target("p1")).is_none()
    );
    // A symlink on the node's mount is never followed.
    h.mirror.add_dir("data", "team/sneaky");
    h.mounter
        .add_volume_entry("data", "team/sneaky", Some(crate::mirror::Kind::Symlink));
    let mut r = h.stage_req("pv-sneaky", "team/sneaky");
    r.staging_target_path = h.staging("pv-sneaky").display().to_string();
    assert!(h.node().node_stage_volume(r).await.is_ok());
    assert_fails(
        h.node()
            .node_publish_volume(h.publish_req("pv-sneaky", "team/sneaky", "p1"))
            .await,
        Code::FailedPrecondition,
        &["symbolic link"],
    );
    // A target that is a mount of something else.
    let t = h.target("p2");
    h.mounter.mount_foreign(&t, "tmpfs");
    assert_fails(
        h.node()
            .node_publish_volume(h.publish_req(id, "", "p2"))
            .await,
        Code::FailedPrecondition,
        &["already a mount of elsewhere (tmpfs)"],
    );
}

#[tokio::test]
async fn publish_conflicts_and_single_node_modes() {
    let h = Harness::new().await;
    let id = "pv-1";
    h.stage_and_publish(id, "team/a", "p1").await;
    let mut other = h.publish_req(id, "team/a", "p1");
    other.readonly = true;
    assert_fails(
        h.node().node_publish_volume(other).await,
        Code::AlreadyExists,
        &["another capability or readonly flag"],
    );
    // ReadOnlyMany: a second pod on the node is fine.
    let r = h
        .node()
        .node_publish_volume(h.publish_req(id, "team/a", "p2"))
        .await;
    assert!(r.is_ok(), "{r:?}");

    let id = "pv-single";
    let mut s = h.stage_req(id, "team/a");
    s.volume_capability = Some(cap(Mode::SingleNodeReaderOnly, &[]));
    assert!(h.node().node_stage_volume(s).await.is_ok());
    let mut p = h.publish_req(id, "team/a", "p1");
    p.volume_capability = Some(cap(Mode::SingleNodeReaderOnly, &[]));
    p.target_path = h.kubelet.join("pods/p1/single").display().to_string();
    assert!(h.node().node_publish_volume(p.clone()).await.is_ok());
    p.target_path = h.kubelet.join("pods/p2/single").display().to_string();
    assert_fails(
        h.node().node_publish_volume(p).await,
        Code::FailedPrecondition,
        &["single-node access mode"],
    );
    // Writer modes: refused unless lenient, and lenient still mounts read-only.
    let mut s = h.stage_req("pv-w", "team/a");
    s.volume_capability = Some(cap(Mode::SingleNodeWriter, &[]));
    assert_fails(
        h.node().node_stage_volume(s.clone()).await,
        Code::FailedPrecondition,
        &["request ReadOnlyMany"],
    );
    s.volume_context.insert("lenient".into(), "true".into());
    assert!(h.node().node_stage_volume(s).await.is_ok());
    let mut p = h.publish_req("pv-w", "team/a", "p1");
    p.volume_capability = Some(cap(Mode::SingleNodeWriter, &["noexec"]));
    p.volume_context.insert("lenient".into(), "true".into());
    p.target_path = h.kubelet.join("pods/p1/w").display().to_string();
    assert!(h.node().node_publish_volume(p.clone()).await.is_ok());
    let table = h.mounter.table();
    let e = mountinfo::top_at(&table, Path::new(&p.target_path)).cloned();
    assert!(e.is_some_and(|e| e.read_only() && e.has_option("noexec")));
}

#[tokio::test]
async fn node_bad_input_is_refused_clearly() {
    let h = Harness::new().await;
    let mut n = h.node();
    let good = h.stage_req("pv", "team/a");
    let inside = h.kubelet.join("x").display().to_string();
    let cases: Vec<(csi::NodeStageVolumeRequest, &str)> = vec![
        (
            csi::NodeStageVolumeRequest {
                volume_id: String::new(),
                ..good.clone()
            },
            "volume_id is required",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_id: "v".repeat(200),
                ..good.clone()
            },
            "at most 128",
        ),
        (
            csi::NodeStageVolumeRequest {
                staging_target_path: String::new(),
                ..good.clone()
            },
            "staging_target_path is required",
        ),
        (
            csi::NodeStageVolumeRequest {
                staging_target_path: "relative/path".into(),
                ..good.clone()
            },
            "absolute path",
        ),
        (
            csi::NodeStageVolumeRequest {
                staging_target_path: format!("{inside}/../../etc"),
                ..good.clone()
            },
            "\"..\"",
        ),
        (
            csi::NodeStageVolumeRequest {
                staging_target_path: "/etc/evil".into(),
                ..good.clone()
            },
            "outside the kubelet directory",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_capability: None,
                ..good.clone()
            },
            "volume_capability is required",
        ),
        (
            csi::NodeStageVolumeRequest {
                secrets: HashMap::new(),
                ..good.clone()
            },
            "node-stage secret: has no \"token\"",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: HashMap::new(),
                ..good.clone()
            },
            "volume: is required",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: {
                    let mut c = context("a");
                    c.insert("pathPattern".into(), "x".into());
                    c
                },
                ..good.clone()
            },
            "volumeAttributes.subdir",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: {
                    let mut c = context("");
                    c.insert("subDir".into(), "a".into());
                    c
                },
                ..good.clone()
            },
            "unknown key \"subDir\"",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: context("../x"),
                ..good.clone()
            },
            "\"..\" component",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: context("/abs"),
                ..good.clone()
            },
            "is absolute",
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_context: {
                    let mut c = context("");
                    c.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
                    c
                },
                ..good.clone()
            },
            "inline (ephemeral)",
        ),
    ];
    for (req, needle) in cases {
        assert_fails(
            n.node_stage_volume(req).await,
            Code::InvalidArgument,
            &[needle],
        );
    }
    let mut wrong = good.clone();
    wrong.secrets = map(&[("token", "nope")]);
    assert_fails(
        n.node_stage_volume(wrong).await,
        Code::Unauthenticated,
        &["refused the token"],
    );
    // Publish before stage; empty staging path.
    assert_fails(
        n.node_publish_volume(h.publish_req("pv-unstaged", "team/a", "p1"))
            .await,
        Code::FailedPrecondition,
        &["not staged"],
    );
    let mut p = h.publish_req("pv-unstaged", "team/a", "p1");
    p.staging_target_path = String::new();
    assert_fails(
        n.node_publish_volume(p).await,
        Code::FailedPrecondition,
        &["staging_target_path is empty"],
    );
    let mut p = h.publish_req("pv", "team/a", "p1");
    p.target_path = String::new();
    assert_fails(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        &["target_path is required"],
    );
    // Unpublish/unstage of things never staged or mounted succeed, whatever the id looks like;
    // bad paths do not.
    for id in ["\u{1}garbage", &"x".repeat(300), "../../etc/passwd"] {
        let r = n
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: h.kubelet.join("pods/p9/mount").display().to_string(),
            })
            .await;
        assert!(r.is_ok(), "{id:?}: {r:?}");
        let r = n
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: h
                    .kubelet
                    .join("plugins/x/globalmount")
                    .display()
                    .to_string(),
            })
            .await;
        assert!(r.is_ok(), "{id:?}: {r:?}");
    }
    let r = n
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "never".into(),
            target_path: h.kubelet.join("pods/p9/mount").display().to_string(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let r = n
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: "never".into(),
            staging_target_path: h.staging("never").display().to_string(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_fails(
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "never".into(),
            target_path: "/".into(),
        })
        .await,
        Code::InvalidArgument,
        &["outside the kubelet directory"],
    );
    // Required fields of teardown and stats, each missing in turn.
    assert_fails(
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: h.kubelet.join("pods/p1/m").display().to_string(),
        })
        .await,
        Code::InvalidArgument,
        &["volume_id is required"],
    );
    assert_fails(
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "v".into(),
            target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["target_path is required"],
    );
    assert_fails(
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: String::new(),
            staging_target_path: h.staging("v").display().to_string(),
        })
        .await,
        Code::InvalidArgument,
        &["volume_id is required"],
    );
    assert_fails(
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: "v".into(),
            staging_target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["staging_target_path is required"],
    );
    assert_fails(
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "v".into(),
            volume_path: String::new(),
            staging_target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["volume_path is required"],
    );
    let mut p = h.publish_req("pv", "team/a", "p1");
    p.volume_capability = None;
    assert_fails(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        &["volume_capability is required"],
    );
    let mut p = h.publish_req("pv", "team/a", "p1");
    p.volume_id = String::new();
    assert_fails(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        &["volume_id is required"],
    );
    // Stats of something not here.
    assert_fails(
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "never".into(),
            volume_path: "/x".into(),
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
        &["not staged"],
    );
}

#[tokio::test]
async fn broken_mounts_are_repaired_and_unpublish_of_a_broken_target_succeeds() {
    let h = Harness::new().await;
    let id = "pv-b";
    h.stage_and_publish(id, "team/a", "p1").await;
    let staging = h.staging(id);
    let target = h.target("p1");
    // The FUSE daemon dies: both mounts answer ENOTCONN.
    h.mounter.break_mount(&staging);
    h.mounter.break_mount(&target);
    let stats = h
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .map(|r| r.into_inner().volume_condition.unwrap_or_default());
    let cond = stats.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cond.abnormal && cond.message.contains("is broken"),
        "{}",
        cond.message
    );
    // kubelet calls NodePublish again on a corrupted mount: remount and bind again.
    let r = h
        .node()
        .node_publish_volume(h.publish_req(id, "team/a", "p1"))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(h.mounter.fuse_starts().len(), 2);
    let table = h.mounter.table();
    assert_eq!(mountinfo::count_at(&table, &target), 1);
    assert_eq!(mountinfo::count_at(&table, &staging), 1);
    // Break again; unpublish of a broken target succeeds and removes it.
    h.mounter.break_mount(&target);
    let r = h
        .node()
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.display().to_string(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(!h.mounter.dir_exists(&target));
    h.mounter.break_mount(&staging);
    let r = h
        .node()
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(mountinfo::top_at(&h.mounter.table(), &staging).is_none());
}

#[tokio::test]
async fn a_restarted_node_plugin_repairs_its_staged_volumes() {
    let mut h = Harness::new().await;
    let id = "pv-r";
    h.stage_and_publish(id, "team/a", "p1").await;
    let staging = h.staging(id);
    let target = h.target("p1");
    h.mounter.break_mount(&staging);
    h.mounter.break_mount(&target);
    h.restart().await;
    // Probe answers while recovery runs; wait until it says ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = h
            .identity()
            .probe(csi::ProbeRequest {})
            .await
            .map(|r| r.into_inner().ready);
        if ready.ok().flatten() == Some(true) && h.mounter.fuse_starts().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let starts = h.mounter.fuse_starts();
    assert_eq!(
        starts[1].secrets.token, TOKEN,
        "remounted with the recorded secrets"
    );
    let table = h.mounter.table();
    assert!(mountinfo::top_at(&table, &target).is_some_and(|e| e.read_only()));
    assert_eq!(mountinfo::count_at(&table, &target), 1);
    // The restarted plugin still knows the volume: a repeat publish is a no-op.
    let r = h
        .node()
        .node_publish_volume(h.publish_req(id, "team/a", "p1"))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(h.mounter.fuse_starts().len(), 2);
}

#[tokio::test]
async fn a_concurrent_call_on_the_same_volume_is_aborted() {
    let h = Harness::with(None, Duration::from_secs(3)).await;
    h.mirror.set_follow(Follow::Mirror {
        lag_revisions: 5,
        lag_seconds: 1.0,
        source_reachable: true,
    });
    // The first stage waits for a directory the lagging mirror has not applied yet.
    h.mirror
        .add_dir_after("data", "team/slow", h.mirror.lookups() + 5);
    h.mounter.add_volume_dir("data", "team/slow");
    let first = {
        let mut n = h.node();
        let req = h.stage_req("pv-c", "team/slow");
        tokio::spawn(async move { n.node_stage_volume(req).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.mirror.lookups() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_fails(
        h.node()
            .node_stage_volume(h.stage_req("pv-c", "team/slow"))
            .await,
        Code::Aborted,
        &["another operation on volume \"pv-c\" is in progress"],
    );
    let r = first
        .await
        .map(|r| r.map(|_| ()).map_err(|s| s.message().to_owned()));
    assert_eq!(r.ok(), Some(Ok(())));
}

#[tokio::test]
async fn volume_condition_reports_a_stale_mirror() {
    let h = Harness::new().await;
    let id = "pv-lag";
    h.stage_and_publish(id, "team/a", "p1").await;
    h.mirror.set_follow(Follow::Mirror {
        lag_revisions: 900,
        lag_seconds: 120.0,
        source_reachable: false,
    });
    let cond = h
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: h.target("p1").display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .map(|r| r.into_inner().volume_condition.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cond.abnormal);
    assert!(
        cond.message
            .contains("lag 120 s (900 revisions) exceeds --max-lag 60 s"),
        "{}",
        cond.message
    );
    assert!(
        cond.message.contains("source is unreachable"),
        "{}",
        cond.message
    );
    assert_fails(
        h.node()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: h.kubelet.join("pods/p2/elsewhere").display().to_string(),
                staging_target_path: String::new(),
            })
            .await,
        Code::NotFound,
        &["not mounted at"],
    );
}

#[tokio::test]
async fn each_staged_volume_gets_its_own_disk_cache_deleted_at_unstage() {
    let mut h = Harness::with_cache(None, Duration::from_millis(600), true).await;
    let root = h.cache_root.clone().unwrap_or_default();
    h.stage_and_publish("pv-a", "team/a", "p1").await;
    h.stage_and_publish("pv-b", "team/b", "p2").await;
    let starts = h.mounter.fuse_starts();
    let caches: Vec<_> = starts.iter().map(|m| m.cache.clone()).collect();
    let want = |id: &str| {
        Some(crate::cache_dir::DiskCache {
            dir: root.join(crate::cache_dir::dir_name(id)),
            size: mirrorfs_api::size::DEFAULT_CACHE_SIZE,
        })
    };
    assert_eq!(caches, [want("pv-a"), want("pv-b")]);
    // A plugin restarted over a broken mount remounts with the same directory.
    h.mounter.break_mount(&h.staging("pv-a"));
    h.restart().await;
    let last = h.mounter.fuse_starts().pop().and_then(|m| m.cache);
    assert_eq!(last, want("pv-a"));
    // Unstage deletes the volume's directory (the fake refuses while the mount is live, so
    // this also shows it comes after the unmount), and only that one.
    let unpublish = csi::NodeUnpublishVolumeRequest {
        volume_id: "pv-a".into(),
        target_path: h.target("p1").display().to_string(),
    };
    let r = h.node().node_unpublish_volume(unpublish).await;
    assert!(r.is_ok(), "{r:?}");
    for _ in 0..2 {
        let r = h
            .node()
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: "pv-a".into(),
                staging_target_path: h.staging("pv-a").display().to_string(),
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
    }
    let removed: Vec<_> = h.mounter.cache_removals().into_iter().map(Some).collect();
    assert_eq!(removed, [want("pv-a").map(|c| c.dir)]);
    // A stage whose mount fails leaves no directory behind.
    h.mounter
        .fail_next_fuse("error: the meta service is unreachable");
    let r = h
        .node()
        .node_stage_volume(h.stage_req("pv-c", "team/a"))
        .await;
    assert!(r.is_err(), "{r:?}");
    let last = h.mounter.cache_removals().pop();
    assert_eq!(last, want("pv-c").map(|c| c.dir));
}

#[tokio::test]
async fn without_a_cache_root_mounts_have_no_disk_cache() {
    let h = Harness::new().await;
    h.stage_and_publish("pv-a", "team/a", "p1").await;
    let starts = h.mounter.fuse_starts();
    assert!(starts.iter().all(|m| m.cache.is_none()), "{starts:?}");
}
