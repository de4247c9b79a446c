//! The thin `fuser` adapter: each handler turns a kernel request into one [`FsCore`] call,
//! spawned on the tokio runtime so the FUSE threads never wait on the network, and replies from
//! that task. Errors reach the kernel only through [`FsError::errno`].
//!
//! Two things live here rather than in the core because they are about the kernel:
//! - on a read-only (mirror) mount every write-type request is answered `EROFS` before the core
//!   is asked (the kernel's read-only flag stops most of them earlier still);
//! - [`KernelInvalidator`], the core's [`Invalidator`] over fuser's notifier, so that changes
//!   made by other clients (or applied by a mirror) drop the kernel's attribute, entry and page
//!   caches. Notifications are sent from a thread of their own: the kernel may block them while
//!   it waits for a reply to a request on the same inode.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use mirrorfs_api::meta::{Attr, FileKind, Timestamp};
use tokio::runtime::Handle;

use crate::core::{FsCore, Invalidator, SetAttr};
use crate::error::FsError;

/// Largest write the kernel sends in one request (and the reads it asks for, with readahead).
const MAX_WRITE: u32 = 1 << 20;
/// Largest readahead asked of the kernel.
const MAX_READAHEAD: u32 = 4 << 20;
/// Background requests (readahead, async reads) the kernel keeps in flight.
const MAX_BACKGROUND: u16 = 64;
/// `st_blksize`: the I/O size tools such as `cp` pick.
const BLKSIZE: u32 = 1 << 20;

/// A volume served to the kernel: an [`FsCore`], the runtime its calls run on, and whether
/// write-type requests are refused here.
pub struct FuseFs {
    core: Arc<FsCore>,
    rt: Handle,
    read_only: bool,
    ttl: Duration,
    root: u64,
}

impl FuseFs {
    /// `read_only` adds to the core's own answer (a mirror volume is always read-only).
    pub fn new(core: Arc<FsCore>, rt: Handle, read_only: bool) -> Self {
        Self {
            read_only: read_only || core.read_only(),
            ttl: core.config().attr_ttl,
            root: core.root(),
            core,
            rt,
        }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The core's inode number for the kernel's (the kernel's root is always 1).
    fn ino(&self, ino: INodeNo) -> u64 {
        if ino == INodeNo::ROOT {
            self.root
        } else {
            ino.0
        }
    }

    /// Runs `f` with the core on the runtime; `f` replies.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<FsCore>, Kernel) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let kernel = Kernel {
            ttl: self.ttl,
            root: self.root,
        };
        self.rt.spawn(f(self.core.clone(), kernel));
    }
}

/// What a spawned handler needs to translate attributes for the kernel.
#[derive(Clone, Copy)]
struct Kernel {
    ttl: Duration,
    root: u64,
}

impl Kernel {
    fn ino(&self, ino: u64) -> INodeNo {
        if ino == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(ino)
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let kind = file_type(FileKind::try_from(a.kind).unwrap_or(FileKind::File));
        FileAttr {
            ino: self.ino(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: time(a.atime.as_ref()),
            mtime: time(a.mtime.as_ref()),
            ctime: time(a.ctime.as_ref()),
            crtime: time(a.ctime.as_ref()),
            kind,
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::File | FileKind::Unspecified => FileType::RegularFile,
    }
}

fn time(t: Option<&Timestamp>) -> SystemTime {
    let Some(t) = t else { return UNIX_EPOCH };
    let nanos = Duration::new(0, t.nanos.min(999_999_999));
    if t.seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.seconds as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.seconds.unsigned_abs()) + nanos
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

/// The errno of a failed core call (the one mapping, [`FsError::errno`]), logged.
fn errno(op: &'static str, e: &FsError) -> Errno {
    let code = e.errno();
    if code == libc::EIO {
        tracing::warn!(op, error = %e, "file-system operation failed");
    } else {
        tracing::debug!(op, error = %e, "file-system operation refused");
    }
    Errno::from_i32(code)
}

/// A write-type request on a read-only mount.
fn read_only_errno() -> Errno {
    Errno::from_i32(
        FsError::ReadOnly {
            volume: String::new(),
        }
        .errno(),
    )
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        // Each capability only if this kernel has it.
        for cap in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(cap);
        }
        tracing::debug!(volume = %self.core.config().volume, read_only = self.read_only, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let (parent, n) = (self.ino(parent), name(n));
        self.spawn(move |core, k| async move {
            match core.lookup(parent, &n).await {
                Ok(a) => reply.entry(&k.ttl, &k.attr(&a), Generation(0)),
                Err(e) => reply.error(errno("lookup", &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = self.ino(ino);
        self.spawn(move |core, k| async move {
            match core.getattr(ino).await {
                Ok(a) => reply.attr(&k.ttl, &k.attr(&a)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let ino = self.ino(ino);
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.spawn(move |core, k| async move {
            match core.setattr(ino, set, fh.map(|f| f.0)).await {
                Ok(a) => reply.attr(&k.ttl, &k.attr(&a)),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            let e = FsError::NotSupported(
                "special files (devices, fifos, sockets) cannot be stored in a mirrorfs volume"
                    .into(),
            );
            return reply.error(errno("mknod", &e));
        }
        let (parent, n, uid, gid) = (self.ino(parent), name(n), req.uid(), req.gid());
        self.spawn(move |core, k| async move {
            let flags = libc::O_WRONLY | libc::O_EXCL;
            match core
                .create(parent, &n, mode & 0o7777, uid, gid, flags)
                .await
            {
                Ok((a, fh)) => {
                    let _ = core.release(a.ino, fh).await;
                    reply.entry(&k.ttl, &k.attr(&a), Generation(0));
                }
                Err(e) => reply.error(errno("mknod", &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n, uid, gid) = (self.ino(parent), name(n), req.uid(), req.gid());
        self.spawn(move |core, k| async move {
            match core.mkdir(parent, &n, mode & 0o7777, uid, gid).await {
                Ok(a) => reply.entry(&k.ttl, &k.attr(&a), Generation(0)),
                Err(e) => reply.error(errno("mkdir", &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n) = (self.ino(parent), name(n));
        self.spawn(move |core, _| async move {
            match core.unlink(parent, &n).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("unlink", &e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n) = (self.ino(parent), name(n));
        self.spawn(move |core, _| async move {
            match core.rmdir(parent, &n).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rmdir", &e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n, uid, gid) = (self.ino(parent), name(link_name), req.uid(), req.gid());
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(move |core, k| async move {
            match core.symlink(parent, &n, &target, uid, gid).await {
                Ok(a) => reply.entry(&k.ttl, &k.attr(&a), Generation(0)),
                Err(e) => reply.error(errno("symlink", &e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n) = (self.ino(parent), name(n));
        let (new_parent, new_name) = (self.ino(new_parent), name(new_name));
        self.spawn(move |core, _| async move {
            match core
                .rename(parent, &n, new_parent, &new_name, flags.bits())
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rename", &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (ino, new_parent, new_name) = (self.ino(ino), self.ino(new_parent), name(new_name));
        self.spawn(move |core, k| async move {
            match core.link(ino, new_parent, &new_name).await {
                Ok(a) => reply.entry(&k.ttl, &k.attr(&a), Generation(0)),
                Err(e) => reply.error(errno("link", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if self.read_only && writes {
            return reply.error(read_only_errno());
        }
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.open(ino, flags).await {
                // The page cache survives reopening: changes by others invalidate it.
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.read(ino, fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (ino, data) = (self.ino(ino), data.to_vec());
        self.spawn(move |core, _| async move {
            match core.write(ino, fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.flush(ino, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("flush", &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.release(ino, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("release", &e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.fsync(ino, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fsync", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.ino(ino);
        self.spawn(move |core, _| async move {
            match core.opendir(ino).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, k| async move {
            match core.readdir(ino, fh.0, offset).await {
                Ok(entries) => {
                    for e in entries {
                        let full = reply.add(
                            k.ino(e.ino),
                            e.offset,
                            file_type(e.kind),
                            OsStr::from_bytes(&e.name),
                        );
                        if full {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ino = self.ino(ino);
        self.spawn(move |core, k| async move {
            match core.readdirplus(ino, fh.0, offset).await {
                Ok(entries) => {
                    for (e, a) in entries {
                        let full = reply.add(
                            k.ino(e.ino),
                            e.offset,
                            OsStr::from_bytes(&e.name),
                            &k.ttl,
                            &k.attr(&a),
                            Generation(0),
                        );
                        if full {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |core, _| async move {
            core.releasedir(fh.0).await;
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are committed by the meta service before they are answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |core, _| async move {
            match core.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(errno("statfs", &e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        // Extended attributes are not stored. ENOSYS is the protocol's "never ask again": the
        // kernel remembers it and answers EOPNOTSUPP itself.
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, r: ReplyXattr) {
        // As setxattr: the kernel stops asking (and `ls -l` stops paying a round trip per file).
        r.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); what is left is
        // whether writing is possible at all.
        if self.read_only && mask.contains(AccessFlags::W_OK) {
            return reply.error(read_only_errno());
        }
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        let (parent, n, uid, gid) = (self.ino(parent), name(n), req.uid(), req.gid());
        self.spawn(move |core, k| async move {
            match core
                .create(parent, &n, mode & 0o7777, uid, gid, flags)
                .await
            {
                Ok((a, fh)) => reply.created(
                    &k.ttl,
                    &k.attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        // Blocks are written when data is; posix_fallocate(3) falls back to writing.
        let e = FsError::NotSupported("fallocate: space is not reserved ahead of writes".into());
        reply.error(errno("fallocate", &e));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if self.read_only {
            return reply.error(read_only_errno());
        }
        // No server-side copy: ENOSYS makes the kernel copy through read and write.
        reply.error(Errno::ENOSYS);
    }
}

/// The core's [`Invalidator`] over fuser's [`Notifier`]: requests are queued and sent by a
/// thread of their own, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct KernelInvalidator {
    tx: mpsc::Sender<Inval>,
}

enum Inval {
    Inode(u64),
    Entry(u64, Vec<u8>),
}

impl KernelInvalidator {
    /// Starts the notifying thread for the session of `notifier`; `root` is the core's root
    /// inode (the kernel's 1).
    pub fn start(notifier: Notifier, root: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Inval>();
        let k = Kernel {
            ttl: Duration::ZERO,
            root,
        };
        std::thread::Builder::new()
            .name("mirrorfs-inval".into())
            .spawn(move || {
                for inval in rx {
                    let r = match &inval {
                        // Attributes and every cached page of the file.
                        Inval::Inode(ino) => notifier.inval_inode(k.ino(*ino), 0, 0),
                        Inval::Entry(parent, n) => {
                            notifier.inval_entry(k.ino(*parent), OsStr::from_bytes(n))
                        }
                    };
                    if let Err(e) = r {
                        // The kernel no longer has it, or the session is ending.
                        tracing::trace!(error = %e, "kernel cache invalidation not applied");
                    }
                }
            })?;
        Ok(Self { tx })
    }
}

impl Invalidator for KernelInvalidator {
    fn inode(&self, ino: u64) {
        let _ = self.tx.send(Inval::Inode(ino));
    }

    fn entry(&self, parent: u64, name: &[u8]) {
        let _ = self.tx.send(Inval::Entry(parent, name.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_both_sides_of_the_epoch() {
        let t = Timestamp {
            seconds: 5,
            nanos: 7,
        };
        assert_eq!(time(Some(&t)), UNIX_EPOCH + Duration::new(5, 7));
        let t = Timestamp {
            seconds: -2,
            nanos: 500_000_000,
        };
        assert_eq!(
            time(Some(&t)),
            UNIX_EPOCH - Duration::from_millis(1500),
            "-2 s + 0.5 s"
        );
        assert_eq!(time(None), UNIX_EPOCH);
    }

    #[test]
    fn the_read_only_answer_is_erofs() {
        assert_eq!(read_only_errno().code(), libc::EROFS);
    }

    #[test]
    fn the_kernel_root_is_the_volume_root() {
        let k = Kernel {
            ttl: Duration::ZERO,
            root: 77,
        };
        assert_eq!(k.ino(77), INodeNo::ROOT);
        assert_eq!(k.ino(5), INodeNo(5));
    }
}
