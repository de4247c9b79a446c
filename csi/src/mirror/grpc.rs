//! The mirror view over the meta gRPC API, with the volume's own token: `Fs.Resolve` for paths
//! and, from the same reply, the mirror's lag behind its source (absent on a source cluster).
//! Channels are kept per meta address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mirrorfs_api::client;
use mirrorfs_api::meta::{self as pb, FileKind, resolve_reply};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{Follow, Kind, Lookup, MirrorView};
use crate::error::{CsiError, Result};
use crate::params::VolumeSpec;

/// Per-call deadline of a metadata request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct GrpcMirror {
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcMirror {
    pub fn new() -> Self {
        Self::default()
    }

    fn channel(&self, url: &str) -> Result<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(url.to_owned())
            .map_err(|e| CsiError::invalid("metaAddress", format!("{url:?}: {e}")))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_lazy();
        map.insert(url.to_owned(), ch.clone());
        Ok(ch)
    }
}

/// A meta service error, in terms of what the Kubernetes user should do.
fn meta_error(spec: &VolumeSpec, s: &tonic::Status) -> CsiError {
    let (v, url, msg) = (&spec.volume, &spec.meta_address, s.message());
    match s.code() {
        Code::Unauthenticated => CsiError::Unauthenticated(format!(
            "mirror volume {v:?} at {url} refused the token from the secret ({msg}): put the mirror volume's own token under key \"token\""
        )),
        Code::PermissionDenied => CsiError::PermissionDenied(format!(
            "mirror volume {v:?} at {url}: permission denied ({msg})"
        )),
        Code::NotFound => CsiError::UnknownVolume(format!(
            "mirror volume {v:?} does not exist at {url} ({msg}): check the volume parameter"
        )),
        Code::InvalidArgument => CsiError::invalid(
            "subdir",
            format!("mirror volume {v:?} at {url} refused the path: {msg}"),
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            CsiError::MirrorUnavailable(format!(
                "cannot reach the mirror meta service {url} for volume {v:?} ({msg}); the call is retried"
            ))
        }
        _ => CsiError::Internal(format!(
            "mirror meta service {url} failed for volume {v:?}: {msg}"
        )),
    }
}

fn kind(k: i32) -> Kind {
    match FileKind::try_from(k) {
        Ok(FileKind::File) => Kind::File,
        Ok(FileKind::Symlink) => Kind::Symlink,
        _ => Kind::Other,
    }
}

#[async_trait::async_trait]
impl MirrorView for GrpcMirror {
    async fn lookup(&self, spec: &VolumeSpec, token: &str) -> Result<Lookup> {
        let ch = self.channel(&spec.meta_address)?;
        let mut fs =
            client::fs(ch, token).map_err(|e| CsiError::invalid("secret token", e.to_string()))?;
        let r = fs
            .resolve(pb::ResolveRequest {
                volume: Some(pb::VolumeRef {
                    volume: spec.volume.clone(),
                }),
                path: spec.subdir.display_abs(),
            })
            .await
            .map_err(|s| meta_error(spec, &s))?
            .into_inner();
        let revision = r.revision;
        match r.result {
            Some(resolve_reply::Result::Found(a)) => Ok(if a.kind == FileKind::Directory as i32 {
                Lookup::Directory { revision }
            } else {
                Lookup::NotDirectory {
                    revision,
                    kind: kind(a.kind),
                }
            }),
            Some(resolve_reply::Result::Missing(m)) => Ok(Lookup::Missing {
                revision,
                existing_prefix: m.existing_prefix,
                missing_component: m.missing_component,
                blocking: (m.blocking_kind != FileKind::Unspecified as i32)
                    .then(|| kind(m.blocking_kind)),
            }),
            None => Err(CsiError::Internal(format!(
                "mirror meta service {} answered Resolve without a result",
                spec.meta_address
            ))),
        }
    }

    async fn follow(&self, spec: &VolumeSpec, token: &str) -> Follow {
        // A mirror reports its lag with every Resolve, to any holder of a volume token.
        let ch = match self.channel(&spec.meta_address) {
            Ok(c) => c,
            Err(e) => return Follow::Unknown(e.to_string()),
        };
        let mut fs = match client::fs(ch, token) {
            Ok(f) => f,
            Err(e) => return Follow::Unknown(e.to_string()),
        };
        let req = pb::ResolveRequest {
            volume: Some(pb::VolumeRef {
                volume: spec.volume.clone(),
            }),
            path: "/".into(),
        };
        match fs.resolve(req).await {
            Ok(r) => match r.into_inner().mirror {
                None => Follow::Source,
                Some(m) => Follow::Mirror {
                    lag_revisions: m.lag_revisions,
                    lag_seconds: m.lag_seconds,
                    source_reachable: m.source_reachable,
                },
            },
            Err(s) => Follow::Unknown(format!(
                "the mirror's status is unavailable: {}",
                s.message()
            )),
        }
    }
}
