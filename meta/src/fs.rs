//! File-system metadata over an [`Engine`]: volumes, inodes, directory entries, symlinks and
//! file extents, with the POSIX rules the FUSE client relies on.
//!
//! This module owns the public API ([`FsMeta`]) and the rules of each operation. Its children
//! own the pieces: `keys` (key layout and record codec), `names` (validation of names, paths
//! and symlink targets), `txn` (the read-check-commit cycle and its retries), `alloc` (inode
//! numbers in batches), `usage` (volume usage without a hot key), `extents` (extent
//! arithmetic) and `locks` (striped in-process locks).
//!
//! Every operation that changes more than one record is ONE engine transaction whose compares
//! cover every record it read; on a conflict it runs again (bounded, with randomised backoff)
//! and then fails with [`MetaError::Contention`]. Range reads are covered by an inode compare:
//! every change of a directory's entries writes the directory's inode, and every change of a
//! file's extents writes the file's inode. An operation that fails with a file-system error
//! first checks that what it read still holds (else it runs again), so errors too describe one
//! consistent state.
//!
//! Semantics worth knowing (the rest is POSIX):
//! - Directory `nlink` is 2 + the number of subdirectories; file `nlink` counts hard links.
//! - `link` to a directory fails with [`MetaError::PermissionDenied`] (POSIX `EPERM`).
//! - `create` with `exclusive = false` returns an existing regular file unchanged; an existing
//!   directory or symlink is [`MetaError::Exists`].
//! - `unlink` and a replacing `rename` remove the inode and its extents when its last link
//!   goes; nothing is kept for open handles (the client layer owns that).
//! - `commit_extents` sets the size to `max(old size, new_size)`: it never shrinks a file (a
//!   stale writer cannot undo a concurrent extension); shrinking is `setattr(size)`.
//! - `commit_extents` takes at most 1024 extents; later extents of one commit win over earlier
//!   ones where they overlap.
//! - `read_extents` returns whole stored extents (not clipped to the asked range).
//! - `used_bytes` is the sum of the logical sizes of regular files; `used_inodes` counts every
//!   inode, the root included. Usage is exact at every revision; capacity limits are enforced
//!   per process against a view at most one second old (see `usage`).
//! - Error precedence: names are checked first, then the directories named, then the entries.

pub mod keys;
pub mod mirror;
pub mod names;
pub mod watch;

mod alloc;
mod blocks;
mod extents;
mod locks;
mod txn;
mod usage;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use mirrorfs_api::meta::{Attr, Entry, Extent, FileKind, StorageConfig, Timestamp, VolumeInfo};
use mirrorfs_api::records::{self, ClusterInfo, Counter, Inode, VolumeName};
use mirrorfs_api::{Ino, Revision, VolumeId};
use rand::RngCore;
use tokio::sync::OnceCell;

use crate::engine::{Compare, Engine, KeyValue, Mutation, Txn, TxnOutcome, prefix_end};
use crate::error::{MetaError, Result};

use self::alloc::InodePool;
use self::txn::{Backoff, Delta, Tx, decode_dentry, decode_inode, kind};
use self::usage::{Capacity, Totals, UsageState};

/// An authenticated volume, as the operations below take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    pub root: Ino,
}

/// Attributes to change in [`FsMeta::setattr`]; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// Who creates an inode and with which permission bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The result of unlink, rmdir and the replaced side of rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub ino: Ino,
    /// 0 when the inode itself is gone.
    pub remaining_nlink: u32,
}

/// The result of [`FsMeta::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    Found(Attr),
    Missing {
        /// The longest prefix that exists, normalised ("/" for the root).
        existing_prefix: String,
        /// The first component that does not exist (or cannot be entered).
        missing_component: String,
        /// `Some` when the prefix ends at a file or symlink rather than a directory.
        blocking_kind: Option<mirrorfs_api::meta::FileKind>,
    },
}

/// A page of a directory listing.
#[derive(Clone, Debug, PartialEq)]
pub struct DirPage {
    pub entries: Vec<Entry>,
    pub more: bool,
}

/// What a volume uses and may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub used_inodes: u64,
    pub capacity_bytes: u64,
    pub capacity_inodes: u64,
}

/// Parameters of a new volume.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewVolume {
    pub name: String,
    pub storage: StorageConfig,
    pub capacity_bytes: u64,
    pub capacity_inodes: u64,
    /// Mirror clusters only: the source volume the new mirror volume exposes.
    pub source_volume: String,
}

/// Entries of a `readdir` page when the caller asks for 0.
pub const READDIR_DEFAULT: usize = 1000;
/// Most entries of a `readdir` page.
pub const READDIR_MAX: usize = 10_000;
/// Inode reads in flight for one `readdir_plus` page (each is a round trip on etcd).
const ATTR_READS_IN_FLIGHT: usize = 64;
/// Deepest directory chain walked when checking a rename for cycles.
const MAX_DEPTH: usize = 1 << 16;
/// Extents read per engine call.
const EXTENT_PAGE: usize = 256;
/// Stored extents a write may overlap before it stops reading them one by one (see
/// `commit_extents_once`).
const SMALL_OVERWRITE: usize = 64;

/// File-system metadata of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct FsMeta {
    engine: Arc<dyn Engine>,
    inner: Arc<Inner>,
}

struct Inner {
    /// A mirror cluster: the mirrored keyspace is the follower's alone.
    mirror: bool,
    locks: locks::Stripes,
    /// Makes this process's usage-delta keys unique among every process of the cluster.
    instance: [u8; 8],
    seq: AtomicU64,
    vols: std::sync::Mutex<HashMap<VolumeId, Arc<VolState>>>,
}

/// What one process keeps in memory about one volume.
#[derive(Default)]
struct VolState {
    pool: InodePool,
    usage: UsageState,
    capacity: OnceCell<Capacity>,
}

/// Arguments of one rename attempt.
#[derive(Clone, Copy)]
struct RenameArgs<'a> {
    parent: Ino,
    name: &'a [u8],
    new_parent: Ino,
    new_name: &'a [u8],
    no_replace: bool,
    exchange: bool,
}

/// What [`FsMeta::make`] creates.
#[derive(Clone, Copy)]
enum Make<'a> {
    File { exclusive: bool },
    Dir,
    Symlink(&'a [u8]),
}

/// Runs one attempt of an operation until it succeeds, fails with an error that holds for the
/// state it read, or gives up after [`txn::MAX_ATTEMPTS`].
macro_rules! retry {
    ($fs:expr, $vol:expr, |$tx:ident| $attempt:expr) => {{
        let mut backoff = Backoff::new(&$vol.name);
        loop {
            let mut $tx = Tx::new($fs.engine.as_ref(), $vol);
            match $attempt.await {
                Ok(Some(v)) => break Ok(v),
                Ok(None) => {}
                Err(e) => match $tx.confirm(e).await {
                    Ok(Some(e)) | Err(e) => break Err(e),
                    Ok(None) => {}
                },
            }
            if let Err(e) = backoff.conflict().await {
                break Err(e);
            }
        }
    }};
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos(),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A size or size difference as a usage delta (sizes never exceed `i64::MAX`).
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn attr(ino: Ino, i: &Inode, revision: Revision) -> Attr {
    Attr {
        ino: ino.0,
        kind: i.kind,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: i.nlink,
        atime: i.atime,
        mtime: i.mtime,
        ctime: i.ctime,
        revision: revision.0,
    }
}

fn volume_info(rec: &records::Volume, t: &Totals) -> VolumeInfo {
    VolumeInfo {
        name: rec.name.clone(),
        id: rec.id,
        storage: rec.storage.clone(),
        created: rec.created,
        capacity_bytes: rec.capacity_bytes,
        capacity_inodes: rec.capacity_inodes,
        used_bytes: t.bytes(),
        used_inodes: t.inodes(),
        source_volume: String::new(),
        source_storage: None,
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn no_entry(vol: &Volume, parent: Ino, name: &[u8]) -> MetaError {
    MetaError::NoEntry {
        volume: vol.name.clone(),
        parent,
        name: lossy(name),
    }
}

fn exists(vol: &Volume, parent: Ino, name: &[u8]) -> MetaError {
    MetaError::Exists {
        volume: vol.name.clone(),
        parent,
        name: lossy(name),
    }
}

/// Decodes a stored extent and checks it against its key (keyed by its end).
fn decode_extent(kv: &KeyValue) -> Result<Extent> {
    let e: Extent = keys::decode(kv)?;
    let key_end = kv
        .key
        .len()
        .checked_sub(8)
        .and_then(|at| kv.key.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    if e.length == 0 || e.offset.checked_add(e.length) != key_end {
        return Err(keys::corrupt(
            &kv.key,
            format!(
                "extent [{}, +{}) does not match its key",
                e.offset, e.length
            ),
        ));
    }
    Ok(e)
}

/// Updates a directory's times (and link count) for a change of its entries.
async fn touch_dir(tx: &mut Tx<'_>, dir: Ino, at: Timestamp, nlink: i64) -> Result<()> {
    tx.update(dir, |d| {
        d.mtime = Some(at);
        d.ctime = Some(at);
        let n = i64::from(d.nlink) + nlink;
        d.nlink = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    })
    .await
    .map(|_| ())
}

impl FsMeta {
    /// Opens the metadata in `engine`, initialising the cluster record on first use.
    pub async fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        Self::open_with(engine, false).await
    }

    /// Opens the metadata of a mirror cluster: read-only to clients, with its own volumes.
    pub async fn open_mirror(engine: Arc<dyn Engine>) -> Result<Self> {
        Self::open_with(engine, true).await
    }

    /// Whether this is a mirror cluster's metadata.
    pub fn is_mirror(&self) -> bool {
        self.inner.mirror
    }

    async fn open_with(engine: Arc<dyn Engine>, mirror: bool) -> Result<Self> {
        let mut instance = [0u8; 8];
        rand::rng().fill_bytes(&mut instance);
        let fs = Self {
            engine,
            inner: Arc::new(Inner {
                mirror,
                locks: locks::Stripes::default(),
                instance,
                seq: AtomicU64::new(0),
                vols: Default::default(),
            }),
        };
        fs.init_cluster().await?;
        Ok(fs)
    }

    /// Writes the cluster record if absent; a concurrent initialiser may win, then its record
    /// is the one.
    async fn init_cluster(&self) -> Result<ClusterInfo> {
        let mut backoff = Backoff::new("(cluster record)");
        loop {
            if let Some(kv) = self.engine.get(keys::CLUSTER).await? {
                return keys::decode(&kv);
            }
            let info = ClusterInfo {
                cluster_id: random_hex(16),
                created: Some(now()),
            };
            let txn = Txn::new()
                .when(Compare::absent(keys::CLUSTER))
                .put(keys::CLUSTER, keys::encode(&info));
            match self.engine.txn(txn).await? {
                TxnOutcome::Committed(_) => return Ok(info),
                TxnOutcome::Conflict => backoff.conflict().await?,
            }
        }
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The cluster's id, generated when the keyspace was initialised.
    pub async fn cluster_id(&self) -> Result<String> {
        match self.engine.get(keys::CLUSTER).await? {
            Some(kv) => Ok(keys::decode::<ClusterInfo>(&kv)?.cluster_id),
            None => Err(keys::corrupt(
                keys::CLUSTER,
                "the cluster record is missing although the metadata was opened",
            )),
        }
    }

    fn vol_state(&self, id: VolumeId) -> Arc<VolState> {
        let mut vols = self.inner.vols.lock().unwrap_or_else(|p| p.into_inner());
        vols.entry(id).or_default().clone()
    }

    async fn volume_record(&self, vol: &Volume) -> Result<(KeyValue, records::Volume)> {
        let Some(kv) = self.engine.get(&keys::volume(vol.id)).await? else {
            return Err(MetaError::NoVolume {
                volume: vol.name.clone(),
            });
        };
        let rec = keys::decode(&kv)?;
        Ok((kv, rec))
    }

    /// Reserves usage for a change that grows the volume (no-op without a capacity).
    async fn reserve<'s>(
        &self,
        vol: &Volume,
        st: &'s VolState,
        want: Delta,
    ) -> Result<usage::Reservation<'s>> {
        let cap = if want.bytes > 0 || want.inodes > 0 {
            *st.capacity
                .get_or_try_init(|| async {
                    let (_, rec) = self.volume_record(vol).await?;
                    Ok::<_, MetaError>(Capacity {
                        bytes: rec.capacity_bytes,
                        inodes: rec.capacity_inodes,
                    })
                })
                .await?
        } else {
            Capacity::default()
        };
        st.usage
            .reserve(self.engine.as_ref(), vol.id, &vol.name, cap, want)
            .await
    }

    /// Commits an attempt, with its usage delta under a key unique to this process.
    async fn commit(&self, tx: &mut Tx<'_>, st: &Arc<VolState>) -> Result<Option<Revision>> {
        let delta = tx.delta;
        let vol_id = tx.vol.id;
        let inner = &self.inner;
        let rev = tx
            .commit(|| {
                let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
                keys::usage_delta(vol_id, &inner.instance, seq)
            })
            .await?;
        if rev.is_some() && st.usage.committed(delta) {
            self.spawn_fold(tx.vol.clone(), st.clone());
        }
        Ok(rev)
    }

    /// Folds a volume's usage deltas in the background.
    fn spawn_fold(&self, vol: Volume, st: Arc<VolState>) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = usage::fold(engine.as_ref(), vol.id, &vol.name).await {
                tracing::warn!(volume = %vol.name, error = %e, "folding usage deltas failed; retried after more writes");
            }
            st.usage.fold_done();
        });
    }

    /// Folds every pending usage delta of `vol` now; returns how many were pending.
    #[cfg(test)]
    async fn fold_usage(&self, vol: &Volume) -> Result<usize> {
        let before = usage::totals(self.engine.as_ref(), vol.id).await?.pending;
        usage::fold(self.engine.as_ref(), vol.id, &vol.name).await?;
        Ok(before)
    }

    // --- volumes --------------------------------------------------------------------------

    /// Creates a volume and returns it with its access token (shown once; only a hash is kept).
    pub async fn create_volume(&self, new: NewVolume) -> Result<(VolumeInfo, String)> {
        if self.is_mirror() {
            let source = new.source_volume.clone();
            return self.create_mirror_volume(new, &source).await;
        }
        if !new.source_volume.is_empty() {
            return Err(MetaError::InvalidArgument(format!(
                "volume {:?}: a source volume can only be named on a mirror cluster",
                new.name
            )));
        }
        names::check_volume_name(&new.name)?;
        let token = random_hex(32);
        let token_hash = blake3::hash(token.as_bytes());
        let name_key = keys::volume_name(&new.name);
        let mut backoff = Backoff::new(&new.name);
        loop {
            if self.engine.get(&name_key).await?.is_some() {
                return Err(MetaError::VolumeExists {
                    volume: new.name.clone(),
                });
            }
            let counter = self.engine.get(keys::VOLUME_COUNTER).await?;
            let next = match &counter {
                Some(kv) => keys::decode::<Counter>(kv)?.next.max(1),
                None => 1,
            };
            let id = VolumeId(next);
            let created = now();
            let rec = records::Volume {
                id: id.0,
                name: new.name.clone(),
                storage: Some(new.storage.clone()),
                token_hash: token_hash.as_bytes().to_vec(),
                created: Some(created),
                capacity_bytes: new.capacity_bytes,
                capacity_inodes: new.capacity_inodes,
                root_ino: Ino::ROOT.0,
            };
            let root = Inode {
                kind: FileKind::Directory as i32,
                mode: 0o755,
                nlink: 2,
                atime: Some(created),
                mtime: Some(created),
                ctime: Some(created),
                parent: Ino::ROOT.0,
                ..Default::default()
            };
            let usage = records::Usage {
                bytes: 0,
                inodes: 1,
            };
            let vol_key = keys::volume(id);
            let txn = Txn::new()
                .when(Compare::absent(name_key.clone()))
                .when(match &counter {
                    Some(kv) => Compare::unchanged(kv),
                    None => Compare::absent(keys::VOLUME_COUNTER),
                })
                .when(Compare::absent(vol_key.clone()))
                .put(
                    keys::VOLUME_COUNTER,
                    keys::encode(&Counter { next: next + 1 }),
                )
                .put(name_key.clone(), keys::encode(&VolumeName { id: id.0 }))
                .put(vol_key, keys::encode(&rec))
                .put(keys::inode(id, Ino::ROOT), keys::encode(&root))
                .put(
                    keys::inode_counter(id),
                    keys::encode(&Counter {
                        next: alloc::FIRST_FREE,
                    }),
                )
                .put(keys::usage_base(id), keys::encode(&usage));
            match self.engine.txn(txn).await? {
                TxnOutcome::Committed(_) => {
                    let t = Totals {
                        bytes: 0,
                        inodes: 1,
                        pending: 0,
                    };
                    return Ok((volume_info(&rec, &t), token));
                }
                TxnOutcome::Conflict => backoff.conflict().await?,
            }
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        if self.is_mirror() {
            return self.list_mirror_volumes().await;
        }
        let end = prefix_end(keys::VOLUME);
        let mut start = keys::VOLUME.to_vec();
        let mut out = Vec::new();
        loop {
            let page = self.engine.range(&start, &end, 256).await?;
            for kv in &page {
                let rec: records::Volume = keys::decode(kv)?;
                let t = usage::totals(self.engine.as_ref(), VolumeId(rec.id)).await?;
                out.push(volume_info(&rec, &t));
            }
            match page.last() {
                Some(last) if page.len() == 256 => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Deletes a volume's metadata (not its data blocks).
    pub async fn delete_volume(&self, name: &str) -> Result<Revision> {
        if self.is_mirror() {
            return self.delete_mirror_volume(name).await;
        }
        let name_key = keys::volume_name(name);
        let mut backoff = Backoff::new(name);
        loop {
            let Some(name_kv) = self.engine.get(&name_key).await? else {
                return Err(MetaError::NoVolume {
                    volume: name.to_owned(),
                });
            };
            let id = VolumeId(keys::decode::<VolumeName>(&name_kv)?.id);
            let vol_key = keys::volume(id);
            let vol_kv = self.engine.get(&vol_key).await?;
            let mut txn = Txn::new()
                .when(Compare::unchanged(&name_kv))
                .when(match &vol_kv {
                    Some(kv) => Compare::unchanged(kv),
                    None => Compare::absent(vol_key.clone()),
                })
                .delete(name_key.clone());
            for prefix in keys::volume_prefixes(id) {
                txn.mutations.push(Mutation::DeleteRange {
                    end: prefix_end(&prefix),
                    start: prefix,
                });
            }
            txn = txn.delete(vol_key);
            match self.engine.txn(txn).await? {
                TxnOutcome::Committed(c) => {
                    let mut vols = self.inner.vols.lock().unwrap_or_else(|p| p.into_inner());
                    vols.remove(&id);
                    return Ok(c.revision);
                }
                TxnOutcome::Conflict => backoff.conflict().await?,
            }
        }
    }

    /// Checks `token` against the volume named `name`.
    pub async fn authenticate(&self, name: &str, token: &str) -> Result<Volume> {
        if self.is_mirror() {
            return self.authenticate_mirror(name, token).await;
        }
        let no_volume = || MetaError::NoVolume {
            volume: name.to_owned(),
        };
        if names::check_volume_name(name).is_err() {
            return Err(no_volume());
        }
        let Some(name_kv) = self.engine.get(&keys::volume_name(name)).await? else {
            return Err(no_volume());
        };
        let id = VolumeId(keys::decode::<VolumeName>(&name_kv)?.id);
        let Some(vol_kv) = self.engine.get(&keys::volume(id)).await? else {
            return Err(no_volume());
        };
        let rec: records::Volume = keys::decode(&vol_kv)?;
        let stored: [u8; 32] = rec
            .token_hash
            .as_slice()
            .try_into()
            .map_err(|_| keys::corrupt(&vol_kv.key, "the token hash is not 32 bytes"))?;
        // `blake3::Hash` compares in constant time.
        if blake3::Hash::from_bytes(stored) != blake3::hash(token.as_bytes()) {
            return Err(MetaError::Unauthenticated {
                what: format!("volume {name:?}"),
            });
        }
        Ok(Volume {
            id,
            name: rec.name,
            root: if rec.root_ino == 0 {
                Ino::ROOT
            } else {
                Ino(rec.root_ino)
            },
        })
    }

    /// The stored storage configuration of a volume.
    pub async fn volume_info(&self, vol: &Volume) -> Result<VolumeInfo> {
        if self.is_mirror() {
            return self.mirror_volume_info(&vol.name).await;
        }
        let (_, rec) = self.volume_record(vol).await?;
        let t = usage::totals(self.engine.as_ref(), vol.id).await?;
        Ok(volume_info(&rec, &t))
    }

    // --- file-system operations -------------------------------------------------------------

    pub async fn lookup(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Attr> {
        names::check_name(name)?;
        retry!(self, vol, |tx| Self::lookup_once(&mut tx, parent, name))
    }

    async fn lookup_once(tx: &mut Tx<'_>, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        match tx.dentry(parent, name).await? {
            Some(d) => {
                let ino = Ino(d.ino);
                let i = tx.inode(ino).await?;
                Ok(Some(attr(ino, &i, tx.revision(ino))))
            }
            None => {
                tx.dir(parent).await?;
                Err(no_entry(tx.vol, parent, name))
            }
        }
    }

    /// The inode `ino` as stored, with its revision.
    async fn read_inode(&self, vol: &Volume, ino: Ino) -> Result<(KeyValue, Inode)> {
        let Some(kv) = self.engine.get(&keys::inode(vol.id, ino)).await? else {
            return Err(MetaError::NoInode {
                volume: vol.name.clone(),
                ino,
            });
        };
        let i = decode_inode(&kv)?;
        Ok((kv, i))
    }

    pub async fn getattr(&self, vol: &Volume, ino: Ino) -> Result<Attr> {
        let (kv, i) = self.read_inode(vol, ino).await?;
        Ok(attr(ino, &i, kv.mod_revision))
    }

    pub async fn setattr(&self, vol: &Volume, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.writable(vol)?;
        if let Some(size) = set.size
            && size > extents::MAX_FILE_SIZE
        {
            return Err(MetaError::InvalidArgument(format!(
                "size {size} exceeds the largest file size {}",
                extents::MAX_FILE_SIZE
            )));
        }
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[ino]).await;
        retry!(self, vol, |tx| self.setattr_once(&mut tx, &st, ino, &set))
    }

    async fn setattr_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        ino: Ino,
        set: &SetAttr,
    ) -> Result<Option<Attr>> {
        let mut i = tx.inode(ino).await?;
        if set.size.is_some() {
            self.check_file(tx.vol, ino, &i)?;
        }
        if *set == SetAttr::default() {
            return Ok(Some(attr(ino, &i, tx.revision(ino))));
        }
        let at = now();
        if let Some(mode) = set.mode {
            i.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
        }
        if let Some(t) = set.atime {
            i.atime = Some(t);
        }
        if let Some(t) = set.mtime {
            i.mtime = Some(t);
        }
        let mut _reserved = None;
        if let Some(size) = set.size.filter(|s| *s != i.size) {
            if size > i.size {
                let want = Delta {
                    bytes: signed(size - i.size),
                    inodes: 0,
                };
                _reserved = Some(self.reserve(tx.vol, st, want).await?);
                tx.delta.bytes += signed(size - i.size);
            } else {
                self.truncate_extents(tx, ino, size).await?;
                tx.delta.bytes -= signed(i.size - size);
            }
            i.size = size;
            if set.mtime.is_none() {
                i.mtime = Some(at);
            }
        }
        i.ctime = Some(at);
        tx.put_inode(ino, i.clone());
        let Some(rev) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(attr(ino, &i, rev)))
    }

    /// Errors unless `i` is a regular file (whose size and extents can change).
    fn check_file(&self, vol: &Volume, ino: Ino, i: &Inode) -> Result<()> {
        match kind(i) {
            FileKind::File => Ok(()),
            FileKind::Directory => Err(MetaError::IsDirectory {
                volume: vol.name.clone(),
                ino,
            }),
            FileKind::Symlink | FileKind::Unspecified => Err(MetaError::InvalidArgument(format!(
                "inode {ino} of volume {:?} is a symlink; it has no data to size, read or write",
                vol.name
            ))),
        }
    }

    /// Stages dropping the extents past `size` (and trimming the one that straddles it).
    async fn truncate_extents(&self, tx: &mut Tx<'_>, ino: Ino, size: u64) -> Result<()> {
        let vol = tx.vol.id;
        let end = prefix_end(&keys::extents(vol, ino));
        let from = keys::extent(vol, ino, size + 1);
        let first = self.engine.range(&from, &end, 1).await?;
        if let Some(kv) = first.first() {
            let e = decode_extent(kv)?;
            tx.depend_on(kv);
            tx.push(Mutation::DeleteRange { start: from, end });
            if let Some(kept) = extents::clip(&e, 0, size) {
                tx.push(Mutation::Put {
                    key: keys::extent(vol, ino, size),
                    value: keys::encode(&kept),
                });
            }
        }
        Ok(())
    }

    /// Entries after `after` (exclusive, in name order), at most `limit`.
    pub async fn readdir(
        &self,
        vol: &Volume,
        ino: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<DirPage> {
        let limit = match limit {
            0 => READDIR_DEFAULT,
            n => n.min(READDIR_MAX),
        };
        let (_, dir) = self.read_inode(vol, ino).await?;
        if kind(&dir) != FileKind::Directory {
            return Err(MetaError::NotDirectory {
                volume: vol.name.clone(),
                ino,
            });
        }
        let prefix = keys::dir(vol.id, ino);
        let start = if after.is_empty() {
            prefix.clone()
        } else {
            let mut k = keys::dentry(vol.id, ino, after);
            k.push(0);
            k
        };
        let kvs = self
            .engine
            .range(&start, &prefix_end(&prefix), limit + 1)
            .await?;
        let more = kvs.len() > limit;
        let entries = kvs
            .iter()
            .take(limit)
            .map(|kv| {
                let d = decode_dentry(kv)?;
                Ok(Entry {
                    name: keys::dentry_name(&kv.key).to_vec(),
                    ino: d.ino,
                    kind: d.kind,
                    attr: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DirPage { entries, more })
    }

    /// [`Self::readdir`] with each entry's attributes, read after the listing (concurrently).
    /// An entry whose inode went away in between keeps `attr: None`.
    pub async fn readdir_plus(
        &self,
        vol: &Volume,
        ino: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<DirPage> {
        let mut page = self.readdir(vol, ino, after, limit).await?;
        // Collected before polling: a lazy iterator held across the await would keep the
        // future from being provably `Send`, which the gRPC service needs.
        let reads: Vec<_> = page
            .entries
            .iter()
            .map(|e| {
                let (engine, key) = (self.engine.clone(), keys::inode(vol.id, Ino(e.ino)));
                async move { engine.get(&key).await }
            })
            .collect();
        let kvs: Vec<_> = futures::stream::iter(reads)
            .buffered(ATTR_READS_IN_FLIGHT)
            .collect()
            .await;
        for (e, kv) in page.entries.iter_mut().zip(kvs) {
            if let Some(kv) = kv? {
                e.attr = Some(attr(Ino(e.ino), &decode_inode(&kv)?, kv.mod_revision));
            }
        }
        Ok(page)
    }

    pub async fn mkdir(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        owner: Owner,
    ) -> Result<Attr> {
        self.writable(vol)?;
        self.make(vol, parent, name, owner, Make::Dir).await
    }

    /// Creates a regular file. With `exclusive = false` an existing file is returned as is.
    pub async fn create(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        owner: Owner,
        exclusive: bool,
    ) -> Result<Attr> {
        self.writable(vol)?;
        self.make(vol, parent, name, owner, Make::File { exclusive })
            .await
    }

    /// mkdir, create and symlink.
    async fn make(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        owner: Owner,
        what: Make<'_>,
    ) -> Result<Attr> {
        names::check_name(name)?;
        if let Make::Symlink(target) = what {
            names::check_symlink_target(target)?;
        }
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[parent]).await;
        let mut ino = None;
        retry!(self, vol, |tx| self
            .make_once(&mut tx, &st, parent, name, owner, what, &mut ino))
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        parent: Ino,
        name: &[u8],
        owner: Owner,
        what: Make<'_>,
        ino: &mut Option<Ino>,
    ) -> Result<Option<Attr>> {
        tx.dir(parent).await?;
        if let Some(d) = tx.dentry(parent, name).await? {
            if let Make::File { exclusive: false } = what {
                let existing = Ino(d.ino);
                let i = tx.inode(existing).await?;
                if kind(&i) == FileKind::File {
                    return Ok(Some(attr(existing, &i, tx.revision(existing))));
                }
            }
            return Err(exists(tx.vol, parent, name));
        }
        let want = Delta {
            bytes: 0,
            inodes: 1,
        };
        let _reserved = self.reserve(tx.vol, st, want).await?;
        let new = match *ino {
            Some(i) => i,
            None => {
                let i = st.pool.next(self.engine.as_ref(), tx.vol).await?;
                *ino = Some(i);
                i
            }
        };
        let at = now();
        let mut inode = Inode {
            uid: owner.uid,
            gid: owner.gid,
            mode: owner.mode & 0o7777,
            nlink: 1,
            atime: Some(at),
            mtime: Some(at),
            ctime: Some(at),
            ..Default::default()
        };
        let k = match what {
            Make::File { .. } => FileKind::File,
            Make::Dir => {
                inode.nlink = 2;
                inode.parent = parent.0;
                FileKind::Directory
            }
            Make::Symlink(target) => {
                inode.mode = 0o777;
                inode.size = target.len() as u64;
                inode.symlink_target = target.to_vec();
                FileKind::Symlink
            }
        };
        inode.kind = k as i32;
        tx.create_inode(new, inode.clone());
        tx.put_dentry(parent, name, new, k);
        let subdirs = i64::from(k == FileKind::Directory);
        touch_dir(tx, parent, at, subdirs).await?;
        let Some(rev) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(attr(new, &inode, rev)))
    }

    pub async fn unlink(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Removed> {
        self.writable(vol)?;
        names::check_name(name)?;
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[parent]).await;
        retry!(self, vol, |tx| self
            .remove_once(&mut tx, &st, parent, name, false))
    }

    pub async fn rmdir(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Removed> {
        self.writable(vol)?;
        names::check_name(name)?;
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[parent]).await;
        retry!(self, vol, |tx| self
            .remove_once(&mut tx, &st, parent, name, true))
    }

    /// unlink (`dir = false`) and rmdir (`dir = true`).
    async fn remove_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        parent: Ino,
        name: &[u8],
        dir: bool,
    ) -> Result<Option<Removed>> {
        tx.dir(parent).await?;
        let d = tx
            .dentry(parent, name)
            .await?
            .ok_or_else(|| no_entry(tx.vol, parent, name))?;
        let child = Ino(d.ino);
        let mut c = tx.inode(child).await?;
        let is_dir = kind(&c) == FileKind::Directory;
        let volume = tx.vol.name.clone();
        if dir && !is_dir {
            return Err(MetaError::NotDirectory { volume, ino: child });
        }
        if !dir && is_dir {
            return Err(MetaError::IsDirectory { volume, ino: child });
        }
        if dir && !tx.is_empty_dir(child).await? {
            return Err(MetaError::NotEmpty { volume, ino: child });
        }
        let at = now();
        tx.delete_dentry(parent, name);
        touch_dir(tx, parent, at, if dir { -1 } else { 0 }).await?;
        let remaining = if dir { 0 } else { c.nlink.saturating_sub(1) };
        if remaining == 0 {
            tx.remove_inode(child, &c);
        } else {
            c.nlink = remaining;
            c.ctime = Some(at);
            tx.put_inode(child, c);
        }
        let Some(_) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(Removed {
            ino: child,
            remaining_nlink: remaining,
        }))
    }

    /// Renames atomically; returns what was replaced, if anything.
    #[allow(clippy::too_many_arguments)]
    pub async fn rename(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
        exchange: bool,
    ) -> Result<Option<Removed>> {
        self.writable(vol)?;
        names::check_name(name)?;
        names::check_name(new_name)?;
        if no_replace && exchange {
            return Err(MetaError::InvalidArgument(
                "rename cannot both exchange and refuse to replace (RENAME_EXCHANGE with RENAME_NOREPLACE)"
                    .into(),
            ));
        }
        let args = RenameArgs {
            parent,
            name,
            new_parent,
            new_name,
            no_replace,
            exchange,
        };
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[parent, new_parent]).await;
        retry!(self, vol, |tx| self.rename_once(&mut tx, &st, args))
    }

    async fn rename_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        a: RenameArgs<'_>,
    ) -> Result<Option<Option<Removed>>> {
        let RenameArgs {
            parent,
            name,
            new_parent,
            new_name,
            no_replace,
            exchange,
        } = a;
        tx.dir(parent).await?;
        tx.dir(new_parent).await?;
        let src_entry = tx
            .dentry(parent, name)
            .await?
            .ok_or_else(|| no_entry(tx.vol, parent, name))?;
        let src = Ino(src_entry.ino);
        let src_inode = tx.inode(src).await?;
        let src_kind = kind(&src_inode);
        let src_dir = src_kind == FileKind::Directory;
        let dst_entry = tx.dentry(new_parent, new_name).await?;
        if exchange && dst_entry.is_none() {
            return Err(no_entry(tx.vol, new_parent, new_name));
        }
        if dst_entry.as_ref().is_some_and(|d| d.ino == src.0) {
            // Both names are links to one inode: POSIX says do nothing.
            return Ok(Some(None));
        }
        if no_replace && dst_entry.is_some() {
            return Err(exists(tx.vol, new_parent, new_name));
        }
        let moved = parent != new_parent;
        if src_dir && moved {
            Self::check_not_ancestor(tx, src, new_parent).await?;
        }
        let at = now();
        let mut replaced = None;
        let volume = tx.vol.name.clone();
        if let Some(d) = dst_entry {
            let dst = Ino(d.ino);
            let mut dst_inode = tx.inode(dst).await?;
            let dst_kind = kind(&dst_inode);
            let dst_dir = dst_kind == FileKind::Directory;
            if exchange {
                if dst_dir && moved {
                    Self::check_not_ancestor(tx, dst, parent).await?;
                }
                tx.put_dentry(parent, name, dst, dst_kind);
                tx.put_dentry(new_parent, new_name, src, src_kind);
                if dst_dir && moved {
                    tx.update(dst, |i| i.parent = parent.0).await?;
                    touch_dir(tx, new_parent, at, -1).await?;
                    touch_dir(tx, parent, at, 1).await?;
                }
                tx.update(dst, |i| i.ctime = Some(at)).await?;
            } else {
                match (src_dir, dst_dir) {
                    (true, false) => return Err(MetaError::NotDirectory { volume, ino: dst }),
                    (false, true) => return Err(MetaError::IsDirectory { volume, ino: dst }),
                    (true, true) => {
                        if !tx.is_empty_dir(dst).await? {
                            return Err(MetaError::NotEmpty { volume, ino: dst });
                        }
                        tx.remove_inode(dst, &dst_inode);
                        touch_dir(tx, new_parent, at, -1).await?;
                        replaced = Some(Removed {
                            ino: dst,
                            remaining_nlink: 0,
                        });
                    }
                    (false, false) => {
                        let remaining = dst_inode.nlink.saturating_sub(1);
                        if remaining == 0 {
                            tx.remove_inode(dst, &dst_inode);
                        } else {
                            dst_inode.nlink = remaining;
                            dst_inode.ctime = Some(at);
                            tx.put_inode(dst, dst_inode);
                        }
                        replaced = Some(Removed {
                            ino: dst,
                            remaining_nlink: remaining,
                        });
                    }
                }
                tx.delete_dentry(parent, name);
                tx.put_dentry(new_parent, new_name, src, src_kind);
            }
        } else {
            tx.delete_dentry(parent, name);
            tx.put_dentry(new_parent, new_name, src, src_kind);
        }
        if src_dir && moved {
            tx.update(src, |i| i.parent = new_parent.0).await?;
            touch_dir(tx, parent, at, -1).await?;
            touch_dir(tx, new_parent, at, 1).await?;
        }
        tx.update(src, |i| i.ctime = Some(at)).await?;
        touch_dir(tx, parent, at, 0).await?;
        touch_dir(tx, new_parent, at, 0).await?;
        let Some(_) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(replaced))
    }

    /// Fails with [`MetaError::RenameIntoSelf`] if directory `dir` is `start` or one of its
    /// ancestors. Every directory on the way is read through `tx`, so a concurrent move of any
    /// of them makes the rename run again.
    async fn check_not_ancestor(tx: &mut Tx<'_>, dir: Ino, start: Ino) -> Result<()> {
        let mut cur = start;
        for _ in 0..MAX_DEPTH {
            if cur == dir {
                return Err(MetaError::RenameIntoSelf {
                    volume: tx.vol.name.clone(),
                    ino: dir,
                });
            }
            if cur == tx.vol.root {
                return Ok(());
            }
            let up = Ino(tx.dir(cur).await?.parent);
            if up.0 == 0 || up == cur {
                return Err(keys::corrupt(
                    &keys::inode(tx.vol.id, cur),
                    "directory has no valid parent",
                ));
            }
            cur = up;
        }
        Err(keys::corrupt(
            &keys::inode(tx.vol.id, start),
            format!("directory chain to the root is longer than {MAX_DEPTH} (a cycle?)"),
        ))
    }

    pub async fn link(
        &self,
        vol: &Volume,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Attr> {
        self.writable(vol)?;
        names::check_name(new_name)?;
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[new_parent]).await;
        retry!(self, vol, |tx| self
            .link_once(&mut tx, &st, ino, new_parent, new_name))
    }

    async fn link_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Option<Attr>> {
        let mut i = tx.inode(ino).await?;
        if kind(&i) == FileKind::Directory {
            return Err(MetaError::PermissionDenied(format!(
                "inode {ino} of volume {:?} is a directory; directories cannot be hard-linked",
                tx.vol.name
            )));
        }
        tx.dir(new_parent).await?;
        if tx.dentry(new_parent, new_name).await?.is_some() {
            return Err(exists(tx.vol, new_parent, new_name));
        }
        let at = now();
        i.nlink = i.nlink.saturating_add(1);
        i.ctime = Some(at);
        tx.put_inode(ino, i.clone());
        tx.put_dentry(new_parent, new_name, ino, kind(&i));
        touch_dir(tx, new_parent, at, 0).await?;
        let Some(rev) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(attr(ino, &i, rev)))
    }

    pub async fn symlink(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> Result<Attr> {
        self.writable(vol)?;
        self.make(vol, parent, name, owner, Make::Symlink(target))
            .await
    }

    pub async fn readlink(&self, vol: &Volume, ino: Ino) -> Result<Vec<u8>> {
        let (_, i) = self.read_inode(vol, ino).await?;
        if kind(&i) != FileKind::Symlink {
            return Err(MetaError::InvalidArgument(format!(
                "inode {ino} of volume {:?} is not a symlink",
                vol.name
            )));
        }
        Ok(i.symlink_target)
    }

    /// Usage and capacity. Exact: every committed change is counted (see `usage`).
    pub async fn statfs(&self, vol: &Volume) -> Result<Usage> {
        let (_, rec) = self.volume_record(vol).await?;
        let t = usage::totals(self.engine.as_ref(), vol.id).await?;
        if t.pending as u64 > usage::FOLD_EVERY && !self.is_mirror() {
            let st = self.vol_state(vol.id);
            if st.usage.start_fold() {
                self.spawn_fold(vol.clone(), st);
            }
        }
        Ok(Usage {
            used_bytes: t.bytes(),
            used_inodes: t.inodes(),
            capacity_bytes: rec.capacity_bytes,
            capacity_inodes: rec.capacity_inodes,
        })
    }

    /// The stored extents overlapping `[lo, hi)`, in offset order, at most `max` of them, and
    /// whether that is all of them.
    async fn scan_extents(
        &self,
        vol: VolumeId,
        ino: Ino,
        lo: u64,
        hi: u64,
        max: usize,
    ) -> Result<(Vec<Extent>, bool)> {
        let end = prefix_end(&keys::extents(vol, ino));
        let mut start = keys::extent(vol, ino, lo.saturating_add(1));
        let mut out = Vec::new();
        loop {
            let want = EXTENT_PAGE.min(max.saturating_sub(out.len()).saturating_add(1));
            let page = self.engine.range(&start, &end, want).await?;
            let full = page.len() == want;
            for kv in page {
                let e = decode_extent(&kv)?;
                if e.offset >= hi {
                    return Ok((out, true));
                }
                if out.len() == max {
                    return Ok((out, false));
                }
                start = kv.key.clone();
                start.push(0);
                out.push(e);
            }
            if !full {
                return Ok((out, true));
            }
        }
    }

    /// The stored extent that contains offset `x` and starts before it, if any.
    async fn extent_straddling(&self, vol: VolumeId, ino: Ino, x: u64) -> Result<Option<Extent>> {
        let end = prefix_end(&keys::extents(vol, ino));
        let first = self
            .engine
            .range(&keys::extent(vol, ino, x.saturating_add(1)), &end, 1)
            .await?;
        match first.first() {
            Some(kv) => {
                let e = decode_extent(kv)?;
                Ok((e.offset < x).then_some(e))
            }
            None => Ok(None),
        }
    }

    /// Extents overlapping `[offset, offset + length)`, in offset order, and the file size.
    /// Extents are returned whole, as stored (not clipped to the range); the list and the size
    /// are from one revision of the file.
    pub async fn read_extents(
        &self,
        vol: &Volume,
        ino: Ino,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<Extent>, u64)> {
        let key = keys::inode(vol.id, ino);
        let mut backoff = Backoff::new(&vol.name);
        loop {
            let (before, i) = self.read_inode(vol, ino).await?;
            self.check_file(vol, ino, &i)?;
            let list = if length == 0 {
                Vec::new()
            } else {
                let hi = offset.saturating_add(length);
                self.scan_extents(vol.id, ino, offset, hi, usize::MAX)
                    .await?
                    .0
            };
            // Every change of a file's extents also writes its inode: an unchanged inode
            // means the extents were read at the same state as the size.
            let after = self.engine.get(&key).await?.map(|kv| kv.mod_revision);
            if after == Some(before.mod_revision) {
                return Ok((list, i.size));
            }
            backoff.conflict().await?;
        }
    }

    /// Records newly written extents (they replace what they overlap) and the new size.
    pub async fn commit_extents(
        &self,
        vol: &Volume,
        ino: Ino,
        extents: Vec<Extent>,
        new_size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr> {
        self.writable(vol)?;
        if extents.len() > extents::MAX_EXTENTS_PER_COMMIT {
            return Err(MetaError::InvalidArgument(format!(
                "{} extents in one commit; the limit is {}",
                extents.len(),
                extents::MAX_EXTENTS_PER_COMMIT
            )));
        }
        for e in &extents {
            extents::validate(e)?;
        }
        let max_end = extents.iter().map(extents::end).max().unwrap_or(0);
        if new_size < max_end || new_size > extents::MAX_FILE_SIZE {
            return Err(MetaError::InvalidArgument(format!(
                "new_size {new_size} must be the file size after the write: at least the end \
                 of every extent ({max_end}) and at most {}",
                extents::MAX_FILE_SIZE
            )));
        }
        let st = self.vol_state(vol.id);
        let _held = self.inner.locks.lock(vol.id, &[ino]).await;
        retry!(self, vol, |tx| self.commit_extents_once(
            &mut tx, &st, ino, &extents, new_size, mtime
        ))
    }

    async fn commit_extents_once(
        &self,
        tx: &mut Tx<'_>,
        st: &Arc<VolState>,
        ino: Ino,
        new: &[Extent],
        new_size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Option<Attr>> {
        let mut i = tx.inode(ino).await?;
        self.check_file(tx.vol, ino, &i)?;
        let size = i.size.max(new_size);
        let growth = Delta {
            bytes: signed(size - i.size),
            inodes: 0,
        };
        let _reserved = self.reserve(tx.vol, st, growth).await?;
        // The new extents, resolved among themselves (a later one wins).
        let pieces = extents::overlay(Vec::new(), new);
        if let (Some(first), Some(last)) = (pieces.first(), pieces.last()) {
            let vol = tx.vol.id;
            let (lo, hi) = (first.offset, extents::end(last));
            // Usually few stored extents overlap the write: take them all. Otherwise take only
            // those that straddle a boundary of a new extent (they are trimmed) and drop
            // everything between the boundaries with one range delete per new extent.
            let (mut touched, complete) =
                self.scan_extents(vol, ino, lo, hi, SMALL_OVERWRITE).await?;
            if !complete {
                touched.clear();
                let mut seen = std::collections::HashSet::new();
                for p in &pieces {
                    for x in [p.offset, extents::end(p)] {
                        if let Some(e) = self.extent_straddling(vol, ino, x).await?
                            && seen.insert(e.offset)
                        {
                            touched.push(e);
                        }
                    }
                    tx.push(Mutation::DeleteRange {
                        start: keys::extent(vol, ino, p.offset + 1),
                        end: keys::extent(vol, ino, extents::end(p) + 1),
                    });
                }
                touched.sort_by_key(|e| e.offset);
            }
            // Every change of a file's extents also writes its inode, so the compare on the
            // inode covers the extents read here.
            let mut writes: std::collections::BTreeMap<Vec<u8>, Option<Extent>> =
                Default::default();
            let mut before = HashMap::new();
            for e in &touched {
                let key = keys::extent(vol, ino, extents::end(e));
                writes.insert(key.clone(), None);
                before.insert(key, e.clone());
            }
            for e in extents::overlay(touched, &pieces) {
                let key = keys::extent(vol, ino, extents::end(&e));
                if complete && before.get(&key) == Some(&e) {
                    writes.remove(&key);
                } else {
                    writes.insert(key, Some(e));
                }
            }
            for (key, e) in writes {
                tx.push(match e {
                    Some(e) => Mutation::Put {
                        key,
                        value: keys::encode(&e),
                    },
                    None => Mutation::Delete { key },
                });
            }
        }
        let at = now();
        tx.delta.bytes += growth.bytes;
        i.size = size;
        i.mtime = Some(mtime.unwrap_or(at));
        i.ctime = Some(at);
        tx.put_inode(ino, i.clone());
        let Some(rev) = self.commit(tx, st).await? else {
            return Ok(None);
        };
        Ok(Some(attr(ino, &i, rev)))
    }

    /// Resolves `path` from the volume root without following symlinks.
    pub async fn resolve(&self, vol: &Volume, path: &str) -> Result<Resolved> {
        let parts = names::split_path(path)?;
        let (kv, root) = self.read_inode(vol, vol.root).await?;
        let mut cur = (vol.root, root, kv.mod_revision);
        let mut prefix = String::new();
        let shown = |p: &str| {
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        };
        for c in parts {
            let k = kind(&cur.1);
            if k != FileKind::Directory {
                return Ok(Resolved::Missing {
                    existing_prefix: shown(&prefix),
                    missing_component: c.to_owned(),
                    blocking_kind: Some(k),
                });
            }
            let missing = || Resolved::Missing {
                existing_prefix: shown(&prefix),
                missing_component: c.to_owned(),
                blocking_kind: None,
            };
            let dkey = keys::dentry(vol.id, cur.0, c.as_bytes());
            let Some(dkv) = self.engine.get(&dkey).await? else {
                return Ok(missing());
            };
            let child = Ino(decode_dentry(&dkv)?.ino);
            // Absent: removed since the entry was read.
            let Some(ikv) = self.engine.get(&keys::inode(vol.id, child)).await? else {
                return Ok(missing());
            };
            cur = (child, decode_inode(&ikv)?, ikv.mod_revision);
            prefix.push('/');
            prefix.push_str(c);
        }
        Ok(Resolved::Found(attr(cur.0, &cur.1, cur.2)))
    }
}
