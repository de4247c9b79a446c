//! File-system metadata over an [`Engine`]: volumes, inodes, directory entries, symlinks and
//! file extents, with the POSIX rules the FUSE client relies on. Every operation is one engine
//! transaction guarded by compares on what it read, retried on conflict; see `keys` for the
//! layout of the keyspace.

use std::sync::Arc;

use mirrorfs_api::meta::{Attr, Entry, Extent, StorageConfig, Timestamp, VolumeInfo};
use mirrorfs_api::{Ino, Revision, VolumeId};

use crate::engine::Engine;
use crate::error::Result;

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
}

/// File-system metadata of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct FsMeta {
    engine: Arc<dyn Engine>,
}

impl FsMeta {
    /// Opens the metadata in `engine`, initialising the cluster record on first use.
    pub async fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let _ = &engine;
        todo!("FsMeta::open")
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The cluster's id, generated when the keyspace was initialised.
    pub async fn cluster_id(&self) -> Result<String> {
        todo!()
    }

    // --- volumes --------------------------------------------------------------------------

    /// Creates a volume and returns it with its access token (shown once; only a hash is kept).
    pub async fn create_volume(&self, new: NewVolume) -> Result<(VolumeInfo, String)> {
        let _ = new;
        todo!()
    }
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        todo!()
    }
    /// Deletes a volume's metadata (not its data blocks).
    pub async fn delete_volume(&self, name: &str) -> Result<Revision> {
        let _ = name;
        todo!()
    }
    /// Checks `token` against the volume named `name`.
    pub async fn authenticate(&self, name: &str, token: &str) -> Result<Volume> {
        let _ = (name, token);
        todo!()
    }
    /// The stored storage configuration of a volume.
    pub async fn volume_info(&self, vol: &Volume) -> Result<VolumeInfo> {
        let _ = vol;
        todo!()
    }

    // --- file-system operations -------------------------------------------------------------

    pub async fn lookup(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _ = (vol, parent, name);
        todo!()
    }
    pub async fn getattr(&self, vol: &Volume, ino: Ino) -> Result<Attr> {
        let _ = (vol, ino);
        todo!()
    }
    pub async fn setattr(&self, vol: &Volume, ino: Ino, set: SetAttr) -> Result<Attr> {
        let _ = (vol, ino, set);
        todo!()
    }
    /// Entries after `after` (exclusive, in name order), at most `limit`.
    pub async fn readdir(
        &self,
        vol: &Volume,
        ino: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<DirPage> {
        let _ = (vol, ino, after, limit);
        todo!()
    }
    pub async fn mkdir(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        owner: Owner,
    ) -> Result<Attr> {
        let _ = (vol, parent, name, owner);
        todo!()
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
        let _ = (vol, parent, name, owner, exclusive);
        todo!()
    }
    pub async fn unlink(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Removed> {
        let _ = (vol, parent, name);
        todo!()
    }
    pub async fn rmdir(&self, vol: &Volume, parent: Ino, name: &[u8]) -> Result<Removed> {
        let _ = (vol, parent, name);
        todo!()
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
        let _ = (
            vol, parent, name, new_parent, new_name, no_replace, exchange,
        );
        todo!()
    }
    pub async fn link(
        &self,
        vol: &Volume,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Attr> {
        let _ = (vol, ino, new_parent, new_name);
        todo!()
    }
    pub async fn symlink(
        &self,
        vol: &Volume,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> Result<Attr> {
        let _ = (vol, parent, name, target, owner);
        todo!()
    }
    pub async fn readlink(&self, vol: &Volume, ino: Ino) -> Result<Vec<u8>> {
        let _ = (vol, ino);
        todo!()
    }
    pub async fn statfs(&self, vol: &Volume) -> Result<Usage> {
        let _ = vol;
        todo!()
    }
    /// Extents overlapping `[offset, offset + length)`, in offset order, and the file size.
    pub async fn read_extents(
        &self,
        vol: &Volume,
        ino: Ino,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<Extent>, u64)> {
        let _ = (vol, ino, offset, length);
        todo!()
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
        let _ = (vol, ino, extents, new_size, mtime);
        todo!()
    }
    /// Resolves `path` from the volume root without following symlinks.
    pub async fn resolve(&self, vol: &Volume, path: &str) -> Result<Resolved> {
        let _ = (vol, path);
        todo!()
    }
}
