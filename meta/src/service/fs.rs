//! The `Fs` gRPC service: authenticates the volume token of each call and forwards to
//! [`FsMeta`]. Handlers only translate messages; all rules live in `crate::fs`.

use std::future::Future;
use std::sync::Arc;

use mirrorfs_api::Ino;
use mirrorfs_api::meta::{self as pb, fs_server::Fs};
use tonic::{Request, Response, Status};

use super::{MetaState, auth::bearer};
use crate::error::MetaError;
use crate::fs::{Owner, Resolved, SetAttr, Volume};

pub struct FsService {
    pub state: Arc<MetaState>,
    /// Becomes `true` when the server shuts down; open volume watches end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Requests that name the volume they act on.
trait VolumeRequest {
    fn volume_name(&self) -> &str;
}

macro_rules! volume_requests {
    ($($t:ty),* $(,)?) => {$(
        impl VolumeRequest for $t {
            fn volume_name(&self) -> &str {
                self.volume.as_ref().map_or("", |v| v.volume.as_str())
            }
        }
    )*};
}

volume_requests!(
    pb::OpenVolumeRequest,
    pb::LookupRequest,
    pb::GetAttrRequest,
    pb::SetAttrRequest,
    pb::ReadDirRequest,
    pb::MkdirRequest,
    pb::CreateRequest,
    pb::UnlinkRequest,
    pb::RmdirRequest,
    pb::RenameRequest,
    pb::LinkRequest,
    pb::SymlinkRequest,
    pb::ReadLinkRequest,
    pb::StatFsRequest,
    pb::ReadExtentsRequest,
    pb::CommitExtentsRequest,
    pb::ResolveRequest,
    pb::WatchVolumeRequest,
);

impl FsService {
    /// Authenticates the call against the volume it names, then runs `op`.
    async fn call<R, T, F, Fut>(
        &self,
        method: &'static str,
        req: Request<R>,
        op: F,
    ) -> Result<Response<T>, Status>
    where
        R: VolumeRequest,
        F: FnOnce(Arc<MetaState>, Volume, R) -> Fut,
        Fut: Future<Output = Result<T, MetaError>>,
    {
        let state = &self.state;
        state
            .observe(method, async {
                let (md, _, msg) = req.into_parts();
                let name = msg.volume_name();
                if name.is_empty() {
                    return Err(MetaError::InvalidArgument(
                        "the request names no volume".into(),
                    ));
                }
                let token = bearer(&md, &format!("volume {name:?}"))?;
                let vol = state.fs.authenticate(name, token).await?;
                op(state.clone(), vol, msg).await
            })
            .await
    }
}

fn attr_reply(attr: pb::Attr) -> pb::AttrReply {
    pb::AttrReply {
        revision: attr.revision,
        attr: Some(attr),
    }
}

fn owner(mode: u32, uid: u32, gid: u32) -> Owner {
    Owner { mode, uid, gid }
}

type ChangeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::VolumeChange, Status>> + Send>>;

#[tonic::async_trait]
impl Fs for FsService {
    type WatchVolumeStream = ChangeStream;

    async fn watch_volume(
        &self,
        req: Request<pb::WatchVolumeRequest>,
    ) -> Result<Response<Self::WatchVolumeStream>, Status> {
        let mut stop = self.stop.clone();
        self.call("WatchVolume", req, |st, vol, r| async move {
            use futures::StreamExt;
            let from = match r.from_revision {
                0 => st.fs.engine().head().await?.revision.next(),
                r => mirrorfs_api::Revision(r),
            };
            let entries = st.fs.engine().watch(from).await?;
            let id = vol.id;
            let changes = entries.filter_map(move |e| {
                std::future::ready(match e {
                    Ok(e) => crate::fs::watch::volume_change(id, &e).map(Ok),
                    Err(e) => Some(Err(Status::from(MetaError::from(e)))),
                })
            });
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Ok(Box::pin(changes.take_until(stopped)) as ChangeStream)
        })
        .await
    }

    async fn open_volume(
        &self,
        req: Request<pb::OpenVolumeRequest>,
    ) -> Result<Response<pb::OpenVolumeReply>, Status> {
        self.call("OpenVolume", req, |st, vol, _| async move {
            let info = st.fs.volume_info(&vol).await?;
            Ok(pb::OpenVolumeReply {
                volume_id: vol.id.0,
                root_ino: vol.root.0,
                source_storage: if st.fs.is_mirror() {
                    info.source_storage
                } else {
                    info.storage.clone()
                },
                storage: info.storage,
                read_only: st.fs.is_mirror(),
                revision: st.read_revision().await?.0,
            })
        })
        .await
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("Lookup", req, |st, vol, r| async move {
            Ok(attr_reply(
                st.fs.lookup(&vol, Ino(r.parent), &r.name).await?,
            ))
        })
        .await
    }

    async fn get_attr(
        &self,
        req: Request<pb::GetAttrRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("GetAttr", req, |st, vol, r| async move {
            Ok(attr_reply(st.fs.getattr(&vol, Ino(r.ino)).await?))
        })
        .await
    }

    async fn set_attr(
        &self,
        req: Request<pb::SetAttrRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("SetAttr", req, |st, vol, r| async move {
            let set = SetAttr {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                size: r.size,
                atime: r.atime,
                mtime: r.mtime,
            };
            Ok(attr_reply(st.fs.setattr(&vol, Ino(r.ino), set).await?))
        })
        .await
    }

    async fn read_dir(
        &self,
        req: Request<pb::ReadDirRequest>,
    ) -> Result<Response<pb::ReadDirReply>, Status> {
        self.call("ReadDir", req, |st, vol, r| async move {
            let revision = st.read_revision().await?;
            let (ino, limit) = (Ino(r.ino), r.limit as usize);
            let page = if r.plus {
                st.fs.readdir_plus(&vol, ino, &r.after, limit).await?
            } else {
                st.fs.readdir(&vol, ino, &r.after, limit).await?
            };
            Ok(pb::ReadDirReply {
                entries: page.entries,
                more: page.more,
                revision: revision.0,
            })
        })
        .await
    }

    async fn mkdir(
        &self,
        req: Request<pb::MkdirRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("Mkdir", req, |st, vol, r| async move {
            let o = owner(r.mode, r.uid, r.gid);
            Ok(attr_reply(
                st.fs.mkdir(&vol, Ino(r.parent), &r.name, o).await?,
            ))
        })
        .await
    }

    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("Create", req, |st, vol, r| async move {
            let o = owner(r.mode, r.uid, r.gid);
            let attr = st
                .fs
                .create(&vol, Ino(r.parent), &r.name, o, r.exclusive)
                .await?;
            Ok(attr_reply(attr))
        })
        .await
    }

    async fn unlink(
        &self,
        req: Request<pb::UnlinkRequest>,
    ) -> Result<Response<pb::UnlinkReply>, Status> {
        self.call("Unlink", req, |st, vol, r| async move {
            let removed = st.fs.unlink(&vol, Ino(r.parent), &r.name).await?;
            Ok(pb::UnlinkReply {
                ino: removed.ino.0,
                remaining_nlink: removed.remaining_nlink,
                revision: st.read_revision().await?.0,
            })
        })
        .await
    }

    async fn rmdir(
        &self,
        req: Request<pb::RmdirRequest>,
    ) -> Result<Response<pb::UnlinkReply>, Status> {
        self.call("Rmdir", req, |st, vol, r| async move {
            let removed = st.fs.rmdir(&vol, Ino(r.parent), &r.name).await?;
            Ok(pb::UnlinkReply {
                ino: removed.ino.0,
                remaining_nlink: removed.remaining_nlink,
                revision: st.read_revision().await?.0,
            })
        })
        .await
    }

    async fn rename(
        &self,
        req: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::RenameReply>, Status> {
        self.call("Rename", req, |st, vol, r| async move {
            let replaced = st
                .fs
                .rename(
                    &vol,
                    Ino(r.parent),
                    &r.name,
                    Ino(r.new_parent),
                    &r.new_name,
                    r.no_replace,
                    r.exchange,
                )
                .await?;
            Ok(pb::RenameReply {
                replaced_ino: replaced.map_or(0, |r| r.ino.0),
                replaced_remaining_nlink: replaced.map_or(0, |r| r.remaining_nlink),
                revision: st.read_revision().await?.0,
            })
        })
        .await
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Result<Response<pb::AttrReply>, Status> {
        self.call("Link", req, |st, vol, r| async move {
            let attr = st
                .fs
                .link(&vol, Ino(r.ino), Ino(r.new_parent), &r.new_name)
                .await?;
            Ok(attr_reply(attr))
        })
        .await
    }

    async fn symlink(
        &self,
        req: Request<pb::SymlinkRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("Symlink", req, |st, vol, r| async move {
            let o = owner(0o777, r.uid, r.gid);
            let attr = st
                .fs
                .symlink(&vol, Ino(r.parent), &r.name, &r.target, o)
                .await?;
            Ok(attr_reply(attr))
        })
        .await
    }

    async fn read_link(
        &self,
        req: Request<pb::ReadLinkRequest>,
    ) -> Result<Response<pb::ReadLinkReply>, Status> {
        self.call("ReadLink", req, |st, vol, r| async move {
            Ok(pb::ReadLinkReply {
                target: st.fs.readlink(&vol, Ino(r.ino)).await?,
            })
        })
        .await
    }

    async fn stat_fs(
        &self,
        req: Request<pb::StatFsRequest>,
    ) -> Result<Response<pb::StatFsReply>, Status> {
        self.call("StatFs", req, |st, vol, _| async move {
            let u = st.fs.statfs(&vol).await?;
            Ok(pb::StatFsReply {
                used_bytes: u.used_bytes,
                used_inodes: u.used_inodes,
                capacity_bytes: u.capacity_bytes,
                capacity_inodes: u.capacity_inodes,
            })
        })
        .await
    }

    async fn read_extents(
        &self,
        req: Request<pb::ReadExtentsRequest>,
    ) -> Result<Response<pb::ReadExtentsReply>, Status> {
        self.call("ReadExtents", req, |st, vol, r| async move {
            let revision = st.read_revision().await?;
            let (extents, size) = st
                .fs
                .read_extents(&vol, Ino(r.ino), r.offset, r.length)
                .await?;
            Ok(pb::ReadExtentsReply {
                extents,
                size,
                revision: revision.0,
            })
        })
        .await
    }

    async fn commit_extents(
        &self,
        req: Request<pb::CommitExtentsRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        self.call("CommitExtents", req, |st, vol, r| async move {
            let attr = st
                .fs
                .commit_extents(&vol, Ino(r.ino), r.extents, r.new_size, r.mtime)
                .await?;
            Ok(attr_reply(attr))
        })
        .await
    }

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveReply>, Status> {
        self.call("Resolve", req, |st, vol, r| async move {
            let revision = st.read_revision().await?;
            let result = match st.fs.resolve(&vol, &r.path).await? {
                Resolved::Found(attr) => pb::resolve_reply::Result::Found(attr),
                Resolved::Missing {
                    existing_prefix,
                    missing_component,
                    blocking_kind,
                } => pb::resolve_reply::Result::Missing(pb::Missing {
                    existing_prefix,
                    missing_component,
                    blocking_kind: blocking_kind.map_or(0, |k| k as i32),
                }),
            };
            Ok(pb::ResolveReply {
                result: Some(result),
                revision: revision.0,
                mirror: st.mirror.as_ref().map(|m| m.status()),
            })
        })
        .await
    }
}
