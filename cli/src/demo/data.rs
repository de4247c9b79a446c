//! The data half of the demo: file contents as checksummed blocks in the source region's bucket,
//! read in the mirror region (falling back to the source bucket until replication has copied
//! them), and replicated into the mirror region's own bucket by a worker.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::{self as pb, fs_client::FsClient};
use mirrorfs_api::{BlockId, Checksum, VolumeId};
use mirrorfs_objstore::{
    BlockInfo, Bucket, BucketConfig, ObjMetrics, ReadSource, RegionReader, new_block_id,
};
use mirrorfs_replicator::repair::QueueRepairs;
use mirrorfs_replicator::worker::{Worker, WorkerConfig};
use tokio::sync::watch;

/// Blocks per file and their size.
const BLOCKS_PER_FILE: u64 = 4;
const BLOCK: usize = 1 << 20;

pub fn bucket_url(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    Ok(format!("file://{}", dir.display()))
}

pub fn open(url: &str) -> anyhow::Result<Bucket> {
    Ok(Bucket::open(&BucketConfig::new(url))?)
}

/// Files written by [`write_files`]: inodes, names with the BLAKE3 of their contents, bytes.
pub struct Written {
    pub inos: Vec<u64>,
    pub files: Vec<(String, blake3::Hash)>,
    pub bytes: u64,
}

/// Writes `files` files of random contents under directory `parent`: blocks into `bucket`,
/// then their extents.
pub async fn write_files(
    fs: &mut FsClient<Authed>,
    volume: &str,
    volume_id: u64,
    bucket: &Bucket,
    parent: u64,
    files: usize,
) -> anyhow::Result<Written> {
    let vref = || {
        Some(pb::VolumeRef {
            volume: volume.into(),
        })
    };
    let mut out = Written {
        inos: Vec::new(),
        files: Vec::new(),
        bytes: 0,
    };
    for f in 0..files {
        let name = format!("weights-{f:02}.bin");
        let mut hasher = blake3::Hasher::new();
        let attr = fs
            .create(pb::CreateRequest {
                volume: vref(),
                parent,
                name: name.clone().into(),
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .attr
            .ok_or_else(|| anyhow::anyhow!("create answered without attributes"))?;
        let mut extents = Vec::new();
        for b in 0..BLOCKS_PER_FILE {
            let mut data = vec![0u8; BLOCK];
            rand::Rng::fill(&mut rand::rng(), &mut data[..]);
            hasher.update(&data);
            let id = new_block_id(VolumeId(volume_id));
            let sum = bucket.put_block(&id, Bytes::from(data)).await?;
            extents.push(pb::Extent {
                offset: b * BLOCK as u64,
                length: BLOCK as u64,
                block_id: id.as_str().into(),
                block_offset: 0,
                block_size: BLOCK as u64,
                checksum: sum.0.to_vec(),
            });
            out.bytes += BLOCK as u64;
        }
        fs.commit_extents(pb::CommitExtentsRequest {
            volume: vref(),
            ino: attr.ino,
            extents,
            new_size: BLOCKS_PER_FILE * BLOCK as u64,
            mtime: None,
        })
        .await?;
        out.inos.push(attr.ino);
        out.files.push((name, hasher.finalize()));
    }
    Ok(out)
}

/// The blocks of `inos`, as a reader in the mirror region sees them (from the mirror's metadata).
pub async fn blocks_of(
    fs: &mut FsClient<Authed>,
    volume: &str,
    inos: &[u64],
) -> anyhow::Result<Vec<BlockInfo>> {
    let mut out = Vec::new();
    for ino in inos {
        let r = fs
            .read_extents(pb::ReadExtentsRequest {
                volume: Some(pb::VolumeRef {
                    volume: volume.into(),
                }),
                ino: *ino,
                offset: 0,
                length: u64::MAX / 2,
            })
            .await?
            .into_inner();
        for e in r.extents {
            out.push(BlockInfo {
                id: BlockId::parse(&e.block_id)?,
                size: e.block_size,
                checksum: Checksum::from_slice(&e.checksum)?,
            });
        }
    }
    Ok(out)
}

/// A mirror-region reader for a mirror volume whose repairs go to the mirror's queue.
pub fn reader(
    source: Bucket,
    local: Bucket,
    replication: mirrorfs_api::meta::replication_client::ReplicationClient<Authed>,
    mirror_volume: &str,
    volume_id: u64,
) -> (RegionReader, ObjMetrics) {
    let metrics = ObjMetrics::default();
    let repairs = QueueRepairs::new(replication, mirror_volume, volume_id);
    (
        RegionReader::new(source, Some(local), Arc::new(repairs), metrics.clone()),
        metrics,
    )
}

/// Reads every block; returns how many came from the local bucket and how many fell back.
pub async fn read_all(
    reader: &RegionReader,
    blocks: &[BlockInfo],
) -> anyhow::Result<(usize, usize)> {
    let (mut local, mut fallback) = (0, 0);
    for b in blocks {
        match reader.read(b).await? {
            (_, ReadSource::Local) => local += 1,
            (_, ReadSource::Fallback) => fallback += 1,
        }
    }
    Ok((local, fallback))
}

/// Runs a replication worker until the mirror's queue is empty; returns the bytes it copied and
/// how long it took.
pub async fn replicate(
    replication: mirrorfs_api::meta::replication_client::ReplicationClient<Authed>,
    mut admin: mirrorfs_api::meta::admin_client::AdminClient<Authed>,
) -> anyhow::Result<(u64, Duration)> {
    let mut config = WorkerConfig::new("demo");
    config.wait = Duration::from_millis(200);
    let worker = Worker::new(replication, config);
    let stats = worker.stats();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { worker.run(rx).await });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let st = admin
            .status(pb::StatusRequest {})
            .await?
            .into_inner()
            .replication;
        let idle = st.is_some_and(|r| {
            r.ready == 0 && r.leased == 0 && r.full_syncs == 0 && r.enqueuer_lag <= 2
        });
        if idle && stats.finished() > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replication did not finish within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    stop.send_replace(true);
    task.await??;
    Ok((stats.bytes.load(std::sync::atomic::Ordering::Relaxed), took))
}
