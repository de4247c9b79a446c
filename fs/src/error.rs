//! The one error type of the file-system core, by what the caller (the FUSE adapter, `cp`) does
//! next, and its mapping to errno in exactly one exhaustive match (mountpoint-s3's `ToErrno`).
//! Errors from the meta service arrive as `tonic::Status` carrying an [`FsErrorKind`]; errors
//! from object storage as [`ObjError`]. Both are turned into this type here and nowhere else.

use mirrorfs_api::FsErrorKind;
use mirrorfs_objstore::ObjError;
use tonic::Code;

/// Why a file-system operation failed. `Clone` so that one failed block fetch can answer every
/// reader waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FsError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDirectory(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error(
        "volume {volume} is a read-only mirror: write to its source volume in the source region"
    )]
    ReadOnly { volume: String },
    #[error("no space left: {0}")]
    NoSpace(String),
    /// Access refused (bad token, or a permission check): EACCES.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An operation POSIX forbids outright (a hard link to a directory): EPERM.
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("bad file handle {0} (not open, or not open for this operation)")]
    BadHandle(u64),
    #[error("busy: {0}")]
    Busy(String),
    /// The meta service (or a bucket) cannot be reached after retries.
    #[error("unavailable: {0}; the operation may be retried")]
    Unavailable(String),
    /// A block could not be read or written (missing in every bucket, refused, ...).
    #[error("block I/O failed: {0}")]
    Io(String),
    /// Stored data or metadata failed verification.
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("cross-device operation: {0}")]
    CrossDevice(String),
}

impl FsError {
    /// The errno the FUSE adapter replies with. One exhaustive match: a new variant must say
    /// what the kernel sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotDirectory(_) => libc::ENOTDIR,
            FsError::IsDirectory(_) => libc::EISDIR,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::ReadOnly { .. } => libc::EROFS,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::PermissionDenied(_) => libc::EACCES,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Unavailable(_) => libc::EIO,
            FsError::Io(_) => libc::EIO,
            FsError::Corrupt(_) => libc::EIO,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::CrossDevice(_) => libc::EXDEV,
        }
    }

    /// Whether trying again later may succeed (an outage), as opposed to a definite answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, FsError::Unavailable(_) | FsError::Busy(_))
    }

    /// The error of a failed meta-service call `what` (e.g. "lookup").
    pub fn from_status(what: &str, status: &tonic::Status) -> FsError {
        let msg = format!("{what}: {}", status.message());
        if let Some(kind) = FsErrorKind::of(status) {
            return match kind {
                FsErrorKind::NotFound => FsError::NotFound(msg),
                FsErrorKind::Exists => FsError::Exists(msg),
                FsErrorKind::NotDirectory => FsError::NotDirectory(msg),
                FsErrorKind::IsDirectory => FsError::IsDirectory(msg),
                FsErrorKind::NotEmpty => FsError::NotEmpty(msg),
                FsErrorKind::NameTooLong => FsError::NameTooLong(msg),
                FsErrorKind::InvalidArgument => FsError::Invalid(msg),
                FsErrorKind::ReadOnly => FsError::ReadOnly {
                    volume: status.message().to_owned(),
                },
                FsErrorKind::NoSpace => FsError::NoSpace(msg),
                // The meta service uses it for what POSIX calls EPERM (link to a directory).
                FsErrorKind::PermissionDenied => FsError::NotPermitted(msg),
                FsErrorKind::Unauthenticated => {
                    FsError::PermissionDenied(format!("{msg}; check the volume token"))
                }
                FsErrorKind::Busy => FsError::Busy(msg),
                FsErrorKind::Unavailable => FsError::Unavailable(msg),
                FsErrorKind::Corrupt => FsError::Corrupt(msg),
                FsErrorKind::Internal => FsError::Io(msg),
            };
        }
        // No kind: a transport failure or a server that is not a mirrorfs meta service.
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                FsError::Unavailable(format!("the meta service is unreachable: {msg}"))
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                FsError::PermissionDenied(format!("{msg}; check the volume token"))
            }
            Code::NotFound => FsError::NotFound(msg),
            Code::AlreadyExists => FsError::Exists(msg),
            Code::InvalidArgument | Code::OutOfRange => FsError::Invalid(msg),
            Code::ResourceExhausted => FsError::NoSpace(msg),
            Code::Unimplemented => FsError::NotSupported(msg),
            Code::DataLoss => FsError::Corrupt(msg),
            Code::Ok | Code::Unknown | Code::FailedPrecondition | Code::Internal => {
                FsError::Io(msg)
            }
        }
    }
}

impl From<ObjError> for FsError {
    fn from(e: ObjError) -> Self {
        let msg = e.to_string();
        match e {
            ObjError::Corrupt { .. } | ObjError::Truncated { .. } => FsError::Corrupt(msg),
            ObjError::Unavailable { .. } => FsError::Unavailable(msg),
            ObjError::Denied { .. } => FsError::Io(msg),
            ObjError::Missing { .. }
            | ObjError::Exists { .. }
            | ObjError::Invalid(_)
            | ObjError::Other { .. }
            | ObjError::BothFailed { .. } => FsError::Io(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: FsErrorKind) -> tonic::Status {
        let mut s = tonic::Status::new(Code::FailedPrecondition, "x");
        s.metadata_mut().insert(
            mirrorfs_api::ERROR_KIND,
            kind.as_str().parse().expect("ascii"),
        );
        s
    }

    #[test]
    fn every_wire_kind_maps_to_an_errno() {
        let expect = [
            (FsErrorKind::NotFound, libc::ENOENT),
            (FsErrorKind::Exists, libc::EEXIST),
            (FsErrorKind::NotDirectory, libc::ENOTDIR),
            (FsErrorKind::IsDirectory, libc::EISDIR),
            (FsErrorKind::NotEmpty, libc::ENOTEMPTY),
            (FsErrorKind::NameTooLong, libc::ENAMETOOLONG),
            (FsErrorKind::InvalidArgument, libc::EINVAL),
            (FsErrorKind::ReadOnly, libc::EROFS),
            (FsErrorKind::NoSpace, libc::ENOSPC),
            (FsErrorKind::PermissionDenied, libc::EPERM),
            (FsErrorKind::Unauthenticated, libc::EACCES),
            (FsErrorKind::Busy, libc::EBUSY),
            (FsErrorKind::Unavailable, libc::EIO),
            (FsErrorKind::Corrupt, libc::EIO),
            (FsErrorKind::Internal, libc::EIO),
        ];
        assert_eq!(expect.len(), FsErrorKind::ALL.len());
        for (kind, errno) in expect {
            assert_eq!(
                FsError::from_status("op", &status(kind)).errno(),
                errno,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let e = FsError::from_status("getattr", &tonic::Status::unavailable("refused"));
        assert!(matches!(e, FsError::Unavailable(_)));
        assert_eq!(e.errno(), libc::EIO);
    }
}
