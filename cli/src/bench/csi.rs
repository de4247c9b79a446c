//! `mirrorfs bench csi`: the latency of the CSI calls that sit on a user's path, measured against
//! the real driver (`mirrorfs csi`, this executable, on a Unix socket) in front of a mirror
//! region, printed beside their targets.
//!
//! - **CreateVolume** of a directory 10 levels deep in a mirror volume of 1 million inodes: what
//!   the provisioner waits for (the driver resolves the path in the mirror metadata). Each call
//!   is a new claim (a new name), as the provisioner sends it.
//! - **NodePublish** of an already staged volume into a new pod target: what kubelet waits for
//!   (resolve the directory in the FUSE mount, bind mount, remount read-only, verify in
//!   mountinfo). Each caller publishes its own volume (the CO keeps one call in flight per
//!   volume), so 32 callers mean 32 staged volumes, each with its FUSE mount.
//!
//! Both with 1 and 32 concurrent callers, p50 and p99. The source's metadata is created through
//! the library straight into an embedded engine (no gRPC), then a mirror-region meta service
//! bootstraps from it; `--inodes` shrinks it for a smoke run. Needs root and /dev/fuse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use mirrorfs_api::{Ino, Revision};
use mirrorfs_csi::csi::controller_client::ControllerClient;
use mirrorfs_csi::csi::identity_client::IdentityClient;
use mirrorfs_csi::csi::node_client::NodeClient;
use mirrorfs_csi::csi::volume_capability::access_mode::Mode;
use mirrorfs_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use mirrorfs_csi::csi::{self as pb, VolumeCapability};
use mirrorfs_meta::FsMeta;
use mirrorfs_meta::fs::{NewVolume, Owner};
use tonic::transport::Channel;

use crate::local::LocalMeta;

#[derive(clap::Args, Clone, Debug)]
pub struct CsiBenchArgs {
    /// Inodes in the mirrored volume (the deep path, the published directories, and files
    /// spread over directories along the path).
    #[arg(long, default_value_t = 1_000_000)]
    pub inodes: u64,
    /// Depth of the directory CreateVolume checks.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Concurrent callers to measure with, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub callers: Vec<usize>,
    /// CreateVolume calls per measurement (split over the callers).
    #[arg(long, default_value_t = 3200)]
    pub create_calls: usize,
    /// NodePublish calls per measurement (split over the callers; each is followed by an
    /// untimed NodeUnpublish).
    #[arg(long, default_value_t = 640)]
    pub publish_calls: usize,
    /// Where the engines, buckets, kubelet directory and driver state live (default: a
    /// temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const CREATE_P99_TARGET: Duration = Duration::from_millis(10);
const PUBLISH_P99_TARGET: Duration = Duration::from_millis(50);
/// Tasks that fill the source volume, each in its own directory.
const FILL_TASKS: usize = 256;
const VOLUME: &str = "bench";
const MIRROR_VOLUME: &str = "bench-mirror";
const DRIVER: &str = "csi.mirrorfs.io";
/// Longest wait for the mirror's bootstrap, and for the driver to serve.
const WAIT: Duration = Duration::from_secs(900);

pub async fn run(a: CsiBenchArgs) -> anyhow::Result<()> {
    if a.callers.is_empty() || a.callers.contains(&0) {
        bail!("--callers must list counts of at least 1, e.g. 1,32");
    }
    if a.depth == 0 || a.create_calls == 0 || a.publish_calls == 0 {
        bail!("--depth, --create-calls and --publish-calls must be at least 1");
    }
    if !is_root() {
        bail!("bench csi mounts file systems (FUSE and bind mounts): run it as root");
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("bench csi needs /dev/fuse (install fuse3; in a container pass --device /dev/fuse)");
    }
    let temp;
    let dir = match &a.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("mirrorfs-bench-csi-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let max_callers = a.callers.iter().copied().max().unwrap_or(1);
    let result = measure(&a, &dir, max_callers).await;
    sweep(&dir);
    let rows = result?;
    print_table(&a, &rows);
    Ok(())
}

/// One row of the table.
struct Row {
    op: &'static str,
    callers: usize,
    calls: u64,
    p50: Duration,
    p99: Duration,
    /// Calls per second over the measurement (all callers).
    rate: f64,
    target: Option<Duration>,
}

async fn measure(a: &CsiBenchArgs, dir: &Path, max_callers: usize) -> anyhow::Result<Vec<Row>> {
    let source_dir = subdir(dir, "source")?;
    let bucket = subdir(dir, "bucket")?;
    let source = LocalMeta::start(&source_dir).await?;
    let (token, deep, leaves) = fill(&source.fs, a, &bucket, max_callers).await?;
    let head = source.fs.engine().head().await?.revision;

    eprintln!(
        "bench csi: bootstrapping a mirror region from {} ...",
        source.url
    );
    let started = Instant::now();
    let mirror =
        LocalMeta::start_mirror(&subdir(dir, "mirror")?, &source.url, &source.admin_token).await?;
    wait_applied(&mirror, head).await?;
    eprintln!(
        "bench csi: mirror bootstrapped to revision {} in {:.1} s",
        head.0,
        started.elapsed().as_secs_f64()
    );
    let (_, mirror_token) = mirror
        .fs
        .create_volume(NewVolume {
            name: MIRROR_VOLUME.into(),
            source_volume: VOLUME.into(),
            ..Default::default()
        })
        .await?;
    drop(token);

    let driver = DriverProc::start(dir).await?;
    let kubelet = dir.join("kubelet");
    let class = Class {
        meta: mirror.url.clone(),
        token: mirror_token,
    };
    let mut rows = Vec::new();
    for &n in &a.callers {
        eprintln!("bench csi: CreateVolume, {n} caller(s) ...");
        let started = Instant::now();
        let (calls, h) = create_volumes(&driver.channel, &class, &deep, n, a.create_calls).await?;
        let took = started.elapsed();
        rows.push(row(
            "CreateVolume",
            n,
            calls,
            &h,
            took,
            Some(CREATE_P99_TARGET),
        ));
    }

    // The published volumes: one per caller, each staged once.
    eprintln!("bench csi: staging {max_callers} volume(s) ...");
    let mut volumes = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let v = stage(&driver.channel, &class, &kubelet, leaf, i).await?;
        volumes.push(v);
    }
    let mut unpublish = Vec::new();
    for &n in &a.callers {
        eprintln!("bench csi: NodePublish, {n} caller(s) ...");
        let started = Instant::now();
        let (calls, h, u) =
            publish_volumes(&driver.channel, &kubelet, &volumes[..n], a.publish_calls).await?;
        // Each caller alternates publish and unpublish: the rate is of those cycles.
        let took = started.elapsed();
        rows.push(row(
            "NodePublish",
            n,
            calls,
            &h,
            took,
            Some(PUBLISH_P99_TARGET),
        ));
        unpublish.push(row("NodeUnpublish", n, calls, &u, took, None));
    }
    rows.extend(unpublish);
    for v in &volumes {
        let mut node = NodeClient::new(driver.channel.clone());
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: v.id.clone(),
            staging_target_path: v.staging.display().to_string(),
        })
        .await
        .context("NodeUnstage")?;
    }
    drop(driver);
    mirror.stop().await?;
    source.stop().await?;
    Ok(rows)
}

fn row(
    op: &'static str,
    callers: usize,
    calls: u64,
    h: &Histogram<u64>,
    took: Duration,
    target: Option<Duration>,
) -> Row {
    Row {
        op,
        callers,
        calls,
        p50: Duration::from_micros(h.value_at_quantile(0.5)),
        p99: Duration::from_micros(h.value_at_quantile(0.99)),
        rate: calls as f64 / took.as_secs_f64().max(1e-9),
        target,
    }
}

/// Fills source volume `bench`: the deep path `/level-01/.../level-NN`, one leaf directory per
/// publishing caller under it (paths relative to the volume root, as `subdir` takes them),
/// and files up to `--inodes` in directories hanging off every
/// level of the path. Returns the volume token, the deep path and the leaves.
async fn fill(
    fs: &FsMeta,
    a: &CsiBenchArgs,
    bucket: &Path,
    leaves: usize,
) -> anyhow::Result<(String, String, Vec<String>)> {
    let (info, token) = fs
        .create_volume(NewVolume {
            name: VOLUME.into(),
            storage: mirrorfs_api::meta::StorageConfig {
                bucket_url: format!("file://{}", bucket.display()),
                options: Default::default(),
            },
            ..Default::default()
        })
        .await?;
    let vol = fs.authenticate(&info.name, &token).await?;
    let owner = Owner {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    let started = Instant::now();
    let mut levels = vec![vol.root];
    let mut deep = String::new();
    for l in 1..=a.depth {
        let name = format!("level-{l:02}");
        let parent = *levels.last().unwrap_or(&vol.root);
        let d = fs.mkdir(&vol, parent, name.as_bytes(), owner).await?;
        levels.push(Ino(d.ino));
        if !deep.is_empty() {
            deep.push('/');
        }
        deep.push_str(&name);
    }
    let last = *levels.last().unwrap_or(&vol.root);
    let mut leaf_paths = Vec::new();
    for i in 0..leaves {
        let name = format!("vol-{i:03}");
        fs.mkdir(&vol, last, name.as_bytes(), owner).await?;
        leaf_paths.push(format!("{deep}/{name}"));
    }
    let used = 1 + a.depth as u64 + leaves as u64;
    let tasks = FILL_TASKS.min(usize::try_from(a.inodes.saturating_sub(used)).unwrap_or(0));
    let files = a.inodes.saturating_sub(used + tasks as u64);
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (fs, vol, next) = (fs.clone(), vol.clone(), next.clone());
            // Directories hang off every level of the path, so each level is a big directory.
            let parent = levels[t % levels.len()];
            tokio::spawn(async move {
                let d = fs
                    .mkdir(&vol, parent, format!("dir-{t:03}").as_bytes(), owner)
                    .await?;
                let file = Owner {
                    mode: 0o644,
                    ..owner
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let name = format!("file-{i:08}");
                    fs.create(&vol, Ino(d.ino), name.as_bytes(), file, true)
                        .await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let used = fs.statfs(&vol).await?.used_inodes;
    eprintln!(
        "bench csi: source volume filled with {used} inodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((token, deep, leaf_paths))
}

async fn wait_applied(mirror: &LocalMeta, r: Revision) -> anyhow::Result<()> {
    let follower = mirror
        .mirror
        .clone()
        .context("the mirror has no follower")?;
    let mut applied = follower.applied();
    tokio::time::timeout(WAIT, applied.wait_for(|a| *a >= r))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the mirror did not reach revision {r} within {WAIT:?}: {:?}",
                follower.status()
            )
        })?
        .map_err(|_| anyhow::anyhow!("the mirror stopped"))?;
    Ok(())
}

/// The StorageClass side: the mirror meta service and the mirror volume's token.
struct Class {
    meta: String,
    token: String,
}

impl Class {
    fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([("token".to_owned(), self.token.clone())])
    }

    /// CreateVolume as external-provisioner sends it for claim `claim` of directory `path`.
    fn create_request(&self, claim: &str, path: &str) -> pb::CreateVolumeRequest {
        let pv = format!("pvc-{claim}");
        let parameters = HashMap::from([
            ("volume".to_owned(), MIRROR_VOLUME.to_owned()),
            ("metaAddress".to_owned(), self.meta.clone()),
            ("subdir".to_owned(), path.to_owned()),
            ("csi.storage.k8s.io/pvc/name".to_owned(), claim.to_owned()),
            (
                "csi.storage.k8s.io/pvc/namespace".to_owned(),
                "bench".to_owned(),
            ),
            ("csi.storage.k8s.io/pv/name".to_owned(), pv.clone()),
        ]);
        pb::CreateVolumeRequest {
            name: pv,
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability()],
            parameters,
            secrets: self.secrets(),
            ..Default::default()
        }
    }
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeReaderOnly as i32,
        }),
    }
}

/// `calls` CreateVolume calls of new claims for `path`, by `callers` concurrent callers.
async fn create_volumes(
    channel: &Channel,
    class: &Class,
    path: &str,
    callers: usize,
    calls: usize,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let per = calls.div_ceil(callers);
    let run = format!("{callers}");
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut ctrl = ControllerClient::new(channel.clone());
        let reqs: Vec<_> = (0..per + 2)
            .map(|i| class.create_request(&format!("c{run}-{c}-{i}"), path))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            for (i, req) in reqs.into_iter().enumerate() {
                let t = Instant::now();
                ctrl.create_volume(req).await.map_err(|s| {
                    anyhow::anyhow!("CreateVolume: {:?}: {}", s.code(), s.message())
                })?;
                // The first two calls of each caller warm its connection up.
                if i >= 2 {
                    h.record(t.elapsed().as_micros() as u64)?;
                }
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    merge(tasks).await
}

async fn merge(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all.len(), all))
}

/// A volume staged on the node.
struct Staged {
    id: String,
    pv: String,
    context: HashMap<String, String>,
    staging: PathBuf,
}

/// CreateVolume for `path`, then NodeStage under kubelet's layout.
async fn stage(
    channel: &Channel,
    class: &Class,
    kubelet: &Path,
    path: &str,
    i: usize,
) -> anyhow::Result<Staged> {
    let claim = format!("pub-{i:03}");
    let mut ctrl = ControllerClient::new(channel.clone());
    let v = ctrl
        .create_volume(class.create_request(&claim, path))
        .await
        .map_err(|s| anyhow::anyhow!("CreateVolume {path}: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .volume
        .context("CreateVolume answered no volume")?;
    // kubelet names the directory by the SHA-256 of the handle; any 64 hex digits do here.
    let digest = format!("{:016x}", fnv(&v.volume_id)).repeat(4);
    let staging = kubelet
        .join("plugins/kubernetes.io/csi")
        .join(DRIVER)
        .join(digest)
        .join("globalmount");
    std::fs::create_dir_all(&staging)?;
    let mut node = NodeClient::new(channel.clone());
    node.node_stage_volume(pb::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability()),
        secrets: class.secrets(),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeStage {path}: {:?}: {}", s.code(), s.message()))?;
    Ok(Staged {
        id: v.volume_id,
        pv: format!("pvc-{claim}"),
        context: v.volume_context,
        staging,
    })
}

/// `calls` NodePublish calls (each into a new pod's target, followed by NodeUnpublish), by one
/// caller per volume. Returns the publish and unpublish latencies.
async fn publish_volumes(
    channel: &Channel,
    kubelet: &Path,
    volumes: &[Staged],
    calls: usize,
) -> anyhow::Result<(u64, Histogram<u64>, Histogram<u64>)> {
    let per = calls.div_ceil(volumes.len());
    let mut tasks = Vec::new();
    for (c, v) in volumes.iter().enumerate() {
        let mut node = NodeClient::new(channel.clone());
        let (id, pv, context, staging) = (
            v.id.clone(),
            v.pv.clone(),
            v.context.clone(),
            v.staging.display().to_string(),
        );
        let pods = kubelet.join("pods");
        let n = volumes.len();
        tasks.push(tokio::spawn(async move {
            let mut hp = Histogram::<u64>::new(3)?;
            let mut hu = Histogram::<u64>::new(3)?;
            for i in 0..per + 1 {
                let target = pods
                    .join(format!("{n:02}-{c:03}-{i:05}"))
                    .join("volumes/kubernetes.io~csi")
                    .join(&pv)
                    .join("mount");
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let t = Instant::now();
                node.node_publish_volume(pb::NodePublishVolumeRequest {
                    volume_id: id.clone(),
                    staging_target_path: staging.clone(),
                    target_path: target.display().to_string(),
                    volume_capability: Some(capability()),
                    readonly: false,
                    volume_context: context.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow::anyhow!("NodePublish: {:?}: {}", s.code(), s.message()))?;
                let published = t.elapsed();
                let t = Instant::now();
                node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                    volume_id: id.clone(),
                    target_path: target.display().to_string(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("NodeUnpublish: {:?}: {}", s.code(), s.message()))?;
                let unpublished = t.elapsed();
                // The first call of each caller warms its connection up.
                if i >= 1 {
                    hp.record(published.as_micros() as u64)?;
                    hu.record(unpublished.as_micros() as u64)?;
                }
            }
            Ok::<_, anyhow::Error>((hp, hu))
        }));
    }
    let mut hp = Histogram::<u64>::new(3)?;
    let mut hu = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (p, u) = t.await??;
        hp.add(p)?;
        hu.add(u)?;
    }
    Ok((hp.len(), hp, hu))
}

/// `mirrorfs csi` (this executable) on a socket in `dir`, killed by pid when dropped.
struct DriverProc {
    child: Child,
    channel: Channel,
}

impl DriverProc {
    async fn start(dir: &Path) -> anyhow::Result<DriverProc> {
        let exe = std::env::current_exe().context("the running executable")?;
        let socket = dir.join("csi.sock");
        let endpoint = format!("unix://{}", socket.display());
        let log = std::fs::File::create(dir.join("csi.log"))?;
        let mut child = Command::new(&exe)
            .arg("csi")
            .args([
                "--endpoint",
                &endpoint,
                "--role",
                "all",
                "--node-id",
                "bench-node",
            ])
            .arg("--kubelet-dir")
            .arg(dir.join("kubelet"))
            .arg("--state-dir")
            .arg(dir.join("csi-state"))
            .arg("--mount-binary")
            .arg(&exe)
            .env("MIRRORFS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start mirrorfs csi")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = mirrorfs_csi::client::connect(&endpoint, Duration::from_secs(2)).await
                && IdentityClient::new(ch.clone())
                    .probe(pb::ProbeRequest {})
                    .await
                    .is_ok()
            {
                return Ok(DriverProc { child, channel: ch });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mirrorfs csi exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("csi.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mirrorfs csi did not answer Probe on {endpoint} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DriverProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leaves nothing behind under `dir`: lazy unmounts of every mount there (deepest first), then
/// SIGKILL, by pid, of any process still naming a path inside it (FUSE daemons).
fn sweep(dir: &Path) {
    for _ in 0..8 {
        let mut points: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(dir))
            .collect();
        if points.is_empty() {
            break;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let names_dir = std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .any(|a| Path::new(&*String::from_utf8_lossy(a)).starts_with(dir))
            })
            .unwrap_or(false);
        if names_dir {
            let _ = Command::new("kill").args(["-KILL", &name]).status();
        }
    }
}

fn print_table(a: &CsiBenchArgs, rows: &[Row]) {
    println!(
        "CSI latency: mirror volume of {} inodes, directory {} levels deep; real driver, FUSE and bind mounts",
        a.inodes, a.depth
    );
    println!(
        "machine: {} cores, load average {} (the driver, the mirror meta service and the callers share them)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "{:<14} {:>7} {:>7} {:>9} {:>9} {:>9}  {:<12} result",
        "call", "callers", "calls", "p50 ms", "p99 ms", "calls/s", "target"
    );
    for r in rows {
        let (target, verdict) = match r.target {
            Some(t) => (
                format!("p99 < {} ms", t.as_millis()),
                if r.p99 < t { "ok" } else { "MISSED" },
            ),
            None => ("-".to_owned(), ""),
        };
        println!(
            "{:<14} {:>7} {:>7} {:>9.2} {:>9.2} {:>9.0}  {:<12} {verdict}",
            r.op,
            r.callers,
            r.calls,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.rate,
            target
        );
    }
}

fn subdir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn is_root() -> bool {
    // The effective uid, without libc: /proc/self/status "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// FNV-1a.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
