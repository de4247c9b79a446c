//! The CSI driver end to end, called as Kubernetes calls it: an external-provisioner-like
//! caller (CreateVolume/DeleteVolume with the StorageClass parameters, the extra create
//! metadata and the provisioner secret) and a kubelet-like caller (NodeStage/NodePublish/
//! NodeUnpublish/NodeUnstage with kubelet's path layout and `readonly=false` for a ReadOnlyMany
//! claim), against real source and mirror meta services, the real `mirrorfs csi` process, real
//! FUSE mounts started by it and real bind mounts; pods are separate processes.
//!
//! Needs root and /dev/fuse: without them every test fails and says so.

use std::path::Path;
use std::time::{Duration, Instant};

use mirrorfs_csi::csi::volume_capability::access_mode::Mode;
use mirrorfs_csi::csi::{self as pb};
use mirrorfs_e2e::cluster::{Cluster, MIRROR_VOLUME, NODE_ID, Options, REGION};
use mirrorfs_e2e::kube::{Claim, PersistentVolume, capability, token_secret};
use mirrorfs_e2e::mounts::{self, MountEntry};
use mirrorfs_e2e::pod::{NOBODY, Pod};
use mirrorfs_e2e::process::{kill_pid, wait_for};
use tonic::Code;

/// The directory most tests publish: as a parameter (relative to the volume root) and as the
/// root of the bind mount in mountinfo.
const TRAIN_DIR: &str = "teams/vision/imagenet/train";
const TRAIN: &str = "/teams/vision/imagenet/train";

fn pod() -> Pod {
    Pod::new(env!("CARGO_BIN_EXE_mirrorfs-e2e-pod"))
}

/// Asserts `r` failed with one of `codes` and a message containing every one of `needles`.
fn assert_fails<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    codes: &[Code],
    needles: &[&str],
) -> tonic::Status {
    let st = match r {
        Ok(v) => panic!("{what} should fail with {codes:?}, got Ok({v:?})"),
        Err(st) => st,
    };
    assert!(
        codes.contains(&st.code()),
        "{what}: expected {codes:?}, got {:?}: {}",
        st.code(),
        st.message()
    );
    for n in needles {
        assert!(
            st.message().contains(n),
            "{what}: the message should name {n:?}: {:?}",
            st.message()
        );
    }
    st
}

fn ok<T>(what: &str, r: Result<T, tonic::Status>) -> T {
    r.unwrap_or_else(|st| panic!("{what} failed: {:?}: {}", st.code(), st.message()))
}

/// The one mount at `target`, read-only at the mount level, a bind of `root` of a mirrorfs
/// FUSE file system (which is read-only itself).
fn assert_read_only_bind(target: &Path, root: &str) -> MountEntry {
    let ms = mounts::mounts_at(target);
    assert_eq!(
        ms.len(),
        1,
        "exactly one mount at {} (no stacked mounts): {ms:#?}",
        target.display()
    );
    let m = ms.into_iter().next().expect("one mount");
    assert!(m.read_only(), "the target is not mounted ro: {m:#?}");
    assert!(m.is_fuse(), "the target is not a FUSE mount: {m:#?}");
    assert_eq!(
        m.root,
        std::path::Path::new(root),
        "the target binds the wrong directory: {m:#?}"
    );
    m
}

/// The one FUSE mount at the staging path, read-only.
fn assert_staged(staging: &Path) -> MountEntry {
    let ms = mounts::mounts_at(staging);
    assert_eq!(
        ms.len(),
        1,
        "exactly one mount at the staging path {}: {ms:#?}",
        staging.display()
    );
    let m = ms.into_iter().next().expect("one mount");
    assert!(m.is_fuse(), "the staging mount is not FUSE: {m:#?}");
    assert!(
        m.read_only() || m.super_read_only(),
        "the staging mount is writable: {m:#?}"
    );
    m
}

/// A pod reads exactly the source's files under `dir` through `target`, as root and as nobody.
fn assert_pod_reads(c: &Cluster, target: &Path, dir: &str) {
    let want = c.data.files_under(dir);
    assert!(!want.is_empty(), "the data set has files under {dir}");
    for p in [pod(), pod().as_user(NOBODY)] {
        let r = p.read(target);
        assert!(r.errors.is_empty(), "the pod met errors: {:?}", r.errors);
        assert_eq!(
            r.files.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "the pod sees other files than the source has under {dir}"
        );
        for (path, bytes) in &want {
            assert!(
                r.files.get(path) == Some(bytes),
                "{path}: the pod read other bytes than the source's ({} bytes)",
                bytes.len()
            );
        }
    }
}

/// Every kind of write through `target` fails with EROFS, as root and as nobody.
fn assert_writes_fail_erofs(target: &Path, file: &str, subdir: &str) {
    for (who, p) in [("root", pod()), ("nobody", pod().as_user(NOBODY))] {
        let results = p.write_probe(target, &target.join(file), &target.join(subdir));
        assert!(
            results.len() >= 15,
            "the probe ran every write: {results:?}"
        );
        let wrong: Vec<_> = results
            .iter()
            .filter(|(_, errno)| *errno != libc::EROFS)
            .collect();
        assert!(
            wrong.is_empty(),
            "as {who}, writes that did not fail with EROFS ({}): {wrong:?}",
            libc::EROFS
        );
    }
}

/// Waits until the FUSE mount under `path` is broken: statfs always reaches the FUSE
/// connection (a stat may be answered from the kernel's attribute cache for a while).
async fn wait_enotconn(path: &Path) {
    let p = path.to_owned();
    wait_for(
        &format!("statfs of {} to fail with ENOTCONN", path.display()),
        Duration::from_secs(20),
        || {
            let p = p.clone();
            async move {
                matches!(
                    nix::sys::statfs::statfs(&p),
                    Err(nix::errno::Errno::ENOTCONN)
                )
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Kills (by pid) every FUSE daemon serving `staging` and waits for the mount to break.
async fn kill_mount_daemons(c: &Cluster, staging: &Path) -> Vec<i32> {
    let pids = c.mount_daemons(staging);
    assert!(
        !pids.is_empty(),
        "no FUSE daemon names the staging path {} in its command line",
        staging.display()
    );
    for p in &pids {
        assert!(
            kill_pid(*p, Duration::from_secs(10)),
            "the FUSE daemon {p} did not die"
        );
    }
    wait_enotconn(staging).await;
    pids
}

/// NodeUnpublish and NodeUnstage as the kubelet sends them when the pod goes, then nothing may
/// stay mounted under the kubelet root.
async fn tear_down(
    c: &Cluster,
    node: &mut mirrorfs_csi::csi::node_client::NodeClient<tonic::transport::Channel>,
    pv: &PersistentVolume,
    pod_uid: &str,
) {
    ok(
        "NodeUnpublish",
        c.kubelet.unpublish(node, pv, pod_uid).await,
    );
    ok("NodeUnstage", c.kubelet.unstage(node, pv).await);
    no_mounts_left(c).await;
}

async fn no_mounts_left(c: &Cluster) {
    let root = c.kubelet.root.clone();
    let r = wait_for(
        "every mount under the kubelet root to go",
        Duration::from_secs(10),
        || {
            let root = root.clone();
            async move { mounts::mounts_under(&root).is_empty() }
        },
    )
    .await;
    assert!(
        r.is_ok(),
        "mounts left under the kubelet root: {:#?}",
        mounts::mounts_under(&c.kubelet.root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_node_info() {
    let c = Cluster::start().await;
    let info = ok(
        "GetPluginInfo",
        c.driver
            .identity()
            .get_plugin_info(pb::GetPluginInfoRequest {})
            .await,
    )
    .into_inner();
    assert_eq!(info.name, "csi.mirrorfs.io");
    assert!(
        !info.vendor_version.is_empty(),
        "vendor_version is required"
    );

    let caps = ok(
        "GetPluginCapabilities",
        c.driver
            .identity()
            .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
            .await,
    )
    .into_inner();
    let controller_service = caps.capabilities.iter().any(|cap| {
        matches!(
            cap.r#type,
            Some(pb::plugin_capability::Type::Service(s))
                if s.r#type == pb::plugin_capability::service::Type::ControllerService as i32
        )
    });
    assert!(
        controller_service,
        "CONTROLLER_SERVICE not offered: {caps:?}"
    );

    let node_info = ok(
        "NodeGetInfo",
        c.driver
            .node()
            .node_get_info(pb::NodeGetInfoRequest {})
            .await,
    )
    .into_inner();
    assert_eq!(node_info.node_id, NODE_ID);
    let topology = node_info.accessible_topology.unwrap_or_default();
    assert_eq!(
        topology
            .segments
            .get("topology.csi.mirrorfs.io/region")
            .map(String::as_str),
        Some(REGION),
        "the region key is advertised"
    );

    let node_caps = ok(
        "NodeGetCapabilities",
        c.driver
            .node()
            .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
            .await,
    )
    .into_inner();
    let stage = node_caps.capabilities.iter().any(|cap| {
        matches!(
            cap.r#type,
            Some(pb::node_service_capability::Type::Rpc(r))
                if r.r#type == pb::node_service_capability::rpc::Type::StageUnstageVolume as i32
        )
    });
    assert!(stage, "STAGE_UNSTAGE_VOLUME not offered: {node_caps:?}");

    let ctrl_caps = ok(
        "ControllerGetCapabilities",
        c.driver
            .controller()
            .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
            .await,
    )
    .into_inner();
    let create = ctrl_caps.capabilities.iter().any(|cap| {
        matches!(
            cap.r#type,
            Some(pb::controller_service_capability::Type::Rpc(r))
                if r.r#type == pb::controller_service_capability::rpc::Type::CreateDeleteVolume as i32
        )
    });
    assert!(create, "CREATE_DELETE_VOLUME not offered: {ctrl_caps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_many_claim_from_provisioning_to_deletion() {
    let c = Cluster::start().await;
    let sc = c.class(&[("pathPattern", "teams/${pvc.metadata.name}/imagenet/train")]);
    let claim = c.claim("vision");
    let mut ctrl = c.driver.controller();
    let pv = ok(
        "CreateVolume",
        c.provisioner.provision(&mut ctrl, &sc, &claim).await,
    );
    assert!(
        !pv.volume_handle.is_empty() && pv.volume_handle.len() <= 128,
        "volume ids are 1..=128 bytes: {:?}",
        pv.volume_handle
    );
    assert!(
        !pv.volume_attributes
            .values()
            .any(|v| v.contains(&c.mirror_token)),
        "the volume context carries the token: {:?}",
        pv.volume_attributes
    );

    let v = ok(
        "ValidateVolumeCapabilities",
        ctrl.validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: pv.volume_handle.clone(),
            volume_context: pv.volume_attributes.clone(),
            volume_capabilities: vec![capability(Mode::MultiNodeReaderOnly)],
            ..Default::default()
        })
        .await,
    )
    .into_inner();
    assert!(
        v.confirmed.is_some(),
        "ReadOnlyMany is confirmed: {:?}",
        v.message
    );

    let mut node = c.driver.node();
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    assert_staged(&staging);
    let pod_uid = "6f1c3a2e-0001-4000-8000-000000000001";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_pod_reads(&c, &target, TRAIN);
    assert_writes_fail_erofs(&target, "part-001.bin", "nested");
    // Nothing changed: the files are still the source's.
    assert_pod_reads(&c, &target, TRAIN);

    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: pv.volume_handle.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await;
    let stats = ok("NodeGetVolumeStats", stats).into_inner();
    assert!(!stats.usage.is_empty(), "stats report usage: {stats:?}");
    if let Some(cond) = stats.volume_condition {
        assert!(!cond.abnormal, "a healthy volume is abnormal: {cond:?}");
    }

    ok(
        "NodeUnpublish",
        c.kubelet.unpublish(&mut node, &pv, pod_uid).await,
    );
    assert!(
        mounts::mounts_at(&target).is_empty(),
        "the target is still mounted"
    );
    assert!(
        !target.exists(),
        "NodeUnpublish leaves the target directory behind"
    );
    assert_staged(&staging);
    ok("NodeUnstage", c.kubelet.unstage(&mut node, &pv).await);
    no_mounts_left(&c).await;
    let r = wait_for(
        "the FUSE daemon to exit after NodeUnstage",
        Duration::from_secs(10),
        || async { c.mount_daemons(&staging).is_empty() },
    )
    .await;
    assert!(r.is_ok(), "{r:?}: {:?}", c.mount_daemons(&staging));

    ok(
        "DeleteVolume",
        ctrl.delete_volume(c.provisioner.delete_request(&sc, &pv))
            .await,
    );
    assert!(
        c.regions
            .mirror_has(MIRROR_VOLUME, &c.mirror_token, TRAIN)
            .await,
        "DeleteVolume touched the data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_idempotent() {
    let c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let claim = c.claim("idem");
    let mut ctrl = c.driver.controller();
    let req = c.provisioner.create_request(&sc, &claim);
    let first = ok("CreateVolume", ctrl.create_volume(req.clone()).await).into_inner();
    let again = ok("CreateVolume again", ctrl.create_volume(req.clone()).await).into_inner();
    assert_eq!(
        first.volume, again.volume,
        "a repeated CreateVolume answers the same volume"
    );
    let mut other = req.clone();
    other
        .parameters
        .insert("subdir".into(), "teams/vision/imagenet/val".into());
    assert_fails(
        "CreateVolume with the same name and another subdir",
        ctrl.create_volume(other).await,
        &[Code::AlreadyExists],
        &[],
    );
    let pv = c
        .provisioner
        .pv_from(&claim, &sc, first.volume.expect("a volume"));

    let mut node = c.driver.node();
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    ok("NodeStage again", c.kubelet.stage(&mut node, &pv).await);
    assert_staged(&staging);
    let pod_uid = "6f1c3a2e-0002-4000-8000-000000000002";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    ok(
        "NodePublish again",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_staged(&staging);
    // A second pod on the node (ReadOnlyMany: several targets of one staged volume).
    let pod2 = "6f1c3a2e-0003-4000-8000-000000000003";
    let target2 = ok(
        "NodePublish, second pod",
        c.kubelet.publish(&mut node, &pv, pod2).await,
    );
    assert_read_only_bind(&target2, TRAIN);
    assert_pod_reads(&c, &target2, TRAIN);

    for pod_uid in [pod_uid, pod2] {
        ok(
            "NodeUnpublish",
            c.kubelet.unpublish(&mut node, &pv, pod_uid).await,
        );
        ok(
            "NodeUnpublish again",
            c.kubelet.unpublish(&mut node, &pv, pod_uid).await,
        );
    }
    assert!(mounts::mounts_at(&target).is_empty() && !target.exists());
    ok("NodeUnstage", c.kubelet.unstage(&mut node, &pv).await);
    ok("NodeUnstage again", c.kubelet.unstage(&mut node, &pv).await);
    no_mounts_left(&c).await;
    ok(
        "DeleteVolume",
        ctrl.delete_volume(c.provisioner.delete_request(&sc, &pv))
            .await,
    );
    ok(
        "DeleteVolume again",
        ctrl.delete_volume(c.provisioner.delete_request(&sc, &pv))
            .await,
    );
    probe_ok(&c).await;
}

/// The message of a missing path says the source lacks it too (not "unknown").
fn assert_says_source_lacks_it(message: &str) {
    let m = message.to_lowercase();
    assert!(
        !m.contains("unknown"),
        "the message leaves open whether the source has the path: {message:?}"
    );
    assert!(
        [
            "source does not have",
            "source has no",
            "not in the source",
            "source lacks",
            "source doesn't have",
            "missing in the source",
            "absent from the source",
            "source neither"
        ]
        .iter()
        .any(|p| m.contains(p)),
        "the message does not say that the source lacks the path: {message:?}"
    );
}

async fn probe_ok(c: &Cluster) {
    let r = c.driver.identity().probe(pb::ProbeRequest {}).await;
    assert!(r.is_ok(), "the driver stopped answering Probe: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_subdir_fails_fast_at_create_volume() {
    let c = Cluster::start_with(Options {
        path_wait: "20s".into(),
        ..Options::default()
    })
    .await;
    let mut ctrl = c.driver.controller();
    for (sc, claim, path) in [
        (
            c.class(&[("subdir", "teams/vision/coco/train")]),
            c.claim("fixed"),
            "teams/vision/coco/train",
        ),
        (
            c.class(&[("pathPattern", "teams/vision/${pvc.metadata.name}/train")]),
            c.claim("coco"),
            "teams/vision/coco/train",
        ),
    ] {
        let started = Instant::now();
        let r = c.provisioner.provision(&mut ctrl, &sc, &claim).await;
        let took = started.elapsed();
        let st = assert_fails(
            "CreateVolume of a missing directory",
            r,
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
            &[MIRROR_VOLUME, path, "coco", "revision", "lag", "source"],
        );
        eprintln!(
            "CreateVolume of missing {path:?} failed in {took:?}: {}",
            st.message()
        );
        assert_says_source_lacks_it(st.message());
        assert!(
            took < Duration::from_secs(5),
            "CreateVolume of a path the source does not have either took {took:?} (it must not wait --path-wait): {}",
            st.message()
        );
    }
    // A file is not a directory.
    let sc = c.class(&[("subdir", "teams/speech/README")]);
    assert_fails(
        "CreateVolume of a file",
        c.provisioner
            .provision(&mut ctrl, &sc, &c.claim("file"))
            .await,
        &[
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ],
        &["teams/speech/README"],
    );
    probe_ok(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_subdir_of_a_static_pv_fails_fast_at_node_publish() {
    let c = Cluster::start_with(Options {
        path_wait: "20s".into(),
        ..Options::default()
    })
    .await;
    let path = "teams/vision/coco/train";
    let pv = PersistentVolume::static_pv(
        "static-coco",
        "static-coco",
        &[
            ("volume", MIRROR_VOLUME),
            ("metaAddress", &c.regions.mirror.url),
            ("subdir", path),
        ],
        Mode::MultiNodeReaderOnly,
        token_secret(&c.mirror_token),
    );
    let mut node = c.driver.node();
    let pod_uid = "6f1c3a2e-0004-4000-8000-000000000004";
    let started = Instant::now();
    // kubelet stages first; the check may fail there already (MountDevice) or at SetUp.
    let r = match c.kubelet.stage(&mut node, &pv).await {
        Ok(_) => c.kubelet.publish(&mut node, &pv, pod_uid).await.map(|_| ()),
        Err(st) => Err(st),
    };
    let took = started.elapsed();
    let st = assert_fails(
        "NodeStage/NodePublish of a missing directory",
        r,
        &[Code::NotFound],
        &[MIRROR_VOLUME, path, "coco", "revision", "lag", "source"],
    );
    assert_says_source_lacks_it(st.message());
    assert!(
        took < Duration::from_secs(5),
        "failing took {took:?} although the source lacks the path too: {}",
        st.message()
    );
    let target = c.kubelet.target_path(pod_uid, &pv.name);
    assert!(
        mounts::mounts_at(&target).is_empty(),
        "something is mounted at the target"
    );
    assert!(
        !c.regions
            .mirror_has(MIRROR_VOLUME, &c.mirror_token, "/teams/vision/coco")
            .await
    );
    // kubelet cleans up after a final error.
    tear_down(&c, &mut node, &pv, pod_uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_the_mirror_has_not_applied_yet_is_waited_for() {
    let c = Cluster::start_with(Options {
        path_wait: "6s".into(),
        ..Options::default()
    })
    .await;
    let mut ctrl = c.driver.controller();
    let mut node = c.driver.node();

    // CreateVolume: the mirror applies the new directory about 1.5 s late.
    c.regions.link.set_delay(Duration::from_millis(1500));
    let path = "/teams/vision/imagenet/test";
    let rev = c
        .regions
        .source_mkdirs(mirrorfs_e2e::cluster::SOURCE_VOLUME, &c.source_token, path)
        .await;
    let applied = c.regions.mirror_status().await.applied_revision;
    assert!(
        applied < rev,
        "the delayed mirror applied revision {rev} at once: the wait is not tested"
    );
    let sc = c.class(&[("subdir", &path[1..])]);
    let started = Instant::now();
    let pv = ok(
        "CreateVolume of a path the mirror has not applied yet",
        c.provisioner
            .provision(&mut ctrl, &sc, &c.claim("test"))
            .await,
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "waited {took:?}");
    assert!(
        c.regions
            .mirror_has(MIRROR_VOLUME, &c.mirror_token, path)
            .await
    );

    // NodeStage/NodePublish of a static PV whose directory the mirror has not applied yet.
    let fresh = "/teams/vision/imagenet/fresh";
    let pv_fresh = PersistentVolume::static_pv(
        "static-fresh",
        "static-fresh",
        &[
            ("volume", MIRROR_VOLUME),
            ("metaAddress", &c.regions.mirror.url),
            ("subdir", &fresh[1..]),
        ],
        Mode::MultiNodeReaderOnly,
        token_secret(&c.mirror_token),
    );
    let rev = c
        .regions
        .source_mkdirs(mirrorfs_e2e::cluster::SOURCE_VOLUME, &c.source_token, fresh)
        .await;
    assert!(c.regions.mirror_status().await.applied_revision < rev);
    let pod_uid = "6f1c3a2e-0005-4000-8000-000000000005";
    let started = Instant::now();
    ok(
        "NodeStage of a directory the mirror has not applied yet",
        c.kubelet.stage(&mut node, &pv_fresh).await,
    );
    let target = ok(
        "NodePublish of a directory the mirror has not applied yet",
        c.kubelet.publish(&mut node, &pv_fresh, pod_uid).await,
    );
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_read_only_bind(&target, fresh);
    ok(
        "NodeUnpublish",
        c.kubelet.unpublish(&mut node, &pv_fresh, pod_uid).await,
    );
    ok("NodeUnstage", c.kubelet.unstage(&mut node, &pv_fresh).await);

    // Bounded: with the link cut the mirror never gets it; CreateVolume gives up after
    // --path-wait with the message.
    c.regions.link.set_delay(Duration::ZERO);
    c.regions.wait_caught_up().await;
    c.regions.link.cut();
    let never = "/teams/vision/imagenet/never";
    c.regions
        .source_mkdirs(mirrorfs_e2e::cluster::SOURCE_VOLUME, &c.source_token, never)
        .await;
    let started = Instant::now();
    let r = c
        .provisioner
        .provision(
            &mut ctrl,
            &c.class(&[("subdir", &never[1..])]),
            &c.claim("never"),
        )
        .await;
    let took = started.elapsed();
    assert_fails(
        "CreateVolume of a path the cut-off mirror never gets",
        r,
        &[
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::DeadlineExceeded,
            Code::Unavailable,
        ],
        &[MIRROR_VOLUME, &never[1..], "revision"],
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "gave up after {took:?}, not after --path-wait 6s"
    );
    c.regions.link.restore();
    ok(
        "DeleteVolume",
        ctrl.delete_volume(c.provisioner.delete_request(&sc, &pv))
            .await,
    );
}

/// What went wrong with one call, or nothing: the code it answered against the codes allowed.
fn check<T>(what: String, r: Result<T, tonic::Status>, allowed: &[Code]) -> Option<String> {
    let code = match &r {
        Ok(_) => Code::Ok,
        Err(st) => st.code(),
    };
    if allowed.contains(&code) {
        return None;
    }
    Some(match r {
        Ok(_) => format!("{what}: OK, expected {allowed:?}"),
        Err(st) => format!(
            "{what}: {:?} ({}), expected {allowed:?}",
            st.code(),
            st.message()
        ),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_garbled_volume_ids_get_clear_answers() {
    let mut c = Cluster::start().await;
    let long = "x".repeat(300);
    let ids = [
        "pvc-00000000-0000-0000-0000-000000000000",
        "mirrorfs:not-a-real-id",
        "mfs1-0000000000000000000000000000000000000000",
        "\u{1}\u{2}\u{7f}garbage",
        "../../../../etc/passwd",
        long.as_str(),
        "v1:datasets-eu:%%%",
    ];
    let missing = c
        .dir()
        .join("kubelet/pods/none/volumes/kubernetes.io~csi/pv/mount");
    let missing_staging = c
        .dir()
        .join("kubelet/plugins/kubernetes.io/csi/none/globalmount");
    // Every answer is checked; the test lists all that differ from the spec (CSI-FACTS section
    // 6: an id naming no volume is unknown, whatever it looks like).
    let mut wrong: Vec<String> = Vec::new();
    for id in ids {
        // An id beyond the spec's limits (over 128 bytes, control characters) may also be
        // refused as a bad field by the controller; teardown of nothing must still succeed.
        let out_of_spec = id.len() > 128 || id.chars().any(char::is_control);
        let (delete_ok, validate_ok): (&[Code], &[Code]) = if out_of_spec {
            (
                &[Code::Ok, Code::InvalidArgument],
                &[Code::NotFound, Code::InvalidArgument],
            )
        } else {
            (&[Code::Ok], &[Code::NotFound])
        };
        let mut ctrl = c.driver.controller();
        let mut node = c.driver.node();
        let r = ctrl
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: id.into(),
                secrets: token_secret(&c.mirror_token),
            })
            .await;
        wrong.extend(check(format!("DeleteVolume {id:?}"), r, delete_ok));
        let r = ctrl
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: vec![capability(Mode::MultiNodeReaderOnly)],
                ..Default::default()
            })
            .await;
        wrong.extend(check(
            format!("ValidateVolumeCapabilities {id:?}"),
            r,
            validate_ok,
        ));
        let r = node
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: missing.display().to_string(),
            })
            .await;
        wrong.extend(check(
            format!("NodeUnpublish {id:?} of a missing target"),
            r,
            &[Code::Ok],
        ));
        let r = node
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: missing_staging.display().to_string(),
            })
            .await;
        wrong.extend(check(
            format!("NodeUnstage {id:?} of a missing staging path"),
            r,
            &[Code::Ok],
        ));
        // Stage and publish with an id and no context naming a volume.
        let staging = c.kubelet.staging_path(id);
        std::fs::create_dir_all(&staging).expect("staging dir");
        let r = node
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability(Mode::MultiNodeReaderOnly)),
                secrets: token_secret(&c.mirror_token),
                ..Default::default()
            })
            .await;
        wrong.extend(check(
            format!("NodeStage {id:?} without a volume context"),
            r,
            &[Code::InvalidArgument, Code::NotFound],
        ));
        assert!(mounts::mounts_at(&staging).is_empty());
        let target = c.kubelet.target_path("6f1c3a2e-0006", "pv-garbled");
        std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
        let r = node
            .node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(capability(Mode::MultiNodeReaderOnly)),
                ..Default::default()
            })
            .await;
        wrong.extend(check(
            format!("NodePublish {id:?} of an unstaged volume"),
            r,
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
        ));
        assert!(mounts::mounts_at(&target).is_empty());
        let r = node
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await;
        wrong.extend(check(
            format!("NodeGetVolumeStats {id:?}"),
            r,
            &[Code::NotFound, Code::InvalidArgument],
        ));
        c.driver
            .assert_healthy(&format!("the calls with volume id {id:?}"))
            .await;
    }
    // Required fields missing.
    let mut ctrl = c.driver.controller();
    let mut node = c.driver.node();
    let r = ctrl.delete_volume(pb::DeleteVolumeRequest::default()).await;
    wrong.extend(check(
        "DeleteVolume without an id".into(),
        r,
        &[Code::InvalidArgument],
    ));
    let r = node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: missing.display().to_string(),
        })
        .await;
    wrong.extend(check(
        "NodeUnpublish without an id".into(),
        r,
        &[Code::InvalidArgument],
    ));
    c.driver.assert_healthy("calls with fields missing").await;
    no_mounts_left(&c).await;
    assert!(
        wrong.is_empty(),
        "answers against the spec:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_and_restarted_between_calls() {
    let mut c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let claim = c.claim("restarts");
    let req = c.provisioner.create_request(&sc, &claim);
    let created = ok(
        "CreateVolume",
        c.driver.controller().create_volume(req.clone()).await,
    )
    .into_inner();
    let pv = c
        .provisioner
        .pv_from(&claim, &sc, created.volume.clone().expect("a volume"));

    c.driver.restart().await;
    let again = ok(
        "CreateVolume after a restart",
        c.driver.controller().create_volume(req.clone()).await,
    )
    .into_inner();
    assert_eq!(
        again.volume, created.volume,
        "CreateVolume is idempotent across restarts"
    );

    let staging = ok(
        "NodeStage",
        c.kubelet.stage(&mut c.driver.node(), &pv).await,
    );
    assert_staged(&staging);
    let daemons = c.mount_daemons(&staging);

    c.driver.kill9();
    // The FUSE daemon outlives the plugin.
    assert_staged(&staging);
    let inside = staging.join("teams/vision/imagenet/train/part-002.bin");
    assert_eq!(
        std::fs::read(&inside).map(|b| b.len()).ok(),
        Some(4096),
        "the staged mount stops serving while the plugin is down"
    );
    c.driver.restart().await;
    ok(
        "NodeStage after a restart",
        c.kubelet.stage(&mut c.driver.node(), &pv).await,
    );
    assert_staged(&staging);
    assert_eq!(
        c.mount_daemons(&staging),
        daemons,
        "the restarted plugin started another FUSE daemon instead of finding the staged volume"
    );
    let pod_uid = "6f1c3a2e-0007-4000-8000-000000000007";
    let target = ok(
        "NodePublish after a restart",
        c.kubelet.publish(&mut c.driver.node(), &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_pod_reads(&c, &target, TRAIN);

    c.driver.kill9();
    assert_pod_reads(&c, &target, TRAIN);
    c.driver.restart().await;
    ok(
        "NodePublish again after a restart",
        c.kubelet.publish(&mut c.driver.node(), &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);

    c.driver.restart().await;
    ok(
        "NodeUnpublish after a restart",
        c.kubelet
            .unpublish(&mut c.driver.node(), &pv, pod_uid)
            .await,
    );
    assert!(mounts::mounts_at(&target).is_empty() && !target.exists());
    c.driver.restart().await;
    ok(
        "NodeUnstage after a restart",
        c.kubelet.unstage(&mut c.driver.node(), &pv).await,
    );
    no_mounts_left(&c).await;
    c.driver.restart().await;
    ok(
        "DeleteVolume after a restart",
        c.driver
            .controller()
            .delete_volume(c.provisioner.delete_request(&sc, &pv))
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_fuse_process_is_repaired_by_the_next_stage_and_publish() {
    let c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let claim = c.claim("repair");
    let mut ctrl = c.driver.controller();
    let pv = ok(
        "CreateVolume",
        c.provisioner.provision(&mut ctrl, &sc, &claim).await,
    );
    let mut node = c.driver.node();
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    let pod_uid = "6f1c3a2e-0008-4000-8000-000000000008";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_pod_reads(&c, &target, TRAIN);

    let killed = kill_mount_daemons(&c, &staging).await;
    wait_enotconn(&target).await;
    // kubelet re-calls NodeStage and NodePublish on a corrupted mount.
    ok(
        "NodeStage on a broken mount",
        c.kubelet.stage(&mut node, &pv).await,
    );
    assert_staged(&staging);
    let now = c.mount_daemons(&staging);
    assert!(
        !now.is_empty() && now.iter().all(|p| !killed.contains(p)),
        "no new FUSE daemon: before {killed:?}, now {now:?}"
    );
    ok(
        "NodePublish on a broken target",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_pod_reads(&c, &target, TRAIN);
    assert_writes_fail_erofs(&target, "part-001.bin", "nested");

    tear_down(&c, &mut node, &pv, pod_uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_fuse_process_is_repaired_by_publish_alone() {
    let c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let mut ctrl = c.driver.controller();
    let pv = ok(
        "CreateVolume",
        c.provisioner
            .provision(&mut ctrl, &sc, &c.claim("repair-publish"))
            .await,
    );
    let mut node = c.driver.node();
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    let pod_uid = "6f1c3a2e-0009-4000-8000-000000000009";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    kill_mount_daemons(&c, &staging).await;
    wait_enotconn(&target).await;
    ok(
        "NodePublish on a broken mount (no NodeStage before it)",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_pod_reads(&c, &target, TRAIN);
    tear_down(&c, &mut node, &pv, pod_uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_and_unstage_of_missing_unmounted_and_broken_targets_succeed() {
    let c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let mut ctrl = c.driver.controller();
    let pv = ok(
        "CreateVolume",
        c.provisioner
            .provision(&mut ctrl, &sc, &c.claim("teardown"))
            .await,
    );
    let mut node = c.driver.node();

    // Never published: the target does not exist.
    ok(
        "NodeUnpublish of a missing target",
        c.kubelet.unpublish(&mut node, &pv, "6f1c3a2e-000a").await,
    );
    // Published uncertainly: the directory exists, nothing is mounted.
    let empty = c.kubelet.target_path("6f1c3a2e-000b", &pv.name);
    std::fs::create_dir_all(&empty).expect("target dir");
    ok(
        "NodeUnpublish of an unmounted target",
        c.kubelet.unpublish(&mut node, &pv, "6f1c3a2e-000b").await,
    );
    assert!(
        !empty.exists(),
        "NodeUnpublish leaves an unmounted target directory behind"
    );
    // Never staged.
    ok(
        "NodeUnstage of a volume never staged",
        c.kubelet.unstage(&mut node, &pv).await,
    );

    // Broken: the FUSE daemon is gone under a published target.
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    let pod_uid = "6f1c3a2e-000c-4000-8000-00000000000c";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    kill_mount_daemons(&c, &staging).await;
    wait_enotconn(&target).await;
    ok(
        "NodeUnpublish of a broken target",
        c.kubelet.unpublish(&mut node, &pv, pod_uid).await,
    );
    assert!(
        mounts::mounts_at(&target).is_empty(),
        "the broken target is still mounted"
    );
    assert!(
        target.symlink_metadata().is_err(),
        "NodeUnpublish leaves the broken target behind"
    );
    ok(
        "NodeUnstage of a broken staging mount",
        c.kubelet.unstage(&mut node, &pv).await,
    );
    assert!(
        mounts::mounts_at(&staging).is_empty(),
        "the broken staging mount is still mounted"
    );
    ok("NodeUnstage again", c.kubelet.unstage(&mut node, &pv).await);
    no_mounts_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_access_modes_are_refused_unless_lenient_and_still_read_only() {
    let c = Cluster::start().await;
    let mut ctrl = c.driver.controller();
    let mut rwo = c.claim("writer");
    rwo.access_modes = vec![Mode::SingleNodeWriter];
    assert_fails(
        "CreateVolume ReadWriteOnce (strict)",
        c.provisioner
            .provision(&mut ctrl, &c.class(&[("subdir", TRAIN_DIR)]), &rwo)
            .await,
        &[Code::InvalidArgument],
        &["ReadOnlyMany"],
    );

    let sc = c.class(&[("subdir", TRAIN_DIR), ("lenient", "true")]);
    let mut rwx: Claim = c.claim("lenient");
    rwx.access_modes = vec![Mode::MultiNodeMultiWriter];
    let pv = ok(
        "CreateVolume ReadWriteMany (lenient)",
        c.provisioner.provision(&mut ctrl, &sc, &rwx).await,
    );
    let mut node = c.driver.node();
    let staging = ok("NodeStage", c.kubelet.stage(&mut node, &pv).await);
    assert_staged(&staging);
    let pod_uid = "6f1c3a2e-000d-4000-8000-00000000000d";
    let target = ok(
        "NodePublish",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_writes_fail_erofs(&target, "part-001.bin", "nested");
    tear_down(&c, &mut node, &pv, pod_uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_never_lead_out_of_the_volume() {
    let c = Cluster::start().await;
    let mut ctrl = c.driver.controller();
    for path in ["links/outside", "links/up", "links/outside/ssl"] {
        let r = c
            .provisioner
            .provision(&mut ctrl, &c.class(&[("subdir", path)]), &c.claim("link"))
            .await;
        assert_fails(
            &format!("CreateVolume of symlink path {path}"),
            r,
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
            &[path],
        );
    }
    // A static PV naming the symlink: nothing of the host's /etc may be published.
    let pv = PersistentVolume::static_pv(
        "static-link",
        "static-link",
        &[
            ("volume", MIRROR_VOLUME),
            ("metaAddress", &c.regions.mirror.url),
            ("subdir", "links/outside"),
        ],
        Mode::MultiNodeReaderOnly,
        token_secret(&c.mirror_token),
    );
    let mut node = c.driver.node();
    let pod_uid = "6f1c3a2e-000e-4000-8000-00000000000e";
    let r = match c.kubelet.stage(&mut node, &pv).await {
        Ok(_) => c.kubelet.publish(&mut node, &pv, pod_uid).await.map(|_| ()),
        Err(st) => Err(st),
    };
    assert_fails(
        "NodeStage/NodePublish of a symlink subdir",
        r,
        &[
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ],
        &["links/outside"],
    );
    let target = c.kubelet.target_path(pod_uid, &pv.name);
    assert!(mounts::mounts_at(&target).is_empty());
    let _ = c.kubelet.unpublish(&mut node, &pv, pod_uid).await;
    let _ = c.kubelet.unstage(&mut node, &pv).await;
    no_mounts_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_calls_in_flight_give_one_mount() {
    // A CO may resend a call while the first is still running (after its own restart): each
    // answer is OK or ABORTED, and the node ends up with one FUSE mount and one bind mount.
    let c = Cluster::start().await;
    let sc = c.class(&[("subdir", TRAIN_DIR)]);
    let claim = c.claim("duplicates");
    let req = c.provisioner.create_request(&sc, &claim);
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let mut ctrl = c.driver.controller();
            let req = req.clone();
            tokio::spawn(async move { ctrl.create_volume(req).await })
        })
        .collect();
    let mut volumes = Vec::new();
    for t in creates {
        match t.await.expect("join") {
            Ok(r) => volumes.push(r.into_inner().volume),
            Err(st) => assert_eq!(st.code(), Code::Aborted, "CreateVolume: {st:?}"),
        }
    }
    assert!(
        !volumes.is_empty(),
        "every concurrent CreateVolume was aborted"
    );
    assert!(
        volumes.windows(2).all(|w| w[0] == w[1]),
        "concurrent CreateVolume calls answered different volumes: {volumes:?}"
    );
    let pv = c
        .provisioner
        .pv_from(&claim, &sc, volumes[0].clone().expect("a volume"));

    let staging = c.kubelet.staging_path(&pv.volume_handle);
    std::fs::create_dir_all(&staging).expect("staging dir");
    let stages: Vec<_> = (0..8)
        .map(|_| {
            let mut node = c.driver.node();
            let req = c.kubelet.stage_request(&pv);
            tokio::spawn(async move { node.node_stage_volume(req).await })
        })
        .collect();
    for t in stages {
        if let Err(st) = t.await.expect("join") {
            assert_eq!(st.code(), Code::Aborted, "NodeStage: {st:?}");
        }
    }
    let mut node = c.driver.node();
    ok(
        "NodeStage after the duplicates",
        c.kubelet.stage(&mut node, &pv).await,
    );
    assert_staged(&staging);
    assert_eq!(
        c.mount_daemons(&staging).len(),
        1,
        "one FUSE daemon per staged volume"
    );

    let pod_uid = "6f1c3a2e-000f-4000-8000-00000000000f";
    let target = c.kubelet.target_path(pod_uid, &pv.name);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("target parent");
    let publishes: Vec<_> = (0..8)
        .map(|_| {
            let mut node = c.driver.node();
            let req = c.kubelet.publish_request(&pv, pod_uid, false);
            tokio::spawn(async move { node.node_publish_volume(req).await })
        })
        .collect();
    for t in publishes {
        if let Err(st) = t.await.expect("join") {
            assert_eq!(st.code(), Code::Aborted, "NodePublish: {st:?}");
        }
    }
    ok(
        "NodePublish after the duplicates",
        c.kubelet.publish(&mut node, &pv, pod_uid).await,
    );
    assert_read_only_bind(&target, TRAIN);
    assert_pod_reads(&c, &target, TRAIN);
    tear_down(&c, &mut node, &pv, pod_uid).await;
}

/// The `--cache-dir` and `--cache-size` on the command line of the FUSE daemon of `staging`.
fn mount_cache_flags(c: &Cluster, staging: &Path) -> (std::path::PathBuf, String) {
    let pids = c.mount_daemons(staging);
    assert_eq!(pids.len(), 1, "one FUSE daemon for {}", staging.display());
    let cmd = mirrorfs_e2e::process::cmdline(pids[0]);
    let args: Vec<&str> = cmd.split(' ').collect();
    let after = |flag: &str| {
        let i = args.iter().position(|a| *a == flag);
        let v = i.and_then(|i| args.get(i + 1));
        v.unwrap_or_else(|| panic!("the mount has no {flag}: {cmd}"))
            .to_string()
    };
    (after("--cache-dir").into(), after("--cache-size"))
}

/// The block files of a disk cache: `DIR/<2 hex>/<hex checksum starting with them>`.
fn cached_blocks(dir: &Path) -> Vec<std::path::PathBuf> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = fan.file_name().to_string_lossy().into_owned();
        if name.len() != 2 || !hex(&name) || !fan.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = f.file_name().to_string_lossy().into_owned();
            if hex(&n) && n.starts_with(&name) && f.path().is_file() {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_staged_volume_gets_its_own_disk_cache_deleted_at_unstage() {
    let c = Cluster::start_with(Options {
        cache_size: Some("64MiB".into()),
        ..Options::default()
    })
    .await;
    let root = c.cache_root().expect("a cache root").to_owned();
    let static_pv = |name: &str, subdir: &str| {
        PersistentVolume::static_pv(
            name,
            name,
            &[
                ("volume", MIRROR_VOLUME),
                ("metaAddress", &c.regions.mirror.url),
                ("subdir", subdir),
            ],
            Mode::MultiNodeReaderOnly,
            token_secret(&c.mirror_token),
        )
    };
    // Two volumes of the same mirror volume: two FUSE mounts, two directories (one shared
    // directory would fail the second mount on its lock).
    let pv_a = static_pv("cached-train", TRAIN_DIR);
    let pv_b = static_pv("cached-val", "teams/vision/imagenet/val");
    let mut node = c.driver.node();
    let (uid_a, uid_b) = (
        "6f1c3a2e-00c1-4000-8000-0000000000c1",
        "6f1c3a2e-00c2-4000-8000-0000000000c2",
    );
    let staging_a = ok("NodeStage a", c.kubelet.stage(&mut node, &pv_a).await);
    let staging_b = ok("NodeStage b", c.kubelet.stage(&mut node, &pv_b).await);
    let target_a = ok(
        "NodePublish a",
        c.kubelet.publish(&mut node, &pv_a, uid_a).await,
    );
    ok(
        "NodePublish b",
        c.kubelet.publish(&mut node, &pv_b, uid_b).await,
    );
    let (dir_a, size_a) = mount_cache_flags(&c, &staging_a);
    let (dir_b, size_b) = mount_cache_flags(&c, &staging_b);
    assert_eq!((size_a.as_str(), size_b.as_str()), ("67108864", "67108864"));
    assert_ne!(dir_a, dir_b, "two staged volumes share a disk cache");
    for d in [&dir_a, &dir_b] {
        assert_eq!(d.parent(), Some(root.as_path()), "{}", d.display());
        assert!(d.is_dir(), "the mount did not create {}", d.display());
    }

    // A pod reads the files; the largest (one block) lands in the volume's disk cache.
    assert_pod_reads(&c, &target_a, TRAIN);
    let want = c.data.files_under(TRAIN);
    let big = want
        .values()
        .max_by_key(|b| b.len())
        .expect("files")
        .clone();
    let r = wait_for(
        "the disk cache to hold the largest file's block",
        Duration::from_secs(20),
        || {
            let (dir, big) = (dir_a.clone(), big.clone());
            async move {
                cached_blocks(&dir)
                    .iter()
                    .any(|p| std::fs::read(p).is_ok_and(|b| b == big))
            }
        },
    )
    .await;
    assert!(
        r.is_ok(),
        "{r:?}: blocks in {}: {:?}\n{}",
        dir_a.display(),
        cached_blocks(&dir_a),
        c.logs()
    );

    // Unstage deletes the volume's own directory, and only that one.
    ok(
        "NodeUnpublish b",
        c.kubelet.unpublish(&mut node, &pv_b, uid_b).await,
    );
    ok("NodeUnstage b", c.kubelet.unstage(&mut node, &pv_b).await);
    assert!(
        mounts::mounts_at(&staging_b).is_empty(),
        "b is still staged"
    );
    assert!(!dir_b.exists(), "NodeUnstage left {}", dir_b.display());
    assert!(
        !cached_blocks(&dir_a).is_empty(),
        "the other volume's cache was touched"
    );
    tear_down(&c, &mut node, &pv_a, uid_a).await;
    assert!(!dir_a.exists(), "NodeUnstage left {}", dir_a.display());
    let left: Vec<_> = std::fs::read_dir(&root)
        .expect("the cache root stays")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in the cache root: {left:?}");
}
