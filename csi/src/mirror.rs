//! What the driver asks the mirror cluster: does this directory exist (at which revision, and if
//! not, which component is missing), and how far behind its source is the mirror. Behind the
//! [`MirrorView`] trait: the meta gRPC implementation (`grpc`) and a fake for tests (`fake`).
//! [`locate`] turns the answers into a wait (bounded by `--path-wait`) and a message.

pub mod fake;
pub mod grpc;

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{CsiError, Result};
use crate::params::VolumeSpec;

/// What a path resolves to in the mirror metadata (never following symlinks).
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Directory {
        revision: u64,
    },
    /// The path ends at something that is not a directory.
    NotDirectory {
        revision: u64,
        kind: Kind,
    },
    Missing {
        revision: u64,
        /// The longest prefix that exists (`/` for the root).
        existing_prefix: String,
        missing_component: String,
        /// Set when the prefix ends at a non-directory.
        blocking: Option<Kind>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Symlink,
    Other,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Symlink => "a symbolic link (the driver never follows symlinks)",
            Kind::Other => "not a directory",
        }
    }
}

/// How the meta service at `metaAddress` relates to its source.
#[derive(Clone, Debug, PartialEq)]
pub enum Follow {
    /// A source cluster: its metadata is the truth, nothing lags.
    Source,
    /// A mirror cluster and its lag.
    Mirror {
        lag_revisions: u64,
        lag_seconds: f64,
        source_reachable: bool,
    },
    /// Not readable (the status call needs rights the volume token lacks, or failed).
    Unknown(String),
}

/// The mirror metadata, as the driver needs it.
#[async_trait::async_trait]
pub trait MirrorView: Send + Sync + 'static {
    /// Resolves `spec.subdir` in `spec.volume`.
    async fn lookup(&self, spec: &VolumeSpec, token: &str) -> Result<Lookup>;
    /// The mirror's lag behind its source.
    async fn follow(&self, spec: &VolumeSpec, token: &str) -> Follow;
}

/// Why a volume's directory is not usable, with everything a user needs to act on it.
#[derive(Clone, Debug)]
pub struct MissingPath {
    /// The CSI volume (PV name at CreateVolume, volume id later).
    pub csi_volume: String,
    pub spec: VolumeSpec,
    pub lookup: Lookup,
    pub follow: Follow,
    pub waited: Duration,
}

impl fmt::Display for MissingPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.spec.subdir.display_abs();
        let (head, revision) = match &self.lookup {
            Lookup::Missing {
                revision,
                existing_prefix,
                missing_component,
                blocking: None,
            } => (
                format!(
                    "directory {path:?} does not exist in mirror volume {:?} ({}): {existing_prefix:?} has no entry {missing_component:?}",
                    self.spec.volume, self.spec.meta_address
                ),
                *revision,
            ),
            Lookup::Missing {
                revision,
                existing_prefix,
                missing_component,
                blocking: Some(k),
            } => (
                format!(
                    "directory {path:?} does not exist in mirror volume {:?} ({}): {existing_prefix:?} is {}, so it has no entry {missing_component:?}",
                    self.spec.volume,
                    self.spec.meta_address,
                    k.describe()
                ),
                *revision,
            ),
            Lookup::NotDirectory { revision, kind } => (
                format!(
                    "{path:?} in mirror volume {:?} ({}) is {}, not a directory",
                    self.spec.volume,
                    self.spec.meta_address,
                    kind.describe()
                ),
                *revision,
            ),
            Lookup::Directory { revision } => (
                format!(
                    "directory {path:?} of mirror volume {:?} exists in the metadata but not on this node's mount",
                    self.spec.volume
                ),
                *revision,
            ),
        };
        if revision == 0 {
            write!(f, "volume {:?}: {head}; ", self.csi_volume)?;
        } else {
            write!(
                f,
                "volume {:?}: {head}, at mirror revision {revision}; ",
                self.csi_volume
            )?;
        }
        match &self.follow {
            Follow::Source => write!(
                f,
                "{} is a source cluster, so the source does not have it",
                self.spec.meta_address
            )?,
            Follow::Mirror {
                lag_revisions: 0,
                lag_seconds,
                source_reachable: true,
            } => write!(
                f,
                "mirror lag 0 revisions ({lag_seconds:.1} s): the mirror has applied every source revision, so the source does not have it either"
            )?,
            Follow::Mirror {
                lag_revisions,
                lag_seconds,
                source_reachable,
            } => {
                if *source_reachable {
                    write!(
                        f,
                        "mirror lag {lag_revisions} revisions ({lag_seconds:.1} s), so the source may have it"
                    )?;
                } else {
                    write!(
                        f,
                        "mirror lag {lag_revisions} revisions ({lag_seconds:.1} s) but the source is unreachable, so whether the source has it is unknown"
                    )?;
                }
                if !self.waited.is_zero() {
                    write!(
                        f,
                        " (waited {:.0?} for the mirror to apply it)",
                        self.waited
                    )?;
                }
            }
            Follow::Unknown(why) => write!(
                f,
                "mirror lag unknown ({why}), so whether the source has it is unknown"
            )?,
        }
        let fix = if matches!(self.lookup, Lookup::Missing { blocking: None, .. }) {
            format!(
                "create {path:?} in the source volume (the driver never creates directories in a mirror) or fix the StorageClass subdir/pathPattern or the PV's volumeAttributes.subdir"
            )
        } else {
            "point subdir/pathPattern at a real directory of the volume".to_owned()
        };
        write!(f, ". To fix: {fix}; the call is retried.")
    }
}

/// Resolves the volume's directory, waiting up to `wait` while the mirror lags behind a source
/// that may have it. `csi_volume` names the CSI volume in messages.
pub async fn locate(
    view: &dyn MirrorView,
    spec: &VolumeSpec,
    token: &str,
    csi_volume: &str,
    wait: Duration,
) -> Result<u64> {
    let start = Instant::now();
    loop {
        let lookup = view.lookup(spec, token).await?;
        if let Lookup::Directory { revision } = lookup {
            return Ok(revision);
        }
        let follow = view.follow(spec, token).await;
        // The source may have it when the mirror is behind, or cannot tell (source unreachable).
        let may_appear = matches!(lookup, Lookup::Missing { .. })
            && matches!(
                follow,
                Follow::Mirror { lag_revisions, source_reachable, .. }
                    if lag_revisions > 0 || !source_reachable
            );
        // A mirror without lag may not have heard of the newest source commits yet: they
        // arrive within the replication latency. Look again briefly before concluding.
        let caught_up = matches!(lookup, Lookup::Missing { .. })
            && matches!(
                follow,
                Follow::Mirror {
                    source_reachable: true,
                    ..
                }
            );
        let limit = if may_appear {
            wait
        } else if caught_up {
            wait.min(CAUGHT_UP_GRACE)
        } else {
            Duration::ZERO
        };
        if start.elapsed() + POLL <= limit {
            tokio::time::sleep(POLL).await;
            continue;
        }
        let missing = Box::new(MissingPath {
            csi_volume: csi_volume.to_owned(),
            spec: spec.clone(),
            lookup: lookup.clone(),
            follow,
            waited: if may_appear {
                start.elapsed()
            } else {
                Duration::ZERO
            },
        });
        return Err(match lookup {
            Lookup::Missing { blocking: None, .. } => CsiError::PathMissing(missing),
            _ => CsiError::NotADirectory(missing),
        });
    }
}

/// How often a lagging mirror is asked again.
const POLL: Duration = Duration::from_millis(200);
/// How long a mirror reporting no lag is asked again (news of a source commit takes the
/// replication latency, about a second, to reach it).
pub const CAUGHT_UP_GRACE: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::fake::FakeMirror;
    use super::*;
    use crate::relpath::RelPath;

    fn spec(sub: &str) -> VolumeSpec {
        VolumeSpec {
            volume: "data".into(),
            meta_address: "http://meta:7400".into(),
            subdir: RelPath::parse(sub).unwrap_or_default(),
            lenient: false,
        }
    }

    #[tokio::test]
    async fn existing_directory_gives_its_revision() {
        let m = FakeMirror::new("tok");
        m.add_dir("data", "team/a");
        assert_eq!(
            locate(&m, &spec("team/a"), "tok", "pvc-1", Duration::ZERO)
                .await
                .ok(),
            Some(m.revision())
        );
    }

    #[tokio::test]
    async fn missing_directory_message_names_everything() {
        let m = FakeMirror::new("tok");
        m.add_dir("data", "team");
        m.set_follow(Follow::Mirror {
            lag_revisions: 0,
            lag_seconds: 0.2,
            source_reachable: true,
        });
        // Caught up: looked at again for a short grace only (bounded by the wait).
        let e = locate(
            &m,
            &spec("team/x/y"),
            "tok",
            "pvc-1",
            Duration::from_millis(700),
        )
        .await;
        let Err(e @ CsiError::PathMissing(_)) = e else {
            panic!("{e:?}");
        };
        assert!(m.lookups() >= 2 && m.lookups() <= 5, "{}", m.lookups());
        let msg = e.to_string();
        for needle in [
            "volume \"pvc-1\"",
            "directory \"/team/x/y\" does not exist in mirror volume \"data\" (http://meta:7400)",
            "\"/team\" has no entry \"x\"",
            &format!("at mirror revision {}", m.revision()),
            "mirror lag 0 revisions",
            "the source does not have it either",
            "create \"/team/x/y\" in the source volume",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn a_lagging_mirror_is_waited_for() {
        let m = FakeMirror::new("tok");
        m.set_follow(Follow::Mirror {
            lag_revisions: 3,
            lag_seconds: 1.0,
            source_reachable: true,
        });
        m.add_dir_after("data", "late", 2);
        let r = locate(&m, &spec("late"), "tok", "pvc-1", Duration::from_secs(10)).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(m.lookups(), 2);

        let e = locate(
            &m,
            &spec("never"),
            "tok",
            "pvc-1",
            Duration::from_millis(500),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("mirror lag 3 revisions (1.0 s), so the source may have it (waited"),
            "{e}"
        );

        // Cut off from its source, the mirror cannot tell: wait too, and say so.
        m.set_follow(Follow::Mirror {
            lag_revisions: 0,
            lag_seconds: 9.0,
            source_reachable: false,
        });
        let start = std::time::Instant::now();
        let e = locate(
            &m,
            &spec("never"),
            "tok",
            "pvc-1",
            Duration::from_millis(500),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "did not wait"
        );
        assert!(
            e.contains("the source is unreachable, so whether the source has it is unknown"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn files_and_symlinks_are_not_directories() {
        let m = FakeMirror::new("tok");
        m.add_file("data", "f");
        m.add_symlink("data", "link");
        m.set_follow(Follow::Unknown("no admin token".into()));
        let e = locate(&m, &spec("f"), "tok", "v", Duration::ZERO).await;
        let msg = e.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(
                "\"/f\" in mirror volume \"data\" (http://meta:7400) is a file, not a directory"
            ),
            "{msg}"
        );
        assert!(msg.contains("mirror lag unknown (no admin token)"), "{msg}");
        assert!(matches!(e, Err(CsiError::NotADirectory(_))));
        let e = locate(&m, &spec("link/below"), "tok", "v", Duration::ZERO).await;
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("\"/link\" is a symbolic link"), "{msg}");
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused() {
        let m = FakeMirror::new("tok");
        let e = locate(&m, &spec(""), "bad", "v", Duration::ZERO).await;
        assert!(matches!(e, Err(CsiError::Unauthenticated(_))), "{e:?}");
    }
}
