//! The error kinds of the file-system API as they travel on the wire. The server attaches the
//! kind to every failed `Fs` call (metadata key [`ERROR_KIND`]); clients turn it back into an
//! errno without parsing messages.

/// The gRPC metadata key that carries an [`FsErrorKind`] on a failed call.
pub const ERROR_KIND: &str = "mirrorfs-error";

/// What went wrong, in file-system terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsErrorKind {
    NotFound,
    Exists,
    NotDirectory,
    IsDirectory,
    NotEmpty,
    NameTooLong,
    InvalidArgument,
    ReadOnly,
    NoSpace,
    PermissionDenied,
    Unauthenticated,
    Busy,
    Unavailable,
    Corrupt,
    Internal,
}

impl FsErrorKind {
    pub const ALL: [FsErrorKind; 15] = [
        Self::NotFound,
        Self::Exists,
        Self::NotDirectory,
        Self::IsDirectory,
        Self::NotEmpty,
        Self::NameTooLong,
        Self::InvalidArgument,
        Self::ReadOnly,
        Self::NoSpace,
        Self::PermissionDenied,
        Self::Unauthenticated,
        Self::Busy,
        Self::Unavailable,
        Self::Corrupt,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::Exists => "exists",
            Self::NotDirectory => "not-directory",
            Self::IsDirectory => "is-directory",
            Self::NotEmpty => "not-empty",
            Self::NameTooLong => "name-too-long",
            Self::InvalidArgument => "invalid-argument",
            Self::ReadOnly => "read-only",
            Self::NoSpace => "no-space",
            Self::PermissionDenied => "permission-denied",
            Self::Unauthenticated => "unauthenticated",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Corrupt => "corrupt",
            Self::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind carried by a failed call, if the server attached one.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        status
            .metadata()
            .get(ERROR_KIND)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for k in FsErrorKind::ALL {
            assert_eq!(FsErrorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FsErrorKind::parse("bogus"), None);
    }
}
