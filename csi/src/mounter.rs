//! The node's effects on the operating system, behind one trait: reading the mount table,
//! checking a path's health, starting FUSE mount processes, deleting their disk caches, read-only bind mounts of a volume's
//! subdirectory (resolved without following symlinks), unmounting, usage. `linux` is the real
//! implementation (nix, openat2); `fake` keeps a mount table in memory for unit tests.

pub mod fake;
pub mod linux;

use std::io;
use std::path::Path;

use crate::mirror::Kind;
use crate::mountinfo::MountEntry;
use crate::process::FuseMount;
use crate::relpath::RelPath;

/// What `stat` says about a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Directory,
    Missing,
    NotDirectory,
    /// A dead or hung FUSE connection or another I/O failure (ENOTCONN, EIO, ESTALE, …).
    Broken(String),
}

/// Why a subdirectory could not be bind-mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindError {
    /// `existing_prefix` (volume-relative, `/` for the root) has no entry `component`.
    Missing {
        existing_prefix: String,
        component: String,
    },
    /// The path (volume-relative) is not a directory.
    NotDirectory {
        path: String,
        kind: Kind,
    },
    Os(String),
}

/// Bytes and inodes of a mounted file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

#[async_trait::async_trait]
pub trait Mounter: Send + Sync + 'static {
    /// The calling process's mount table.
    async fn mount_table(&self) -> io::Result<Vec<MountEntry>>;
    /// `stat` of `path`, bounded in time (a hung FUSE daemon counts as broken).
    async fn health(&self, path: &Path) -> Health;
    /// Creates `path` (its parent must exist); true if it was created, false if it existed.
    async fn make_dir(&self, path: &Path) -> io::Result<bool>;
    /// Removes the empty directory `path`; absent is fine.
    async fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Deletes the disk cache directory `dir` of an unmounted volume, once the exiting mount
    /// process has let go of its lock (waiting a bounded time); absent is fine.
    async fn remove_cache_dir(&self, dir: &Path) -> io::Result<()>;
    /// Starts a FUSE mount process and returns once the mount is live.
    async fn mount_fuse(&self, m: &FuseMount) -> Result<(), String>;
    /// Unmounts the topmost mount at `path` (lazily when busy or broken); not mounted is fine.
    async fn unmount(&self, path: &Path) -> io::Result<()>;
    /// Resolves `subdir` under `root` without following any symlink or leaving `root`, bind
    /// mounts it at `target` and remounts the bind read-only with `flags` (nosuid, nodev, …).
    async fn bind_read_only(
        &self,
        root: &Path,
        subdir: &RelPath,
        target: &Path,
        flags: &[String],
    ) -> Result<(), BindError>;
    /// Remounts the existing mount at `path` read-only (per-mount flag).
    async fn remount_read_only(&self, path: &Path) -> io::Result<()>;
    /// Usage of the file system mounted at `path`.
    async fn usage(&self, path: &Path) -> io::Result<Usage>;
    /// Whether FUSE can be used here (`/dev/fuse`); the error says what is missing.
    fn check_fuse(&self) -> Result<(), String>;
}
