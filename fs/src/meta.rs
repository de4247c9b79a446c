//! The file-system core's view of the meta service: [`MetaClient`], one method per `Fs` RPC
//! (wire types in and out, the volume filled in by the implementation), and [`GrpcMeta`], its
//! implementation over gRPC with the volume token. Transient failures (the service restarting,
//! a dropped connection) are retried a few times with backoff and then reported as
//! [`FsError::Unavailable`]; every call is bounded by a timeout, so an unreachable service
//! gives an error, never a hang. [`Hooked`] wraps a client with a hook run before each call
//! (counting calls, injecting failures in tests).

mod grpc;
mod hooked;

pub use grpc::{GrpcMeta, RetryPolicy};
pub use hooked::Hooked;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mirrorfs_api::meta::{
    AttrReply, CommitExtentsRequest, CreateRequest, GetAttrRequest, LinkRequest, LookupRequest,
    MkdirRequest, OpenVolumeReply, ReadDirReply, ReadDirRequest, ReadExtentsReply,
    ReadExtentsRequest, ReadLinkReply, ReadLinkRequest, RenameReply, RenameRequest, ResolveReply,
    ResolveRequest, RmdirRequest, SetAttrRequest, StatFsReply, SymlinkRequest, UnlinkReply,
    UnlinkRequest, VolumeChange,
};

use crate::error::FsError;

/// A stream of what each commit changed in the volume.
pub type ChangeStream = BoxStream<'static, Result<VolumeChange, WatchError>>;

/// Why a volume watch ended.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WatchError {
    /// The revision asked for has been compacted away: drop every cache, start from now.
    #[error("the changelog was compacted past the revision asked for")]
    Compacted,
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The meta service's `Fs` API for one volume. Requests leave `volume` unset: the
/// implementation names its volume.
#[async_trait]
pub trait MetaClient: Send + Sync {
    /// The volume's name (for messages).
    fn volume(&self) -> &str;
    async fn open_volume(&self) -> Result<OpenVolumeReply, FsError>;
    async fn lookup(&self, req: LookupRequest) -> Result<AttrReply, FsError>;
    async fn getattr(&self, req: GetAttrRequest) -> Result<AttrReply, FsError>;
    async fn setattr(&self, req: SetAttrRequest) -> Result<AttrReply, FsError>;
    async fn readdir(&self, req: ReadDirRequest) -> Result<ReadDirReply, FsError>;
    async fn mkdir(&self, req: MkdirRequest) -> Result<AttrReply, FsError>;
    async fn create(&self, req: CreateRequest) -> Result<AttrReply, FsError>;
    async fn unlink(&self, req: UnlinkRequest) -> Result<UnlinkReply, FsError>;
    async fn rmdir(&self, req: RmdirRequest) -> Result<UnlinkReply, FsError>;
    async fn rename(&self, req: RenameRequest) -> Result<RenameReply, FsError>;
    async fn link(&self, req: LinkRequest) -> Result<AttrReply, FsError>;
    async fn symlink(&self, req: SymlinkRequest) -> Result<AttrReply, FsError>;
    async fn readlink(&self, req: ReadLinkRequest) -> Result<ReadLinkReply, FsError>;
    async fn statfs(&self) -> Result<StatFsReply, FsError>;
    async fn read_extents(&self, req: ReadExtentsRequest) -> Result<ReadExtentsReply, FsError>;
    async fn commit_extents(&self, req: CommitExtentsRequest) -> Result<AttrReply, FsError>;
    async fn resolve(&self, req: ResolveRequest) -> Result<ResolveReply, FsError>;
    /// Changes from `from_revision` (0: from the next commit) until the server ends the stream.
    async fn watch_volume(&self, from_revision: u64) -> Result<ChangeStream, WatchError>;
}
