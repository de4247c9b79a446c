//! The file-system core: every operation the FUSE adapter (and `mirrorfs cp`) performs, over a
//! [`MetaClient`] and a volume's [`Blocks`], with no FUSE in sight so tests drive it directly.
//!
//! It owns the caches (attributes, entries, symlink targets, blocks), the open handles, the
//! write buffers and their flushing, and the follower of the volume's change stream that keeps
//! the caches coherent (`watch`). A read-only (mirror) volume refuses every mutation here,
//! before any call to the meta service.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use mirrorfs_api::meta::{
    Attr, CommitExtentsRequest, CreateRequest, FileKind, GetAttrRequest, LinkRequest,
    LookupRequest, MkdirRequest, ReadDirRequest, ReadExtentsRequest, ReadLinkRequest,
    RenameRequest, ResolveRequest, RmdirRequest, SetAttrRequest, SymlinkRequest, Timestamp,
    UnlinkRequest, resolve_reply,
};
use mirrorfs_objstore::BLOCK_SIZE;
use tokio::sync::Semaphore;

use crate::cache::{BlockCache, MetaCache};
use crate::data::Blocks;
use crate::error::FsError;
pub use crate::handles::DirEntry;
use crate::handles::{DirHandle, DirListing, FileState, Handle, InodeState, lock};
use crate::meta::MetaClient;
use crate::read::{ExtentMap, assemble, fetch_block};
use crate::write::{Piece, Sealed, start_upload};

/// How a volume is served.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The volume's name (messages).
    pub volume: String,
    /// How long the kernel may keep attributes and entries; coherence comes from invalidation
    /// when the volume's change stream reports a change.
    pub attr_ttl: Duration,
    /// Size of the blocks writes are cut into (at most the store's 4 MiB).
    pub block_size: usize,
    /// In-memory block cache.
    pub cache_bytes: u64,
    /// Attributes, directory entries and symlink targets kept in memory (each).
    pub meta_cache_items: usize,
    /// Blocks fetched ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Uncommitted bytes this client buffers before a writer flushes its file.
    pub max_dirty_bytes: u64,
    /// Block uploads in flight.
    pub upload_concurrency: usize,
    /// Owner reported where the caller gives none (`cp` defaults).
    pub uid: u32,
    pub gid: u32,
    /// Follow the volume's change stream (off for one-shot tools that are the only writer).
    pub watch: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            volume: String::new(),
            attr_ttl: Duration::from_secs(30),
            block_size: BLOCK_SIZE,
            cache_bytes: 256 << 20,
            meta_cache_items: crate::cache::META_CACHE_ITEMS,
            readahead_blocks: 8,
            max_dirty_bytes: 256 << 20,
            upload_concurrency: 16,
            uid: 0,
            gid: 0,
            watch: true,
        }
    }
}

/// File-system statistics (statfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Attributes to change; `None` leaves one alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend.
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// Tells the kernel that something changed behind its back (implemented by the FUSE adapter
/// with fuser's notifier). Called from the change-stream task for changes made by others.
pub trait Invalidator: Send + Sync {
    fn inode(&self, ino: u64);
    fn entry(&self, parent: u64, name: &[u8]);
}

/// Extents per CommitExtents call at most.
const MAX_COMMIT_EXTENTS: usize = 1024;
/// Directory entries returned by one `readdir`.
const READDIR_BATCH: usize = 512;
/// Revisions of this client's own commits remembered (not echoed to the kernel).
const OWN_REVISIONS: usize = 4096;
/// How far a read may start from where the previous one ended and still count as sequential.
const SEQUENTIAL_SLACK: u64 = 8 << 20;
/// Extent-map fetches that raced an invalidation before one is used anyway.
const MAP_ATTEMPTS: usize = 8;

/// The file-system core of one volume. Share it with `Arc`.
pub struct FsCore {
    pub(crate) meta: Arc<dyn MetaClient>,
    pub(crate) blocks: Blocks,
    pub(crate) config: FsConfig,
    root: u64,
    read_only: bool,
    pub(crate) cache: MetaCache,
    pub(crate) block_cache: Arc<BlockCache>,
    pub(crate) inodes: Mutex<HashMap<u64, Arc<InodeState>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    /// Directory → parent, as learnt from lookups and listings (for "..").
    parents: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
    dirty_bytes: AtomicU64,
    uploads: Arc<Semaphore>,
    pub(crate) invalidator: RwLock<Option<Arc<dyn Invalidator>>>,
    own: Mutex<VecDeque<u64>>,
    pub(crate) watched: tokio::sync::watch::Sender<u64>,
    watch_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for FsCore {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.watch_task).take() {
            t.abort();
        }
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            Timestamp {
                seconds: s,
                nanos: n,
            }
        }
    }
}

fn kind_of(attr: &Attr) -> FileKind {
    FileKind::try_from(attr.kind).unwrap_or(FileKind::Unspecified)
}

fn attr_of(r: mirrorfs_api::meta::AttrReply, what: &str) -> Result<Attr, FsError> {
    r.attr
        .ok_or_else(|| FsError::Io(format!("{what}: the meta service sent no attributes")))
}

impl FsCore {
    /// Opens the volume (OpenVolume) and, unless `config.watch` is off, starts following its
    /// change stream. `blocks` comes from [`Blocks::for_volume`] (or a test's bucket).
    pub async fn open_volume(
        meta: Arc<dyn MetaClient>,
        blocks: Blocks,
        mut config: FsConfig,
    ) -> Result<Arc<FsCore>, FsError> {
        let v = meta.open_volume().await?;
        if config.volume.is_empty() {
            config.volume = meta.volume().to_owned();
        }
        config.block_size = config.block_size.clamp(4096, BLOCK_SIZE);
        let (watched, _) = tokio::sync::watch::channel(v.revision);
        let core = Arc::new(FsCore {
            root: v.root_ino,
            read_only: v.read_only || !blocks.writable(),
            cache: MetaCache::new(config.meta_cache_items),
            block_cache: Arc::new(BlockCache::new(config.cache_bytes)),
            inodes: Mutex::default(),
            handles: Mutex::default(),
            dirs: Mutex::default(),
            parents: Mutex::default(),
            next_fh: AtomicU64::new(1),
            dirty_bytes: AtomicU64::new(0),
            uploads: Arc::new(Semaphore::new(config.upload_concurrency.max(1))),
            invalidator: RwLock::new(None),
            own: Mutex::default(),
            watched,
            watch_task: Mutex::new(None),
            meta: meta.clone(),
            blocks,
            config,
        });
        if core.config.watch {
            let task = tokio::spawn(crate::watch::follow(
                Arc::downgrade(&core),
                meta,
                v.revision + 1,
            ));
            *lock(&core.watch_task) = Some(task);
        }
        Ok(core)
    }

    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        *self.invalidator.write().unwrap_or_else(|p| p.into_inner()) = Some(inv);
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The last revision of the change stream this client has applied to its caches.
    pub fn watched_revision(&self) -> u64 {
        *self.watched.borrow()
    }

    /// Waits until the change stream has been applied up to `revision`; false on timeout.
    pub async fn wait_watched(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.watched.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops following the change stream (the caches are then only as fresh as this
    /// client's own changes).
    pub fn close(&self) {
        if let Some(t) = lock(&self.watch_task).take() {
            t.abort();
        }
    }

    /// Bytes written and not yet committed, over every file.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// Block cache hits and misses so far.
    pub fn block_cache_stats(&self) -> (u64, u64) {
        (
            self.block_cache.hits.load(Ordering::Relaxed),
            self.block_cache.misses.load(Ordering::Relaxed),
        )
    }

    fn writable(&self) -> Result<(), FsError> {
        if self.read_only {
            return Err(FsError::ReadOnly {
                volume: self.config.volume.clone(),
            });
        }
        Ok(())
    }

    fn own_revision(&self, rev: u64) {
        let mut own = lock(&self.own);
        if own.len() >= OWN_REVISIONS {
            own.pop_front();
        }
        own.push_back(rev);
    }

    pub(crate) fn is_own_revision(&self, rev: u64) -> bool {
        lock(&self.own).contains(&rev)
    }

    fn learn_parent(&self, attr: &Attr, parent: u64) {
        if kind_of(attr) == FileKind::Directory {
            lock(&self.parents).insert(attr.ino, parent);
        }
    }

    /// `attr` with the size of this client's unflushed writes.
    fn with_dirty(&self, mut attr: Attr) -> Attr {
        let st = lock(&self.inodes).get(&attr.ino).cloned();
        if let Some(st) = st {
            let f = lock(&st.file);
            if f.dirty.has_data() {
                attr.size = attr.size.max(f.dirty.size);
                attr.mtime = Some(timestamp(SystemTime::now()));
            }
        }
        attr
    }

    // ---- names and attributes ----

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if let Some(ino) = self.cache.entry(parent, name)
            && let Some(attr) = self.cache.attr(ino)
        {
            return Ok(self.with_dirty(attr));
        }
        let tickets = self.cache.tickets();
        let r = self
            .meta
            .lookup(LookupRequest {
                volume: None,
                parent,
                name: name.to_vec(),
            })
            .await?;
        let attr = attr_of(r, "lookup")?;
        let te = self.cache.entry_ticket_in(&tickets, parent, name);
        let ta = self.cache.attr_ticket_in(&tickets, attr.ino);
        self.cache.fill_entry(te, parent, name, attr.ino);
        self.cache.fill_attr(ta, &attr);
        self.learn_parent(&attr, parent);
        Ok(self.with_dirty(attr))
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(attr) = self.cache.attr(ino) {
            return Ok(self.with_dirty(attr));
        }
        let t = self.cache.attr_ticket(ino);
        let r = self
            .meta
            .getattr(GetAttrRequest { volume: None, ino })
            .await;
        let attr = match r {
            Ok(r) => attr_of(r, "getattr")?,
            // Unlinked while open: what this client last knew.
            Err(FsError::NotFound(m)) => return self.orphan_attr(ino).ok_or(FsError::NotFound(m)),
            Err(e) => return Err(e),
        };
        self.cache.fill_attr(t, &attr);
        Ok(self.with_dirty(attr))
    }

    /// The attributes of an open file whose inode is gone.
    fn orphan_attr(&self, ino: u64) -> Option<Attr> {
        let handle = lock(&self.handles)
            .values()
            .find(|h| h.ino == ino)
            .cloned()?;
        let map = lock(&handle.last_map).clone()?;
        let now = Some(timestamp(SystemTime::now()));
        Some(self.with_dirty(Attr {
            ino,
            kind: FileKind::File as i32,
            mode: 0o644,
            size: map.size,
            nlink: 0,
            atime: now,
            mtime: now,
            ctime: now,
            ..Default::default()
        }))
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> Result<Attr, FsError> {
        self.writable()?;
        let _ = fh;
        let req = SetAttrRequest {
            volume: None,
            ino,
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            atime: set.atime.map(timestamp),
            mtime: set.mtime.map(timestamp),
        };
        let st = lock(&self.inodes).get(&ino).cloned();
        let attr = match (set.size, st) {
            (Some(size), Some(st)) => {
                // Truncation: commit what is buffered first, then cut, with no flush between.
                let _held = st.commit.lock().await;
                self.flush_locked(ino, &st).await?;
                let attr = attr_of(self.meta.setattr(req).await?, "setattr")?;
                let mut f = lock(&st.file);
                let before = f.dirty.bytes;
                f.dirty.truncate(size);
                self.release_dirty(before - f.dirty.bytes);
                f.invalidate_map();
                attr
            }
            (None, Some(st)) => {
                // Buffered writes are committed first: their commit would otherwise stamp the
                // mtime after an explicit one (`cp -a`, `tar x` set it after writing).
                let _held = st.commit.lock().await;
                self.flush_locked(ino, &st).await?;
                attr_of(self.meta.setattr(req).await?, "setattr")?
            }
            (_, None) => attr_of(self.meta.setattr(req).await?, "setattr")?,
        };
        if set != SetAttr::default() {
            self.own_revision(attr.revision);
        }
        self.cache.put_attr(&attr);
        Ok(self.with_dirty(attr))
    }

    fn release_dirty(&self, n: u64) {
        if n > 0 {
            self.dirty_bytes.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Resolves a path from the volume root without following symlinks.
    pub async fn resolve(&self, path: &str) -> Result<Attr, FsError> {
        let r = self
            .meta
            .resolve(ResolveRequest {
                volume: None,
                path: path.to_owned(),
            })
            .await?;
        match r.result {
            Some(resolve_reply::Result::Found(attr)) => Ok(attr),
            Some(resolve_reply::Result::Missing(m)) => {
                let msg = format!(
                    "{path} in volume {}: {:?} has no {:?}",
                    self.config.volume, m.existing_prefix, m.missing_component
                );
                if m.blocking_kind != FileKind::Unspecified as i32 {
                    Err(FsError::NotDirectory(msg))
                } else {
                    Err(FsError::NotFound(msg))
                }
            }
            None => Err(FsError::Io(format!("resolve {path}: empty reply"))),
        }
    }

    // ---- directories ----

    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let attr = self.getattr(ino).await?;
        if kind_of(&attr) != FileKind::Directory {
            return Err(FsError::NotDirectory(format!("inode {ino}")));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(
            fh,
            Arc::new(DirHandle {
                ino,
                state: tokio::sync::Mutex::new(DirListing::default()),
            }),
        );
        Ok(fh)
    }

    /// Entries from `offset` (0, or the `offset` of the last entry received), "." and ".."
    /// first. Offsets stay valid while the handle is open; offset 0 lists afresh.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        self.list(ino, fh, offset, false).await
    }

    /// [`Self::readdir`]; with `plus`, pages are fetched with their entries' attributes, which
    /// fill the attribute and entry caches (one round trip per page instead of one per entry).
    async fn list(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        plus: bool,
    ) -> Result<Vec<DirEntry>, FsError> {
        let dh = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))?;
        let ino = if dh.ino == ino { ino } else { dh.ino };
        let mut l = dh.state.lock().await;
        if offset == 0 || !l.started {
            let parent = if ino == self.root {
                ino
            } else {
                lock(&self.parents).get(&ino).copied().unwrap_or(ino)
            };
            *l = DirListing {
                entries: vec![
                    DirEntry {
                        ino,
                        kind: FileKind::Directory,
                        name: b".".to_vec(),
                        offset: 1,
                    },
                    DirEntry {
                        ino: parent,
                        kind: FileKind::Directory,
                        name: b"..".to_vec(),
                        offset: 2,
                    },
                ],
                after: Vec::new(),
                more: true,
                started: true,
            };
        }
        let want = offset as usize + READDIR_BATCH;
        while l.entries.len() < want && l.more {
            let tickets = self.cache.tickets();
            let page = self
                .meta
                .readdir(ReadDirRequest {
                    volume: None,
                    ino,
                    after: l.after.clone(),
                    limit: 0,
                    plus,
                })
                .await?;
            for e in page.entries {
                let n = l.entries.len() as u64;
                if e.kind == FileKind::Directory as i32 {
                    lock(&self.parents).insert(e.ino, ino);
                }
                if let Some(attr) = &e.attr {
                    let te = self.cache.entry_ticket_in(&tickets, ino, &e.name);
                    self.cache.fill_entry(te, ino, &e.name, e.ino);
                    let ta = self.cache.attr_ticket_in(&tickets, e.ino);
                    self.cache.fill_attr(ta, attr);
                }
                l.after.clone_from(&e.name);
                l.entries.push(DirEntry {
                    ino: e.ino,
                    kind: FileKind::try_from(e.kind).unwrap_or(FileKind::File),
                    name: e.name,
                    offset: n + 1,
                });
            }
            l.more = page.more;
        }
        let from = (offset as usize).min(l.entries.len());
        let to = want.min(l.entries.len());
        Ok(l.entries[from..to].to_vec())
    }

    /// `readdir` with each entry's attributes: those the listing brought (cached by it), the
    /// rest fetched in parallel.
    pub async fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Vec<(DirEntry, Attr)>, FsError> {
        let entries = self.list(ino, fh, offset, true).await?;
        // Collected before polling: a lazy iterator held across the await would keep this
        // future from being provably `Send`, which the FUSE adapter's spawning needs.
        let fetches: Vec<_> = entries.iter().map(|e| self.getattr(e.ino)).collect();
        let attrs: Vec<_> = futures::stream::iter(fetches).buffered(64).collect().await;
        let mut out = Vec::with_capacity(entries.len());
        for (e, a) in entries.into_iter().zip(attrs) {
            match a {
                Ok(a) => out.push((e, a)),
                // Removed since the listing: skip it, as a fresh listing would.
                Err(FsError::NotFound(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    pub async fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let r = self
            .meta
            .mkdir(MkdirRequest {
                volume: None,
                parent,
                name: name.to_vec(),
                mode,
                uid,
                gid,
            })
            .await?;
        let attr = attr_of(r, "mkdir")?;
        self.created(parent, name, &attr, true);
        Ok(attr)
    }

    /// Records what this client just created.
    fn created(&self, parent: u64, name: &[u8], attr: &Attr, own: bool) {
        if own {
            self.own_revision(attr.revision);
        }
        self.cache.put_attr(attr);
        self.cache.put_entry(parent, name, attr.ino);
        self.cache.invalidate_attr(parent);
        self.learn_parent(attr, parent);
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let r = self
            .meta
            .symlink(SymlinkRequest {
                volume: None,
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                uid,
                gid,
            })
            .await?;
        let attr = attr_of(r, "symlink")?;
        self.cache.put_link(attr.ino, target);
        self.created(parent, name, &attr, true);
        Ok(attr)
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        if let Some(t) = self.cache.link(ino) {
            return Ok(t);
        }
        let r = self
            .meta
            .readlink(ReadLinkRequest { volume: None, ino })
            .await?;
        self.cache.put_link(ino, &r.target);
        Ok(r.target)
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, FsError> {
        self.writable()?;
        let r = self
            .meta
            .link(LinkRequest {
                volume: None,
                ino,
                new_parent,
                new_name: new_name.to_vec(),
            })
            .await?;
        let attr = attr_of(r, "link")?;
        self.created(new_parent, new_name, &attr, true);
        Ok(self.with_dirty(attr))
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let r = self
            .meta
            .unlink(UnlinkRequest {
                volume: None,
                parent,
                name: name.to_vec(),
            })
            .await?;
        self.removed(parent, name, r.ino, r.remaining_nlink);
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let r = self
            .meta
            .rmdir(RmdirRequest {
                volume: None,
                parent,
                name: name.to_vec(),
            })
            .await?;
        self.removed(parent, name, r.ino, 0);
        lock(&self.parents).remove(&r.ino);
        Ok(())
    }

    fn removed(&self, parent: u64, name: &[u8], ino: u64, remaining: u32) {
        self.cache.invalidate_entry(parent, name);
        self.cache.invalidate_attr(parent);
        if remaining == 0 {
            self.cache.forget(ino);
            let st = lock(&self.inodes).get(&ino).cloned();
            if let Some(st) = st {
                let mut f = lock(&st.file);
                f.invalidate_map();
                // Its writes can no longer be committed: they stay readable through open
                // handles until the last one closes.
                f.dirty.orphaned = true;
            }
        } else {
            self.cache.invalidate_attr(ino);
        }
    }

    /// `flags`: `libc::RENAME_NOREPLACE` and/or `libc::RENAME_EXCHANGE`.
    /// A refused rename onto a directory that contains the source is ENOTEMPTY, whatever the
    /// kinds, as the kernel answers before it asks any file system.
    async fn rename_error(
        &self,
        e: FsError,
        parent: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> FsError {
        if matches!(e, FsError::NotFound(_) | FsError::Unavailable(_)) {
            return e;
        }
        let Ok(target) = self.lookup(new_parent, new_name).await else {
            return e;
        };
        let mut dir = parent;
        for _ in 0..4096 {
            if dir == target.ino {
                return FsError::NotEmpty(format!(
                    "rename onto {:?}: it contains the source",
                    String::from_utf8_lossy(new_name)
                ));
            }
            if dir == self.root {
                break;
            }
            match lock(&self.parents).get(&dir) {
                Some(&up) if up != dir => dir = up,
                _ => break,
            }
        }
        e
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        self.writable()?;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !known != 0 {
            return Err(FsError::NotSupported(format!(
                "rename flags {flags:#x} (only RENAME_NOREPLACE and RENAME_EXCHANGE)"
            )));
        }
        let moved = self.cache.entry(parent, name);
        let r = self
            .meta
            .rename(RenameRequest {
                volume: None,
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                no_replace: flags & libc::RENAME_NOREPLACE != 0,
                exchange: flags & libc::RENAME_EXCHANGE != 0,
            })
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => return Err(self.rename_error(e, parent, new_parent, new_name).await),
        };
        self.cache.invalidate_entry(parent, name);
        self.cache.invalidate_entry(new_parent, new_name);
        self.cache.invalidate_attr(parent);
        self.cache.invalidate_attr(new_parent);
        if let Some(ino) = moved {
            self.cache.invalidate_attr(ino);
            if lock(&self.parents).contains_key(&ino) {
                lock(&self.parents).insert(ino, new_parent);
            }
        }
        if r.replaced_ino != 0 {
            if flags & libc::RENAME_EXCHANGE != 0 {
                self.cache.invalidate_attr(r.replaced_ino);
            } else {
                self.removed(
                    new_parent,
                    new_name,
                    r.replaced_ino,
                    r.replaced_remaining_nlink,
                );
            }
        }
        Ok(())
    }

    pub async fn statfs(&self) -> Result<StatFs, FsError> {
        const UNLIMITED_BYTES: u64 = 1 << 50;
        const UNLIMITED_INODES: u64 = 1 << 32;
        let r = self.meta.statfs().await?;
        let bsize = 4096u64;
        let cap_bytes = if r.capacity_bytes == 0 {
            UNLIMITED_BYTES.max(r.used_bytes * 2)
        } else {
            r.capacity_bytes
        };
        let cap_inodes = if r.capacity_inodes == 0 {
            UNLIMITED_INODES.max(r.used_inodes * 2)
        } else {
            r.capacity_inodes
        };
        let blocks = cap_bytes.div_ceil(bsize);
        let used = r.used_bytes.div_ceil(bsize);
        let bfree = blocks.saturating_sub(used);
        Ok(StatFs {
            blocks,
            bfree,
            bavail: bfree,
            files: cap_inodes,
            ffree: cap_inodes.saturating_sub(r.used_inodes),
            bsize: bsize as u32,
            namelen: 255,
            frsize: bsize as u32,
        })
    }

    // ---- files ----

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        flags: i32,
    ) -> Result<(Attr, u64), FsError> {
        self.writable()?;
        let r = self
            .meta
            .create(CreateRequest {
                volume: None,
                parent,
                name: name.to_vec(),
                mode,
                uid,
                gid,
                exclusive: flags & libc::O_EXCL != 0,
            })
            .await?;
        let mut attr = attr_of(r, "create")?;
        self.created(parent, name, &attr, false);
        if flags & libc::O_TRUNC != 0 && attr.size > 0 {
            attr = self.truncate(attr.ino, 0).await?;
        }
        let fh = self.open_handle(&attr, flags).await?;
        Ok((self.with_dirty(attr), fh))
    }

    async fn truncate(&self, ino: u64, size: u64) -> Result<Attr, FsError> {
        self.setattr(
            ino,
            SetAttr {
                size: Some(size),
                ..Default::default()
            },
            None,
        )
        .await
    }

    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            self.writable()?;
        }
        let mut attr = self.getattr(ino).await?;
        match kind_of(&attr) {
            FileKind::Directory if writes => {
                return Err(FsError::IsDirectory(format!("inode {ino}")));
            }
            FileKind::Symlink => {
                return Err(FsError::Invalid(format!(
                    "inode {ino} is a symlink; open its target"
                )));
            }
            _ => {}
        }
        if flags & libc::O_TRUNC != 0 && kind_of(&attr) == FileKind::File && attr.size > 0 {
            attr = self.truncate(ino, 0).await?;
        }
        self.open_handle(&attr, flags).await
    }

    /// Registers a handle; for a file, reads its extent map now so the file stays readable
    /// if it is unlinked while open.
    async fn open_handle(&self, attr: &Attr, flags: i32) -> Result<u64, FsError> {
        let ino = attr.ino;
        let inode = {
            let mut inodes = lock(&self.inodes);
            let st = inodes.entry(ino).or_default().clone();
            st.handles.fetch_add(1, Ordering::AcqRel);
            st
        };
        let h = Arc::new(Handle {
            ino,
            flags,
            inode,
            last_map: Mutex::new(None),
            next_read: AtomicU64::new(0),
        });
        if kind_of(attr) == FileKind::File {
            if attr.size == 0 && attr.nlink > 0 {
                // Nothing to read yet (a new file): no need to ask.
                let mut f = lock(&h.inode.file);
                if f.map.is_none() && !f.dirty.has_data() {
                    let empty = Arc::new(ExtentMap::default());
                    f.map = Some(empty.clone());
                    *lock(&h.last_map) = Some(empty);
                }
            }
            if let Err(e) = self.snapshot(&h, 0, 0).await {
                self.drop_handle(&h);
                return Err(e);
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// The extent map and the dirty pieces over `[start, end)`, taken together, and the size
    /// of the dirty data if there is any.
    async fn snapshot(
        &self,
        h: &Handle,
        start: u64,
        end: u64,
    ) -> Result<(Arc<ExtentMap>, Vec<Piece>, Option<u64>), FsError> {
        let take = |f: &FileState, m: Arc<ExtentMap>| {
            let size = f.dirty.has_data().then_some(f.dirty.size);
            (m, f.dirty.overlay(start, end), size)
        };
        let mut attempt = 0;
        loop {
            let generation = {
                let f = lock(&h.inode.file);
                if let Some(m) = &f.map {
                    let m = m.clone();
                    *lock(&h.last_map) = Some(m.clone());
                    return Ok(take(&f, m));
                }
                if f.dirty.orphaned
                    && let Some(m) = lock(&h.last_map).clone()
                {
                    return Ok(take(&f, m));
                }
                f.map_gen
            };
            attempt += 1;
            let r = self
                .meta
                .read_extents(ReadExtentsRequest {
                    volume: None,
                    ino: h.ino,
                    offset: 0,
                    length: u64::MAX,
                })
                .await;
            match r {
                Ok(r) => {
                    let m = Arc::new(ExtentMap::from_reply(r));
                    *lock(&h.last_map) = Some(m.clone());
                    let mut f = lock(&h.inode.file);
                    if f.map_gen == generation {
                        f.map = Some(m.clone());
                        return Ok(take(&f, m));
                    }
                    if attempt >= MAP_ATTEMPTS {
                        return Ok(take(&f, m));
                    }
                }
                Err(FsError::NotFound(msg)) => {
                    let f = lock(&h.inode.file);
                    return match lock(&h.last_map).clone() {
                        Some(m) => Ok(take(&f, m)),
                        None => Err(FsError::NotFound(msg)),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let h = self.handle(fh)?;
        if h.ino != ino {
            return Err(FsError::BadHandle(fh));
        }
        let want_end = offset.saturating_add(size as u64);
        let (map, overlay, dirty_size) = self.snapshot(&h, offset, want_end).await?;
        let file_size = map.size.max(dirty_size.unwrap_or(0));
        let end = want_end.min(file_size);
        let data = assemble(&self.block_cache, &self.blocks, &map, offset, end, &overlay).await?;
        let prev = h.next_read.swap(end, Ordering::Relaxed);
        // The kernel sends a sequential reader's requests several at a time (asynchronous
        // reads and its own readahead), so they may arrive a little out of order.
        let sequential = offset.abs_diff(prev) <= SEQUENTIAL_SLACK;
        if sequential && self.config.readahead_blocks > 0 && end < map.size {
            self.readahead(&map, end);
        }
        Ok(data)
    }

    /// Fetches the blocks after `from` into the cache in the background.
    fn readahead(&self, map: &ExtentMap, from: u64) {
        for b in map.blocks_after(from, self.config.readahead_blocks) {
            if self.block_cache.contains_or_loading(&b.id) {
                continue;
            }
            let cache = self.block_cache.clone();
            let blocks = self.blocks.clone();
            tokio::spawn(async move {
                if let Err(e) = fetch_block(&cache, &blocks, b).await {
                    tracing::debug!(error = %e, "readahead failed; the read itself will retry");
                }
            });
        }
    }

    pub async fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.writable()?;
        let h = self.handle(fh)?;
        if h.ino != ino || !h.writable() {
            return Err(FsError::BadHandle(fh));
        }
        let committed = {
            let f = lock(&h.inode.file);
            f.map.as_ref().map(|m| m.size)
        };
        let committed = match committed {
            Some(s) => s,
            None => self.snapshot(&h, 0, 0).await?.0.size,
        };
        let block = self.config.block_size as u64;
        let added = {
            let mut f = lock(&h.inode.file);
            let offset = if h.append() {
                if f.dirty.has_data() {
                    f.dirty.size
                } else {
                    committed
                }
            } else {
                offset
            };
            let w = f.dirty.write(offset, data, block, committed);
            for c in w.full {
                let s = self.seal(c);
                f.dirty.push_sealed(s);
            }
            w.added
        };
        let total = self.dirty_bytes.fetch_add(added, Ordering::Relaxed) + added;
        if total > self.config.max_dirty_bytes {
            self.flush_inode(&h.inode, ino).await?;
        }
        Ok(data.len() as u32)
    }

    /// Turns a chunk into an immutable one and starts uploading its block.
    fn seal(&self, c: crate::write::Chunk) -> Arc<Sealed> {
        let data = Bytes::from(c.data);
        let (a, b) = c.written.span().unwrap_or((0, 0));
        let upload = self.upload(data.slice(a as usize..b as usize));
        Arc::new(Sealed {
            seq: c.seq,
            base: c.base,
            data,
            written: c.written,
            upload: Mutex::new(upload),
        })
    }

    fn upload(&self, bytes: Bytes) -> crate::write::Upload {
        let blocks = self.blocks.clone();
        let permits = self.uploads.clone();
        let cache = self.block_cache.clone();
        start_upload(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| FsError::Io("the uploader was shut down".into()))?;
            let info = blocks.put(bytes.clone()).await?;
            cache.insert(info.id.clone(), bytes);
            Ok(info)
        })
    }

    async fn flush_inode(&self, st: &Arc<InodeState>, ino: u64) -> Result<(), FsError> {
        let _held = st.commit.lock().await;
        self.flush_locked(ino, st).await
    }

    /// Seals every open chunk, waits for every upload and commits the extents, in write order.
    /// The caller holds `st.commit`.
    async fn flush_locked(&self, ino: u64, st: &Arc<InodeState>) -> Result<(), FsError> {
        let (batch, size) = {
            let mut f = lock(&st.file);
            if !f.dirty.has_data() || f.dirty.orphaned {
                return Ok(());
            }
            for c in f.dirty.take_open() {
                let s = self.seal(c);
                f.dirty.push_sealed(s);
            }
            (f.dirty.sealed.clone(), f.dirty.size)
        };
        let uploads = batch.iter().map(|s| lock(&s.upload).clone());
        let results = futures::future::join_all(uploads).await;
        let mut extents = Vec::new();
        let mut failed = None;
        for (s, r) in batch.iter().zip(results) {
            match r {
                Ok(info) => extents.extend(s.extents(&info)),
                Err(e) => {
                    // The next flush tries this block again.
                    *lock(&s.upload) = self.upload(s.block_bytes());
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let upto = batch.last().map_or(0, |s| s.seq);
        let parts: Vec<&[_]> = extents.chunks(MAX_COMMIT_EXTENTS).collect();
        let mut attr = None;
        for (i, part) in parts.iter().enumerate() {
            let new_size = if i + 1 == parts.len() {
                size
            } else {
                part.iter().map(|e| e.offset + e.length).max().unwrap_or(0)
            };
            let r = self
                .meta
                .commit_extents(CommitExtentsRequest {
                    volume: None,
                    ino,
                    extents: part.to_vec(),
                    new_size,
                    mtime: None,
                })
                .await;
            match r {
                Ok(r) => attr = r.attr,
                Err(FsError::NotFound(_)) => {
                    lock(&st.file).dirty.orphaned = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if parts.is_empty() {
            // Only the size changed (a write of nothing past the end cannot happen, but a
            // truncated buffer can leave a size to record).
            let r = self
                .meta
                .commit_extents(CommitExtentsRequest {
                    volume: None,
                    ino,
                    extents: Vec::new(),
                    new_size: size,
                    mtime: None,
                })
                .await?;
            attr = r.attr;
        }
        {
            let mut f = lock(&st.file);
            let freed = f.dirty.drop_committed(upto);
            self.release_dirty(freed);
            f.invalidate_map();
        }
        if let Some(a) = attr {
            self.own_revision(a.revision);
            self.cache.put_attr(&a);
        }
        Ok(())
    }

    /// Uploads and commits the file's buffered writes.
    pub async fn flush(&self, ino: u64, fh: u64) -> Result<(), FsError> {
        let h = self.handle(fh)?;
        if self.read_only {
            return Ok(());
        }
        self.flush_inode(&h.inode, ino).await
    }

    pub async fn fsync(&self, ino: u64, fh: u64) -> Result<(), FsError> {
        self.flush(ino, fh).await
    }

    /// Flushes and closes the handle. The handle is closed even when the flush fails (the
    /// data then stays buffered and the error is returned).
    pub async fn release(&self, ino: u64, fh: u64) -> Result<(), FsError> {
        let h = self.handle(fh)?;
        let r = if self.read_only {
            Ok(())
        } else {
            self.flush_inode(&h.inode, ino).await
        };
        lock(&self.handles).remove(&fh);
        self.drop_handle(&h);
        r
    }

    fn drop_handle(&self, h: &Handle) {
        let mut inodes = lock(&self.inodes);
        if h.inode.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let f = lock(&h.inode.file);
            if !f.dirty.has_data() || f.dirty.orphaned {
                self.release_dirty(f.dirty.bytes);
                drop(f);
                inodes.remove(&h.ino);
            }
        }
    }

    /// Flushes every file with buffered writes (unmount).
    pub async fn flush_all(&self) -> Result<(), FsError> {
        let all: Vec<(u64, Arc<InodeState>)> = lock(&self.inodes)
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        let mut first_err = None;
        for (ino, st) in all {
            if let Err(e) = self.flush_inode(&st, ino).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
