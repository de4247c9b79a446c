//! The driver's one error type, and the one place it becomes a gRPC status (the CSI spec's error
//! table, `CSI-FACTS.md` section 6). Messages are written for a Kubernetes event: they name the
//! volume and the path and say what to do; they never contain secret values.

use tonic::{Code, Status};

use crate::mirror::MissingPath;

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A required request field is empty.
    #[error("{0} is required")]
    MissingField(&'static str),
    /// A request field, parameter, volume attribute or secret has a value the driver refuses.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// CreateVolume/ValidateVolumeCapabilities: a capability the driver cannot give.
    #[error("{0}")]
    UnsupportedCapability(String),
    /// Node calls: the requested capability is more than this (read-only) volume allows.
    #[error("{0}")]
    CapabilityExceedsVolume(String),
    /// A volume id that names no volume this driver knows.
    #[error("{0}")]
    UnknownVolume(String),
    /// The directory a volume maps to does not exist in the mirror (yet).
    #[error("{0}")]
    PathMissing(Box<MissingPath>),
    /// The path exists but is not a directory (a file, a symlink, something else).
    #[error("{0}")]
    NotADirectory(Box<MissingPath>),
    /// CreateVolume with a known name but other parameters; Stage/Publish with another capability.
    #[error("{0}")]
    Conflict(String),
    /// Publish before Stage, a second target in a single-node mode, a target that is a mount of
    /// something else, or a state the call cannot act on.
    #[error("{0}")]
    Precondition(String),
    /// Another call for the same volume is in progress (the caller retries with backoff).
    #[error("another operation on volume {volume_id:?} is in progress; retry later")]
    VolumeBusy { volume_id: String },
    /// ListVolumes with a token it did not hand out.
    #[error("invalid starting_token {0:?}: start the listing again")]
    BadListToken(String),
    /// The mirror refused the secret's token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The mirror meta service cannot be reached now; the call may be retried.
    #[error("{0}")]
    MirrorUnavailable(String),
    /// Mounting, binding or starting the mount process failed.
    #[error("{0}")]
    Mount(String),
    /// A local dependency is missing (Probe).
    #[error("{0}")]
    NotReady(String),
    /// A call this driver does not serve, or whose capability it does not advertise.
    #[error("{0} is not supported by the mirrorfs CSI driver")]
    NotSupported(&'static str),
    /// Anything else: a bug or an unexpected OS answer.
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CsiError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code of this error (CSI-FACTS section 6).
    pub fn code(&self) -> Code {
        match self {
            CsiError::MissingField(_)
            | CsiError::InvalidField { .. }
            | CsiError::UnsupportedCapability(_) => Code::InvalidArgument,
            CsiError::UnknownVolume(_) | CsiError::PathMissing(_) => Code::NotFound,
            CsiError::CapabilityExceedsVolume(_)
            | CsiError::NotADirectory(_)
            | CsiError::Precondition(_)
            | CsiError::NotReady(_) => Code::FailedPrecondition,
            CsiError::Conflict(_) => Code::AlreadyExists,
            CsiError::VolumeBusy { .. } | CsiError::BadListToken(_) => Code::Aborted,
            CsiError::Unauthenticated(_) => Code::Unauthenticated,
            CsiError::PermissionDenied(_) => Code::PermissionDenied,
            CsiError::MirrorUnavailable(_) => Code::Unavailable,
            CsiError::NotSupported(_) => Code::Unimplemented,
            CsiError::Mount(_) | CsiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = CsiError> = std::result::Result<T, E>;
