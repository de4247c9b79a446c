//! Errors of the metadata layer, and the one place where they become gRPC statuses.
//!
//! Messages are written for the person who reads them in a log or a Kubernetes event: they name
//! the volume, the inode or path, and what to do.

use mirrorfs_api::{FsErrorKind, Ino, Revision};
use tonic::{Code, Status};

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("volume {volume:?} does not exist")]
    NoVolume { volume: String },
    #[error("volume {volume:?} already exists")]
    VolumeExists { volume: String },
    #[error("no entry {name:?} in directory inode {parent} of volume {volume:?}")]
    NoEntry {
        volume: String,
        parent: Ino,
        name: String,
    },
    #[error("inode {ino} does not exist in volume {volume:?}")]
    NoInode { volume: String, ino: Ino },
    #[error("{name:?} already exists in directory inode {parent} of volume {volume:?}")]
    Exists {
        volume: String,
        parent: Ino,
        name: String,
    },
    #[error("inode {ino} of volume {volume:?} is not a directory")]
    NotDirectory { volume: String, ino: Ino },
    #[error("inode {ino} of volume {volume:?} is a directory")]
    IsDirectory { volume: String, ino: Ino },
    #[error("directory inode {ino} of volume {volume:?} is not empty")]
    NotEmpty { volume: String, ino: Ino },
    #[error("name is {len} bytes long; the limit is 255")]
    NameTooLong { len: usize },
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot move directory inode {ino} of volume {volume:?} into its own subtree")]
    RenameIntoSelf { volume: String, ino: Ino },
    #[error(
        "volume {volume:?} is served read-only by this cluster (a mirror); write in the source region instead"
    )]
    ReadOnly { volume: String },
    #[error("volume {volume:?} is full: {what}")]
    NoSpace { volume: String, what: String },
    #[error("missing or invalid token for {what}")]
    Unauthenticated { what: String },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("too much contention on volume {volume:?}: gave up after {attempts} attempts; retry")]
    Contention { volume: String, attempts: u32 },
    #[error(
        "corrupt record {key} ({detail}); run `mirrorfs mirror check` or restore from a mirror"
    )]
    CorruptRecord { key: String, detail: String },
    /// A mirror cannot answer now (source unreachable or refusing, mirror still catching up):
    /// retry later.
    #[error("{0}")]
    MirrorUnavailable(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

impl MetaError {
    /// The file-system kind of this error, carried to clients beside the status.
    pub fn kind(&self) -> FsErrorKind {
        use MetaError::*;
        match self {
            NoVolume { .. } | NoEntry { .. } | NoInode { .. } => FsErrorKind::NotFound,
            VolumeExists { .. } | Exists { .. } => FsErrorKind::Exists,
            NotDirectory { .. } => FsErrorKind::NotDirectory,
            IsDirectory { .. } => FsErrorKind::IsDirectory,
            NotEmpty { .. } => FsErrorKind::NotEmpty,
            NameTooLong { .. } => FsErrorKind::NameTooLong,
            InvalidName { .. } | InvalidArgument(_) | RenameIntoSelf { .. } => {
                FsErrorKind::InvalidArgument
            }
            ReadOnly { .. } => FsErrorKind::ReadOnly,
            NoSpace { .. } => FsErrorKind::NoSpace,
            Unauthenticated { .. } => FsErrorKind::Unauthenticated,
            PermissionDenied(_) => FsErrorKind::PermissionDenied,
            Contention { .. } => FsErrorKind::Busy,
            CorruptRecord { .. } => FsErrorKind::Corrupt,
            MirrorUnavailable(_) => FsErrorKind::Unavailable,
            Engine(e) => match e {
                EngineError::Compacted { .. } => FsErrorKind::InvalidArgument,
                EngineError::Corrupt { .. } => FsErrorKind::Corrupt,
                EngineError::Unavailable(_) => FsErrorKind::Unavailable,
                EngineError::Invalid(_) => FsErrorKind::InvalidArgument,
                EngineError::Io { .. } => FsErrorKind::Internal,
            },
        }
    }

    fn code(&self) -> Code {
        use MetaError::*;
        match self {
            NoVolume { .. } | NoEntry { .. } | NoInode { .. } => Code::NotFound,
            VolumeExists { .. } | Exists { .. } => Code::AlreadyExists,
            NotDirectory { .. } | IsDirectory { .. } | NotEmpty { .. } | ReadOnly { .. } => {
                Code::FailedPrecondition
            }
            NameTooLong { .. }
            | InvalidName { .. }
            | InvalidArgument(_)
            | RenameIntoSelf { .. } => Code::InvalidArgument,
            NoSpace { .. } => Code::ResourceExhausted,
            Unauthenticated { .. } => Code::Unauthenticated,
            PermissionDenied(_) => Code::PermissionDenied,
            Contention { .. } => Code::Aborted,
            CorruptRecord { .. } => Code::DataLoss,
            MirrorUnavailable(_) => Code::Unavailable,
            Engine(e) => match e {
                EngineError::Compacted { .. } => Code::OutOfRange,
                EngineError::Corrupt { .. } => Code::DataLoss,
                EngineError::Unavailable(_) => Code::Unavailable,
                EngineError::Invalid(_) => Code::InvalidArgument,
                EngineError::Io { .. } => Code::Internal,
            },
        }
    }
}

/// The one mapping from metadata errors to the wire.
impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let Ok(v) = e.kind().as_str().parse() {
            status.metadata_mut().insert(mirrorfs_api::ERROR_KIND, v);
        }
        if let MetaError::Engine(EngineError::Compacted { compacted, .. }) = &e
            && let Ok(v) = compacted.0.to_string().parse()
        {
            status.metadata_mut().insert(COMPACTED_REVISION, v);
        }
        status
    }
}

/// Set on an OUT_OF_RANGE changelog error: the revision history now starts after.
pub const COMPACTED_REVISION: &str = "mirrorfs-compacted-revision";

/// Reads the compaction point back from a status made by `From<MetaError>`.
pub fn compacted_revision(status: &Status) -> Option<Revision> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    status
        .metadata()
        .get(COMPACTED_REVISION)?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_kind_and_readable_message() {
        let s = Status::from(MetaError::NoEntry {
            volume: "data".into(),
            parent: Ino(1),
            name: "x".into(),
        });
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(FsErrorKind::of(&s), Some(FsErrorKind::NotFound));
        assert!(s.message().contains("\"data\"") && s.message().contains("\"x\""));
    }

    #[test]
    fn compaction_point_round_trips() {
        let s = Status::from(MetaError::Engine(EngineError::Compacted {
            requested: Revision(3),
            compacted: Revision(10),
        }));
        assert_eq!(compacted_revision(&s), Some(Revision(10)));
    }
}
