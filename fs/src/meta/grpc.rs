//! [`MetaClient`] over gRPC with the volume token, retries and timeouts.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::StreamExt;
use mirrorfs_api::client::{self, Authed};
use mirrorfs_api::meta::{
    AttrReply, CommitExtentsRequest, CreateRequest, GetAttrRequest, LinkRequest, LookupRequest,
    MkdirRequest, OpenVolumeReply, OpenVolumeRequest, ReadDirReply, ReadDirRequest,
    ReadExtentsReply, ReadExtentsRequest, ReadLinkReply, ReadLinkRequest, RenameReply,
    RenameRequest, ResolveReply, ResolveRequest, RmdirRequest, SetAttrRequest, StatFsReply,
    StatFsRequest, SymlinkRequest, UnlinkReply, UnlinkRequest, VolumeRef, WatchVolumeRequest,
    fs_client::FsClient,
};
use tonic::Code;

use super::{ChangeStream, MetaClient, WatchError};
use crate::error::FsError;

/// How [`GrpcMeta`] retries and bounds calls.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts of one call, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
    /// Bound of each attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(20),
        }
    }
}

/// [`MetaClient`] over gRPC, authenticated with the volume token.
#[derive(Clone)]
pub struct GrpcMeta {
    client: FsClient<Authed>,
    volume: String,
    retry: RetryPolicy,
}

impl GrpcMeta {
    pub fn new(client: FsClient<Authed>, volume: impl Into<String>) -> Self {
        Self {
            client,
            volume: volume.into(),
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to the meta service at `url` (failing within `connect_timeout` if it cannot
    /// be reached) for `volume`, authenticated with `token`.
    pub async fn connect(
        url: &str,
        token: &str,
        volume: &str,
        connect_timeout: Duration,
    ) -> Result<Self, FsError> {
        let channel = client::connect(url, connect_timeout)
            .await
            .map_err(|e| FsError::Unavailable(format!("volume {volume}: {e}")))?;
        let fs = client::fs(channel, token)
            .map_err(|e| FsError::PermissionDenied(format!("volume {volume}: {e}")))?;
        Ok(Self::new(fs, volume))
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn vref(&self) -> Option<VolumeRef> {
        Some(VolumeRef {
            volume: self.volume.clone(),
        })
    }

    /// Runs `call` with the retry policy. `what` names the operation in errors.
    async fn run<T, F, Fut>(&self, what: &str, call: F) -> Result<T, FsError>
    where
        F: Fn(FsClient<Authed>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(self.retry.timeout, call(self.client.clone())).await;
            let err = match result {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => FsError::from_status(what, &status),
                Err(_) => FsError::Unavailable(format!(
                    "{what}: the meta service did not answer within {:?}",
                    self.retry.timeout
                )),
            };
            if !err.is_transient() || attempt >= self.retry.attempts {
                return Err(match err {
                    FsError::Unavailable(m) => FsError::Unavailable(format!(
                        "volume {}: {m} (after {attempt} attempts)",
                        self.volume
                    )),
                    e => e,
                });
            }
            tracing::debug!(volume = %self.volume, what, attempt, error = %err, "retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

/// Requests that name their volume.
trait VolumeRequest: Clone + Send + 'static {
    fn set_volume(&mut self, v: Option<VolumeRef>);
}

macro_rules! volume_requests {
    ($($t:ty),* $(,)?) => {$(
        impl VolumeRequest for $t {
            fn set_volume(&mut self, v: Option<VolumeRef>) {
                self.volume = v;
            }
        }
    )*};
}

volume_requests!(
    LookupRequest,
    GetAttrRequest,
    SetAttrRequest,
    ReadDirRequest,
    MkdirRequest,
    CreateRequest,
    UnlinkRequest,
    RmdirRequest,
    RenameRequest,
    LinkRequest,
    SymlinkRequest,
    ReadLinkRequest,
    ReadExtentsRequest,
    CommitExtentsRequest,
    ResolveRequest,
);

impl GrpcMeta {
    /// One unary call of `req` (its volume filled in) with the retry policy.
    async fn unary<Q, T, F, Fut>(&self, what: &str, mut req: Q, call: F) -> Result<T, FsError>
    where
        Q: VolumeRequest,
        F: Fn(FsClient<Authed>, Q) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        req.set_volume(self.vref());
        self.run(what, |c| call(c, req.clone())).await
    }
}

#[async_trait]
impl MetaClient for GrpcMeta {
    fn volume(&self) -> &str {
        &self.volume
    }

    async fn open_volume(&self) -> Result<OpenVolumeReply, FsError> {
        let req = OpenVolumeRequest {
            volume: self.vref(),
        };
        self.run("open volume", |mut c| {
            let req = req.clone();
            async move { c.open_volume(req).await }
        })
        .await
    }

    async fn lookup(&self, req: LookupRequest) -> Result<AttrReply, FsError> {
        self.unary("lookup", req, |mut c, r| async move { c.lookup(r).await })
            .await
    }

    async fn getattr(&self, req: GetAttrRequest) -> Result<AttrReply, FsError> {
        self.unary(
            "getattr",
            req,
            |mut c, r| async move { c.get_attr(r).await },
        )
        .await
    }

    async fn setattr(&self, req: SetAttrRequest) -> Result<AttrReply, FsError> {
        self.unary(
            "setattr",
            req,
            |mut c, r| async move { c.set_attr(r).await },
        )
        .await
    }

    async fn readdir(&self, req: ReadDirRequest) -> Result<ReadDirReply, FsError> {
        self.unary(
            "readdir",
            req,
            |mut c, r| async move { c.read_dir(r).await },
        )
        .await
    }

    async fn mkdir(&self, req: MkdirRequest) -> Result<AttrReply, FsError> {
        self.unary("mkdir", req, |mut c, r| async move { c.mkdir(r).await })
            .await
    }

    async fn create(&self, req: CreateRequest) -> Result<AttrReply, FsError> {
        self.unary("create", req, |mut c, r| async move { c.create(r).await })
            .await
    }

    async fn unlink(&self, req: UnlinkRequest) -> Result<UnlinkReply, FsError> {
        self.unary("unlink", req, |mut c, r| async move { c.unlink(r).await })
            .await
    }

    async fn rmdir(&self, req: RmdirRequest) -> Result<UnlinkReply, FsError> {
        self.unary("rmdir", req, |mut c, r| async move { c.rmdir(r).await })
            .await
    }

    async fn rename(&self, req: RenameRequest) -> Result<RenameReply, FsError> {
        self.unary("rename", req, |mut c, r| async move { c.rename(r).await })
            .await
    }

    async fn link(&self, req: LinkRequest) -> Result<AttrReply, FsError> {
        self.unary("link", req, |mut c, r| async move { c.link(r).await })
            .await
    }

    async fn symlink(&self, req: SymlinkRequest) -> Result<AttrReply, FsError> {
        self.unary("symlink", req, |mut c, r| async move { c.symlink(r).await })
            .await
    }

    async fn readlink(&self, req: ReadLinkRequest) -> Result<ReadLinkReply, FsError> {
        self.unary(
            "readlink",
            req,
            |mut c, r| async move { c.read_link(r).await },
        )
        .await
    }

    async fn read_extents(&self, req: ReadExtentsRequest) -> Result<ReadExtentsReply, FsError> {
        self.unary("read extents", req, |mut c, r| async move {
            c.read_extents(r).await
        })
        .await
    }

    async fn commit_extents(&self, req: CommitExtentsRequest) -> Result<AttrReply, FsError> {
        self.unary("commit extents", req, |mut c, r| async move {
            c.commit_extents(r).await
        })
        .await
    }

    async fn resolve(&self, req: ResolveRequest) -> Result<ResolveReply, FsError> {
        self.unary("resolve", req, |mut c, r| async move { c.resolve(r).await })
            .await
    }

    async fn statfs(&self) -> Result<StatFsReply, FsError> {
        let req = StatFsRequest {
            volume: self.vref(),
        };
        self.run("statfs", |mut c| {
            let req = req.clone();
            async move { c.stat_fs(req).await }
        })
        .await
    }

    async fn watch_volume(&self, from_revision: u64) -> Result<ChangeStream, WatchError> {
        let req = WatchVolumeRequest {
            volume: self.vref(),
            from_revision,
        };
        let mut c = self.client.clone();
        let stream = match tokio::time::timeout(self.retry.timeout, c.watch_volume(req)).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(status)) => return Err(watch_error(&status)),
            Err(_) => {
                return Err(WatchError::Fs(FsError::Unavailable(
                    "watch volume: the meta service did not answer".into(),
                )));
            }
        };
        Ok(stream.map(|r| r.map_err(|s| watch_error(&s))).boxed())
    }
}

fn watch_error(status: &tonic::Status) -> WatchError {
    if status.code() == Code::OutOfRange {
        WatchError::Compacted
    } else {
        WatchError::Fs(FsError::from_status("watch volume", status))
    }
}
