//! Open files and directories: the per-inode state shared by every handle of a file (its
//! uncommitted writes and its cached extent map), and the handles themselves (open flags,
//! the extent map read at open for open-unlinked files, the sequential-read tracker, and for
//! directories the listing read so far, so offsets stay stable while the handle is open).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use mirrorfs_api::meta::FileKind;

use crate::read::ExtentMap;
use crate::write::Dirty;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one client holds about an open (or recently written) file.
#[derive(Default)]
pub struct FileState {
    pub dirty: Dirty,
    /// The extents as last read; `None` once something changed them.
    pub map: Option<Arc<ExtentMap>>,
    /// Bumped by every invalidation of `map`, so a fetch that raced one is not installed.
    pub map_gen: u64,
}

impl FileState {
    pub fn invalidate_map(&mut self) {
        self.map = None;
        self.map_gen += 1;
    }
}

/// Per-inode state of an open file.
#[derive(Default)]
pub struct InodeState {
    pub file: Mutex<FileState>,
    /// Serialises flushes (and truncations) so extents are committed in write order.
    pub commit: tokio::sync::Mutex<()>,
    /// Open handles of the inode.
    pub handles: AtomicUsize,
}

/// An open file.
pub struct Handle {
    pub ino: u64,
    pub flags: i32,
    pub inode: Arc<InodeState>,
    /// The extent map read most recently through this handle: serves reads once the inode is
    /// gone (unlinked while open).
    pub last_map: Mutex<Option<Arc<ExtentMap>>>,
    /// Where the next sequential read would start.
    pub next_read: AtomicU64,
}

impl Handle {
    pub fn writable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }

    pub fn append(&self) -> bool {
        self.flags & libc::O_APPEND != 0
    }
}

/// An entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
    /// The offset to pass to `readdir` to continue after this entry.
    pub offset: u64,
}

/// An open directory: the entries listed so far, "." and ".." first.
pub struct DirHandle {
    pub ino: u64,
    pub state: tokio::sync::Mutex<DirListing>,
}

#[derive(Default)]
pub struct DirListing {
    pub entries: Vec<DirEntry>,
    /// Resume cursor of the next ReadDir page.
    pub after: Vec<u8>,
    /// Whether the server has more pages.
    pub more: bool,
    pub started: bool,
}
