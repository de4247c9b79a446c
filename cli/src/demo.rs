//! `mirrorfs demo`: the system's main job on embedded defaults, narrated. It starts a local
//! metadata service, writes a small data set's tree into a volume, checks paths the way the CSI
//! driver does before mounting, and follows the changelog the way a mirror region does.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mirrorfs_api::Ino;
use mirrorfs_api::meta::{self as pb, resolve_reply};
use mirrorfs_meta::client;

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
    let dir = tempfile::Builder::new()
        .prefix("mirrorfs-demo-")
        .tempdir()?;
    let meta = LocalMeta::start(dir.path()).await?;
    println!(
        "1. source region: meta service on {} (embedded engine in {})",
        meta.url,
        dir.path().display()
    );

    let channel = client::connect(&meta.url, Duration::from_secs(5)).await?;
    let mut admin = client::admin(channel.clone(), &meta.admin_token)?;
    let created = admin
        .create_volume(pb::CreateVolumeRequest {
            name: VOLUME.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("2. created volume {VOLUME:?} (its token is shown once and stored only as a hash)");

    let mut fs = client::fs(channel.clone(), &created.token)?;
    let vref = || {
        Some(pb::VolumeRef {
            volume: VOLUME.into(),
        })
    };
    let started = Instant::now();
    let mut files = 0;
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
    }
    println!(
        "3. wrote a data set tree: {} directories, {files} files in {:.0} ms (each create durable)",
        TREE.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );

    println!("4. path checks, as the CSI driver makes them before mounting:");
    for path in ["/teams/vision/imagenet/train", "/teams/vision/coco/train"] {
        let r = fs
            .resolve(pb::ResolveRequest {
                volume: vref(),
                path: path.into(),
            })
            .await?
            .into_inner();
        match r.result {
            Some(resolve_reply::Result::Found(attr)) => {
                println!(
                    "   {path}: exists (inode {}, at revision {})",
                    attr.ino, r.revision
                )
            }
            Some(resolve_reply::Result::Missing(m)) => println!(
                "   {path}: does not exist at revision {}: {:?} has no entry {:?}",
                r.revision, m.existing_prefix, m.missing_component
            ),
            None => anyhow::bail!("the service answered resolve with no result"),
        }
    }

    let mut changelog = client::changelog(channel.clone(), &meta.admin_token)?;
    let status = admin.status(pb::StatusRequest {}).await?.into_inner();
    let mut stream = changelog
        .watch(pb::WatchRequest { from_revision: 1 })
        .await?
        .into_inner();
    let (mut entries, mut mutations, mut last) = (0u64, 0usize, 0);
    while last < status.revision {
        let e = stream
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("changelog ended early"))??;
        anyhow::ensure!(
            e.revision == last + 1,
            "gap in the changelog at {}",
            e.revision
        );
        last = e.revision;
        entries += 1;
        mutations += e.mutations.len();
    }
    println!(
        "5. changelog a mirror region follows: revisions 1..={last}, {entries} transactions, {mutations} mutations, no gaps"
    );
    println!(
        "6. status: cluster {} · engine {} · revision {} · {} volume(s)",
        status.cluster_id, status.engine, status.revision, status.volumes
    );
    drop(stream);

    if a.keep_running {
        let token_file = dir.path().join("admin.token");
        crate::token::write_new(&token_file, &meta.admin_token)?;
        println!(
            "\nserving until Ctrl-C; try:\n  mirrorfs status --meta {} --admin-token-file {}",
            meta.url,
            token_file.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    meta.stop().await?;
    println!("done; removed {}", dir.path().display());
    Ok(())
}
