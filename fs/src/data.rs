//! Where a volume's blocks are written and read. A source volume writes to and reads from its
//! bucket; a mirror volume is read through a [`RegionReader`]: the mirror region's bucket
//! first, the source bucket as the verified fallback, and repairs queued with the mirror
//! cluster ([`QueueRepairs`]). Every block returned has been checked against its checksum.
//!
//! With a [`DiskCache`] (`mirrorfs mount --cache-dir`), reads try it first; a block fetched
//! from a bucket, and a block this client writes, is then cached on disk in the background
//! (written blocks too: a file is often read back, also after a remount).

use std::sync::Arc;

use bytes::Bytes;
use mirrorfs_api::VolumeId;
use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::{OpenVolumeReply, StorageConfig, replication_client::ReplicationClient};
use mirrorfs_objstore::{
    BlockInfo, Bucket, BucketConfig, Credentials, NoRepair, ObjMetrics, RegionReader, RepairSink,
    new_block_id,
};
use mirrorfs_replicator::repair::QueueRepairs;

use crate::disk_cache::DiskCache;
use crate::error::FsError;

/// How to reach a volume's buckets (see [`Blocks::for_volume`]).
#[derive(Clone, Default)]
pub struct BlockOptions {
    /// For the volume's own bucket (`storage`): the source bucket of a source volume, the
    /// mirror region's bucket of a mirror volume. None: the backend's defaults.
    pub credentials: Option<Credentials>,
    /// For a mirror volume's source bucket (`source_storage`). None: `credentials`.
    pub source_credentials: Option<Credentials>,
    /// Where a mirror volume's reads send repairs (see [`queue_repairs`]). None: dropped.
    pub repair: Option<Arc<dyn RepairSink>>,
    pub metrics: ObjMetrics,
    /// The local disk cache of blocks in front of the buckets. None: none.
    pub disk_cache: Option<Arc<DiskCache>>,
}

#[derive(Clone)]
enum Reader {
    Bucket(Bucket),
    Region(RegionReader),
}

/// The block store of one volume. Cheap to clone.
#[derive(Clone)]
pub struct Blocks {
    volume_id: VolumeId,
    write: Option<Bucket>,
    read: Reader,
    disk: Option<Arc<DiskCache>>,
}

impl Blocks {
    /// A read-write volume whose blocks live in `bucket`.
    pub fn source(volume_id: VolumeId, bucket: Bucket) -> Self {
        Self {
            volume_id,
            write: Some(bucket.clone()),
            read: Reader::Bucket(bucket),
            disk: None,
        }
    }

    /// A read-only (mirror) volume read through `reader`.
    pub fn mirror(volume_id: VolumeId, reader: RegionReader) -> Self {
        Self {
            volume_id,
            write: None,
            read: Reader::Region(reader),
            disk: None,
        }
    }

    /// The same store with `disk` (if any) as the local disk cache in front of it.
    pub fn with_disk_cache(mut self, disk: Option<Arc<DiskCache>>) -> Self {
        self.disk = disk;
        self
    }

    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The buckets `OpenVolume` names for the volume: a source volume writes to and reads
    /// from `storage`; a mirror volume reads `storage` (the mirror region's bucket) first and
    /// falls back to `source_storage`, or reads `source_storage` alone when the mirror shares
    /// the source bucket.
    pub fn for_volume(v: &OpenVolumeReply, opts: BlockOptions) -> Result<Self, FsError> {
        let volume_id = VolumeId(v.volume_id);
        let open = |s: &StorageConfig, creds: Option<Credentials>| -> Result<Bucket, FsError> {
            let cfg = BucketConfig::from_storage(s, creds)?;
            Ok(Bucket::open(&cfg)?)
        };
        let disk = opts.disk_cache;
        if !v.read_only {
            let storage = v.storage.clone().unwrap_or_default();
            return Ok(
                Self::source(volume_id, open(&storage, opts.credentials)?).with_disk_cache(disk)
            );
        }
        let storage = v.storage.clone().unwrap_or_default();
        let source_storage = v.source_storage.clone().unwrap_or_else(|| storage.clone());
        let source_creds = opts.source_credentials.or_else(|| opts.credentials.clone());
        let source = open(&source_storage, source_creds)?;
        let local = if storage.bucket_url.is_empty() || storage == source_storage {
            None
        } else {
            Some(open(&storage, opts.credentials)?)
        };
        let repair = opts.repair.unwrap_or_else(|| Arc::new(NoRepair));
        Ok(Self::mirror(
            volume_id,
            RegionReader::new(source, local, repair, opts.metrics),
        )
        .with_disk_cache(disk))
    }

    pub fn volume_id(&self) -> VolumeId {
        self.volume_id
    }

    pub fn writable(&self) -> bool {
        self.write.is_some()
    }

    /// A whole block, verified against `b`'s size and checksum: from the disk cache, else
    /// from the buckets (and then cached on disk in the background).
    pub async fn get(&self, b: &BlockInfo) -> Result<Bytes, FsError> {
        if let Some(disk) = &self.disk
            && let Some(data) = disk.get(b).await
        {
            return Ok(data);
        }
        let data = match &self.read {
            Reader::Bucket(bucket) => bucket.get_block(b).await?,
            Reader::Region(r) => r.read(b).await?.0,
        };
        if let Some(disk) = &self.disk {
            disk.put(b, data.clone());
        }
        Ok(data)
    }

    /// Stores `data` as a new block.
    pub async fn put(&self, data: Bytes) -> Result<BlockInfo, FsError> {
        let Some(bucket) = &self.write else {
            return Err(FsError::ReadOnly {
                volume: format!("id {}", self.volume_id),
            });
        };
        let id = new_block_id(self.volume_id);
        let size = data.len() as u64;
        let checksum = bucket.put_block(&id, data.clone()).await?;
        let info = BlockInfo { id, size, checksum };
        if let Some(disk) = &self.disk {
            disk.put(&info, data);
        }
        Ok(info)
    }
}

/// The repair sink of mirror volume `mirror_volume` (whose token `client` carries): blocks a
/// reader finds missing or bad in the mirror bucket are queued for a priority copy.
/// `volume_id` is `OpenVolumeReply.volume_id` (the source volume's id).
pub fn queue_repairs(
    client: ReplicationClient<Authed>,
    mirror_volume: &str,
    volume_id: u64,
) -> Arc<dyn RepairSink> {
    Arc::new(QueueRepairs::new(client, mirror_volume, volume_id))
}
