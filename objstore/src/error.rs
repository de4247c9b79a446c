//! The one error type of the block store. Variants are named for what the caller does next:
//! `Missing`, `Corrupt` and `Truncated` read another copy (and repair this one), `Unavailable`
//! retries with backoff, `Denied` and `Invalid` need a person. Messages name the bucket (its
//! display form, which never carries a secret) and the key, and say what to do.

use mirrorfs_api::Checksum;

#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    #[error("block {key} is missing from bucket {bucket} (not copied there yet, or deleted)")]
    Missing { bucket: String, key: String },

    #[error(
        "block {key} in bucket {bucket} is corrupt: its BLAKE3 checksum is {actual} but the \
         metadata records {expected}; read it from another copy and re-copy it"
    )]
    Corrupt {
        bucket: String,
        key: String,
        expected: Checksum,
        actual: Checksum,
    },

    #[error(
        "block {key} in bucket {bucket} is truncated: {actual} bytes where the metadata records \
         {expected}; read it from another copy and re-copy it"
    )]
    Truncated {
        bucket: String,
        key: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "object {key} already exists in bucket {bucket} with different content; block keys are \
         never reused or overwritten, so check who wrote it before removing it"
    )]
    Exists { bucket: String, key: String },

    #[error(
        "bucket {bucket} denied access: {detail}; check the access key and secret key given for \
         this bucket and the bucket's policy"
    )]
    Denied { bucket: String, detail: String },

    #[error(
        "bucket {bucket} is unavailable: {detail}; check its endpoint and the network (the \
         operation is safe to retry)"
    )]
    Unavailable { bucket: String, detail: String },

    #[error("{0}")]
    Invalid(String),

    #[error("bucket {bucket}: {detail}")]
    Other { bucket: String, detail: String },

    #[error(
        "block {key} could not be read from either bucket: local copy: {local}; source: {fallback}"
    )]
    BothFailed {
        key: String,
        local: Box<ObjError>,
        fallback: Box<ObjError>,
    },
}

impl ObjError {
    /// Whether the same operation may succeed if tried again later (an outage, a timeout).
    /// A missing, corrupt or refused object needs another copy or a person instead.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjError::Unavailable { .. } => true,
            ObjError::BothFailed {
                local, fallback, ..
            } => local.is_retryable() || fallback.is_retryable(),
            ObjError::Missing { .. }
            | ObjError::Corrupt { .. }
            | ObjError::Truncated { .. }
            | ObjError::Exists { .. }
            | ObjError::Denied { .. }
            | ObjError::Invalid(_)
            | ObjError::Other { .. } => false,
        }
    }

    /// Whether this copy of the block is bad or absent, so another copy should be read and
    /// this one repaired.
    pub fn is_bad_copy(&self) -> bool {
        matches!(
            self,
            ObjError::Missing { .. } | ObjError::Corrupt { .. } | ObjError::Truncated { .. }
        )
    }

    /// A short stable name for metric labels and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjError::Missing { .. } => "missing",
            ObjError::Corrupt { .. } => "corrupt",
            ObjError::Truncated { .. } => "truncated",
            ObjError::Exists { .. } => "exists",
            ObjError::Denied { .. } => "denied",
            ObjError::Unavailable { .. } => "unavailable",
            ObjError::Invalid(_) => "invalid",
            ObjError::Other { .. } => "other",
            ObjError::BothFailed { .. } => "both-failed",
        }
    }

    /// Maps an `object_store` error for `key` in `bucket`.
    pub(crate) fn from_store(bucket: &str, key: &str, e: object_store::Error) -> ObjError {
        use object_store::Error as E;
        let bucket = bucket.to_owned();
        let detail = chain(&e);
        match e {
            E::NotFound { .. } => ObjError::Missing {
                bucket,
                key: key.to_owned(),
            },
            E::AlreadyExists { .. } | E::Precondition { .. } => ObjError::Exists {
                bucket,
                key: key.to_owned(),
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                ObjError::Denied { bucket, detail }
            }
            E::InvalidPath { .. } => ObjError::Invalid(format!("bucket {bucket}: {detail}")),
            E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. }
            | E::NotModified { .. }
            | E::JoinError { .. } => ObjError::Other { bucket, detail },
            // Generic covers transport failures, timeouts, 5xx after retries and local I/O
            // errors; a local permission error is still a refusal.
            _ if io_kind(&e) == Some(std::io::ErrorKind::PermissionDenied) => {
                ObjError::Denied { bucket, detail }
            }
            // A 4xx answer (other than timeout and throttling) is the server refusing this
            // request: retrying will not help. object_store keeps the status private, so read
            // it from the message.
            _ if http_status(&detail)
                .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                ObjError::Other { bucket, detail }
            }
            _ => ObjError::Unavailable { bucket, detail },
        }
    }
}

/// The HTTP status in an `object_store` error message ("... status code: 400 Bad Request").
fn http_status(detail: &str) -> Option<u16> {
    let (_, rest) = detail.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// The error and its sources, each added once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = s.source();
    }
    None
}
