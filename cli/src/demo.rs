//! `mirrorfs demo`: the system's main job on embedded defaults, narrated. It starts a source
//! region's meta service, writes a small data set (a tree, and files whose blocks go to the
//! source region's bucket) into a volume, starts a mirror region that follows the source, checks
//! paths on the mirror the way the CSI driver does before mounting, shows that the mirror
//! refuses writes, reads the data in the mirror region before and after replication has copied
//! it into the mirror's own bucket, then serves the CSI driver and calls it as Kubernetes does:
//! a claim on an existing directory is provisioned and one on a missing directory fails fast,
//! the volume is staged and published read-only into a pod's directory, where the data reads
//! back byte for byte and a write fails. Last, how fresh the mirror's metadata is. Ctrl-C at any
//! point unmounts and removes everything.

mod csi;
mod data;

use std::time::{Duration, Instant};

use mirrorfs_api::meta::{self as pb, resolve_reply};
use mirrorfs_api::{Ino, Revision};
use mirrorfs_meta::client;
use mirrorfs_meta::follower::FollowerHandle;

use crate::local::LocalMeta;

#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Keep the service running after the demo (until Ctrl-C) so it can be explored with
    /// `mirrorfs status` and `mirrorfs volume list`.
    #[arg(long)]
    pub keep_running: bool,
}

const VOLUME: &str = "datasets";
const TREE: &[&str] = &[
    "teams/vision/imagenet/train",
    "teams/vision/imagenet/val",
    "teams/speech/librispeech/clean",
    "models/resnet50",
];

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    csi::check_node_prerequisites()?;
    let dir = tempfile::Builder::new()
        .prefix("mirrorfs-demo-")
        .tempdir()?;
    let mut kube = None;
    let r = tokio::select! {
        r = story(&a, dir.path(), &mut kube) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: unmounting and removing what the demo made");
            Ok(())
        }
    };
    let cleaned = match kube.take() {
        Some(k) => k.stop().await,
        None => Ok(()),
    };
    r?;
    cleaned?;
    println!("done; removed {}", dir.path().display());
    Ok(())
}

async fn story(
    a: &DemoArgs,
    dir: &std::path::Path,
    kube: &mut Option<csi::Kubernetes>,
) -> anyhow::Result<()> {
    let meta = LocalMeta::start(dir).await?;
    println!(
        "1. source region: meta service on {} (embedded engine in {})",
        meta.url,
        dir.display()
    );

    let channel = client::connect(&meta.url, Duration::from_secs(5)).await?;
    let mut admin = client::admin(channel.clone(), &meta.admin_token)?;
    let source_bucket = data::bucket_url(&dir.join("bucket-region-a"))?;
    let created = admin
        .create_volume(pb::CreateVolumeRequest {
            name: VOLUME.into(),
            storage: Some(pb::StorageConfig {
                bucket_url: source_bucket.clone(),
                options: Default::default(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let volume_id = created.volume.as_ref().map_or(0, |v| v.id);
    println!(
        "2. created volume {VOLUME:?} with its blocks in {source_bucket} (its token is shown once and stored only as a hash)"
    );

    let mut fs = client::fs(channel.clone(), &created.token)?;
    let vref = || {
        Some(pb::VolumeRef {
            volume: VOLUME.into(),
        })
    };
    let started = Instant::now();
    let mut files = 0;
    let mut last_dir = Ino::ROOT.0;
    for path in TREE {
        let mut parent = Ino::ROOT.0;
        for name in path.split('/') {
            let req = pb::MkdirRequest {
                volume: vref(),
                parent,
                name: name.into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            };
            parent = match fs.mkdir(req).await {
                Ok(r) => r.into_inner().attr.map_or(0, |a| a.ino),
                Err(e) if e.code() == tonic::Code::AlreadyExists => fs
                    .lookup(pb::LookupRequest {
                        volume: vref(),
                        parent,
                        name: name.into(),
                    })
                    .await?
                    .into_inner()
                    .attr
                    .map_or(0, |a| a.ino),
                Err(e) => return Err(e.into()),
            };
        }
        for i in 0..100 {
            fs.create(pb::CreateRequest {
                volume: vref(),
                parent,
                name: format!("part-{i:05}.bin").into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
            })
            .await?;
            files += 1;
        }
        last_dir = parent;
    }
    println!(
        "3. wrote a data set tree: {} directories, {files} files in {:.0} ms (each create durable)",
        TREE.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let source_blocks = data::open(&source_bucket)?;
    let started = Instant::now();
    let written =
        data::write_files(&mut fs, VOLUME, volume_id, &source_blocks, last_dir, 4).await?;
    let inos = &written.inos;
    println!(
        "   and {} files of data under /{}: {:.0} MB as 1 MiB checksummed blocks in the source bucket, in {:.0} ms",
        inos.len(),
        TREE[TREE.len() - 1],
        written.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64() * 1000.0
    );

    // The mirror region: its own meta service and engine, following the source's changelog.
    let mirror_dir = dir.join("mirror-region");
    std::fs::create_dir_all(&mirror_dir)?;
    let started = Instant::now();
    let mirror = LocalMeta::start_mirror(&mirror_dir, &meta.url, &meta.admin_token).await?;
    let follower = mirror
        .mirror
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the mirror has no follower"))?;
    let head = admin
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .revision;
    wait_applied(&follower, head).await?;
    println!(
        "4. mirror region: meta service on {} bootstrapped to source revision {head} in {:.0} ms",
        mirror.url,
        started.elapsed().as_secs_f64() * 1000.0
    );

    let mchannel = client::connect(&mirror.url, Duration::from_secs(5)).await?;
    let mut madmin = client::admin(mchannel.clone(), &mirror.admin_token)?;
    let mirror_bucket = data::bucket_url(&mirror_dir.join("bucket-region-b"))?;
    let mvol = madmin
        .create_volume(pb::CreateVolumeRequest {
            name: VOLUME.into(),
            source_volume: VOLUME.into(),
            storage: Some(pb::StorageConfig {
                bucket_url: mirror_bucket.clone(),
                options: Default::default(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "5. mirror volume {VOLUME:?} exposes the source volume, with its own token and its own bucket {mirror_bucket}"
    );
    let mut mfs = client::fs(mchannel.clone(), &mvol.token)?;

    println!("6. path checks on the mirror, as the CSI driver makes them before mounting:");
    for path in ["/teams/vision/imagenet/train", "/teams/vision/coco/train"] {
        let req = pb::ResolveRequest {
            volume: vref(),
            path: path.into(),
        };
        let r = mfs.resolve(req.clone()).await?.into_inner();
        let lag = follower.status();
        match r.result {
            Some(resolve_reply::Result::Found(attr)) => println!(
                "   {path}: exists (inode {}) at mirror revision {}, lag {} revisions",
                attr.ino, r.revision, lag.lag_revisions
            ),
            Some(resolve_reply::Result::Missing(m)) => {
                let in_source = matches!(
                    fs.resolve(req).await?.into_inner().result,
                    Some(resolve_reply::Result::Found(_))
                );
                println!(
                    "   {path}: MISSING at mirror revision {} (lag {} revisions): {:?} has no entry {:?}; the source {} it",
                    r.revision,
                    lag.lag_revisions,
                    m.existing_prefix,
                    m.missing_component,
                    if in_source { "has" } else { "does not have" }
                )
            }
            None => anyhow::bail!("the service answered resolve with no result"),
        }
    }

    let refused = mfs
        .mkdir(pb::MkdirRequest {
            volume: vref(),
            parent: Ino::ROOT.0,
            name: "scratch".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await;
    match refused {
        Err(e) => println!("7. a write on the mirror is refused: {}", e.message()),
        Ok(_) => anyhow::bail!("the mirror accepted a write"),
    }

    // Data in the mirror region: local bucket first, the source bucket until replicated.
    let blocks = data::blocks_of(&mut mfs, VOLUME, inos).await?;
    let (reader, _) = data::reader(
        source_blocks,
        data::open(&mirror_bucket)?,
        client::replication(mchannel.clone(), &mvol.token)?,
        VOLUME,
        volume_id,
    );
    let (local, fallback) = data::read_all(&reader, &blocks).await?;
    println!(
        "8. reading the data in the mirror region before replication: {local} blocks from the mirror bucket, {fallback} from the source bucket (each verified by its BLAKE3 checksum)"
    );
    let (copied, took) = data::replicate(
        client::replication(mchannel.clone(), &mirror.admin_token)?,
        madmin.clone(),
    )
    .await?;
    println!(
        "9. a replication worker copied {:.0} MB into the mirror bucket in {:.0} ms ({:.0} MB/s), each block verified",
        copied as f64 / 1e6,
        took.as_secs_f64() * 1000.0,
        copied as f64 / 1e6 / took.as_secs_f64().max(1e-3)
    );
    let (local, fallback) = data::read_all(&reader, &blocks).await?;
    println!(
        "   reading again: {local} blocks from the mirror bucket, {fallback} from the source bucket"
    );

    // The CSI driver, called as Kubernetes calls it.
    let k = kube.insert(csi::Kubernetes::start(dir).await?);
    println!(
        "10. the CSI driver ({}) serves on a local socket; as the external-provisioner:",
        mirrorfs_csi::DRIVER_NAME
    );
    let data_dir = TREE[TREE.len() - 1];
    let volume_id = k
        .create_volume("resnet50", VOLUME, &mirror.url, data_dir, &mvol.token)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "CreateVolume of an existing directory failed: {}",
                e.message()
            )
        })?;
    println!("    claim default/resnet50 (ReadOnlyMany, subdir {data_dir}) -> volume {volume_id}");
    match k
        .create_volume(
            "coco",
            VOLUME,
            &mirror.url,
            "teams/vision/coco/train",
            &mvol.token,
        )
        .await
    {
        Err(e) => println!(
            "    claim default/coco (subdir teams/vision/coco/train) fails fast with {:?}:\n      {}",
            e.code(),
            e.message()
        ),
        Ok(id) => anyhow::bail!("CreateVolume accepted a missing directory as {id}"),
    }
    let target = k.stage_and_publish(&volume_id, &mvol.token).await?;
    println!(
        "11. as the kubelet: staged (one read-only FUSE mount per node) and published into the pod's directory\n    {} (mounted {})",
        target.display(),
        match csi::mounted_read_only(&target) {
            Some(true) => "read-only, per /proc/self/mountinfo",
            Some(false) => "READ-WRITE",
            None => "not at all",
        }
    );
    let started = Instant::now();
    for (name, expected) in &written.files {
        let bytes = std::fs::read(target.join(name))?;
        let same = blake3::hash(&bytes) == *expected;
        println!(
            "    pod reads {name}: {:.1} MB, {}",
            bytes.len() as f64 / 1e6,
            if same {
                "identical to what the source wrote"
            } else {
                "DIFFERENT from the source"
            }
        );
        anyhow::ensure!(
            same,
            "{name} read through the published path differs from the source"
        );
    }
    println!(
        "    ({:.0} ms for the four files through the mount)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    match std::fs::write(target.join("scratch.txt"), b"x") {
        Err(e) => println!("    pod writes scratch.txt: {e}"),
        Ok(()) => anyhow::bail!("a write through the published mirror path succeeded"),
    }

    // Freshness: the time from a source acknowledgement to the mirror applying it.
    let mut lags = Vec::new();
    for i in 0..20 {
        let r = fs
            .mkdir(pb::MkdirRequest {
                volume: vref(),
                parent: Ino::ROOT.0,
                name: format!("fresh-{i}").into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await?
            .into_inner();
        let acked = Instant::now();
        wait_applied(&follower, mirrorfs_api::Revision(r.revision)).await?;
        lags.push(acked.elapsed());
    }
    lags.sort();
    println!(
        "12. metadata freshness: a source change is applied in the mirror {:.1} ms (median of 20) after the source acknowledged it",
        lags[lags.len() / 2].as_secs_f64() * 1000.0
    );
    let st = madmin.status(pb::StatusRequest {}).await?.into_inner();
    if let Some(m) = st.mirror {
        println!(
            "13. mirror status: {} · applied source revision {} of {} · lag {} revisions, {:.3} s · source reachable: {}",
            m.state,
            m.applied_revision,
            m.source_revision,
            m.lag_revisions,
            m.lag_seconds,
            m.source_reachable
        );
    }

    if let Some(r) = st.replication {
        println!(
            "    replication: {} blocks waiting, {} leased, {} copy tasks completed since the mirror started",
            r.ready, r.leased, r.completed_total
        );
    }

    if a.keep_running {
        let token_file = dir.join("admin.token");
        crate::token::write_new(&token_file, &meta.admin_token)?;
        println!(
            "\nserving until Ctrl-C; try:\n  ls -l {}\n  mirrorfs status --meta {} --admin-token-file {}",
            target.display(),
            meta.url,
            token_file.display()
        );
        std::future::pending::<()>().await;
    }
    if let Some(k) = kube.take() {
        k.stop().await?;
    }
    mirror.stop().await?;
    meta.stop().await?;
    Ok(())
}

/// Waits (at most 30 s) until the mirror has applied source revision `r`.
async fn wait_applied(follower: &FollowerHandle, r: impl Into<Revision>) -> anyhow::Result<()> {
    let r = r.into();
    let mut applied = follower.applied();
    tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|a| *a >= r))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the mirror did not reach source revision {r} within 30 s: {:?}",
                follower.status()
            )
        })?
        .map_err(|_| anyhow::anyhow!("the mirror stopped"))?;
    Ok(())
}
