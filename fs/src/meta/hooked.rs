//! A [`MetaClient`] that runs a hook before every call and forwards it: counts calls, or fails
//! them (an outage, a slow service) in tests of the layers above.

use std::sync::Arc;

use async_trait::async_trait;
use mirrorfs_api::meta::{
    AttrReply, CommitExtentsRequest, CreateRequest, GetAttrRequest, LinkRequest, LookupRequest,
    MkdirRequest, OpenVolumeReply, ReadDirReply, ReadDirRequest, ReadExtentsReply,
    ReadExtentsRequest, ReadLinkReply, ReadLinkRequest, RenameReply, RenameRequest, ResolveReply,
    ResolveRequest, RmdirRequest, SetAttrRequest, StatFsReply, SymlinkRequest, UnlinkReply,
    UnlinkRequest,
};

use super::{ChangeStream, MetaClient, WatchError};
use crate::error::FsError;

/// Called with the operation's name ("lookup", "watch_volume", ...) before it is forwarded;
/// an error fails the call instead.
pub type Hook = Arc<dyn Fn(&'static str) -> Result<(), FsError> + Send + Sync>;

pub struct Hooked {
    inner: Arc<dyn MetaClient>,
    hook: Hook,
}

impl Hooked {
    pub fn new(inner: Arc<dyn MetaClient>, hook: Hook) -> Self {
        Self { inner, hook }
    }
}

#[async_trait]
impl MetaClient for Hooked {
    fn volume(&self) -> &str {
        self.inner.volume()
    }
    async fn open_volume(&self) -> Result<OpenVolumeReply, FsError> {
        (self.hook)("open_volume")?;
        self.inner.open_volume().await
    }
    async fn lookup(&self, req: LookupRequest) -> Result<AttrReply, FsError> {
        (self.hook)("lookup")?;
        self.inner.lookup(req).await
    }
    async fn getattr(&self, req: GetAttrRequest) -> Result<AttrReply, FsError> {
        (self.hook)("getattr")?;
        self.inner.getattr(req).await
    }
    async fn setattr(&self, req: SetAttrRequest) -> Result<AttrReply, FsError> {
        (self.hook)("setattr")?;
        self.inner.setattr(req).await
    }
    async fn readdir(&self, req: ReadDirRequest) -> Result<ReadDirReply, FsError> {
        (self.hook)("readdir")?;
        self.inner.readdir(req).await
    }
    async fn mkdir(&self, req: MkdirRequest) -> Result<AttrReply, FsError> {
        (self.hook)("mkdir")?;
        self.inner.mkdir(req).await
    }
    async fn create(&self, req: CreateRequest) -> Result<AttrReply, FsError> {
        (self.hook)("create")?;
        self.inner.create(req).await
    }
    async fn unlink(&self, req: UnlinkRequest) -> Result<UnlinkReply, FsError> {
        (self.hook)("unlink")?;
        self.inner.unlink(req).await
    }
    async fn rmdir(&self, req: RmdirRequest) -> Result<UnlinkReply, FsError> {
        (self.hook)("rmdir")?;
        self.inner.rmdir(req).await
    }
    async fn rename(&self, req: RenameRequest) -> Result<RenameReply, FsError> {
        (self.hook)("rename")?;
        self.inner.rename(req).await
    }
    async fn link(&self, req: LinkRequest) -> Result<AttrReply, FsError> {
        (self.hook)("link")?;
        self.inner.link(req).await
    }
    async fn symlink(&self, req: SymlinkRequest) -> Result<AttrReply, FsError> {
        (self.hook)("symlink")?;
        self.inner.symlink(req).await
    }
    async fn readlink(&self, req: ReadLinkRequest) -> Result<ReadLinkReply, FsError> {
        (self.hook)("readlink")?;
        self.inner.readlink(req).await
    }
    async fn statfs(&self) -> Result<StatFsReply, FsError> {
        (self.hook)("statfs")?;
        self.inner.statfs().await
    }
    async fn read_extents(&self, req: ReadExtentsRequest) -> Result<ReadExtentsReply, FsError> {
        (self.hook)("read_extents")?;
        self.inner.read_extents(req).await
    }
    async fn commit_extents(&self, req: CommitExtentsRequest) -> Result<AttrReply, FsError> {
        (self.hook)("commit_extents")?;
        self.inner.commit_extents(req).await
    }
    async fn resolve(&self, req: ResolveRequest) -> Result<ResolveReply, FsError> {
        (self.hook)("resolve")?;
        self.inner.resolve(req).await
    }
    async fn watch_volume(&self, from_revision: u64) -> Result<ChangeStream, WatchError> {
        (self.hook)("watch_volume")?;
        self.inner.watch_volume(from_revision).await
    }
}
