//! Where a bucket is and how to reach it: a URL, non-secret options, and optional credentials.
//! Volumes store the URL and options in their metadata (`StorageConfig`); credentials never go
//! there: they come from the environment or a file on the machine that opens the bucket.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ObjError;

/// An access key pair for an S3-compatible bucket. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// Reads `<prefix>ACCESS_KEY_ID`, `<prefix>SECRET_ACCESS_KEY` and the optional
    /// `<prefix>SESSION_TOKEN`, e.g. with prefix `MIRRORFS_SOURCE_` or `MIRRORFS_MIRROR_`.
    /// `Ok(None)` when neither key is set; an error when only one of the pair is.
    pub fn from_env(prefix: &str) -> Result<Option<Self>, ObjError> {
        let get = |name: &str| {
            std::env::var(format!("{prefix}{name}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        match (get("ACCESS_KEY_ID"), get("SECRET_ACCESS_KEY")) {
            (None, None) => Ok(None),
            (Some(id), Some(secret)) => Ok(Some(Self {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("SESSION_TOKEN"),
            })),
            (Some(_), None) => Err(ObjError::Invalid(format!(
                "{prefix}ACCESS_KEY_ID is set but {prefix}SECRET_ACCESS_KEY is not; set both or \
                 neither"
            ))),
            (None, Some(_)) => Err(ObjError::Invalid(format!(
                "{prefix}SECRET_ACCESS_KEY is set but {prefix}ACCESS_KEY_ID is not; set both or \
                 neither"
            ))),
        }
    }

    /// Reads a JSON file `{"access_key_id": "...", "secret_access_key": "...",
    /// "session_token": "..."}` (the token is optional).
    pub fn from_file(path: &Path) -> Result<Self, ObjError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ObjError::Invalid(format!(
                "cannot read the credentials file {}: {e}",
                path.display()
            ))
        })?;
        let c: Self = serde_json::from_str(&text).map_err(|e| {
            // serde_json's message names the position, never the content.
            ObjError::Invalid(format!(
                "credentials file {} is not JSON of the form {{\"access_key_id\": \"...\", \
                 \"secret_access_key\": \"...\"}}: {e}",
                path.display()
            ))
        })?;
        if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
            return Err(ObjError::Invalid(format!(
                "credentials file {} has an empty access_key_id or secret_access_key",
                path.display()
            )));
        }
        Ok(c)
    }
}

/// The options a bucket URL accepts, with what they mean (shown when an unknown one is given).
pub const KNOWN_OPTIONS: &[(&str, &str)] = &[
    (
        "endpoint",
        "s3: URL of an S3-compatible server, e.g. http://minio:9000",
    ),
    ("region", "s3: region of the bucket (default us-east-1)"),
    (
        "path_style",
        "s3: true for path-style requests (default true when endpoint is set, else false)",
    ),
    ("allow_http", "s3: true to allow plain-HTTP endpoints"),
    (
        "conditional_put",
        "s3: false for servers that ignore If-None-Match (a HEAD guards each put instead)",
    ),
    ("max_retries", "s3: retries of one request (default 3)"),
    (
        "retry_timeout",
        "s3: give up retrying a request after this long (default 30s)",
    ),
    (
        "connect_timeout",
        "s3: TCP/TLS connect timeout (default 5s)",
    ),
    ("timeout", "s3: whole-request timeout (default 60s)"),
];

/// How to open a bucket: its URL, non-secret options and optional credentials (used by S3
/// buckets, ignored by the others).
///
/// URLs: `file:///abs/dir` (a local directory, the default backend; a bare path is accepted
/// too), `s3://bucket/prefix` (AWS S3 or any S3-compatible server with `endpoint`),
/// `memory://name/prefix` (in-process, shared by name within the process; for tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    pub url: String,
    pub options: BTreeMap<String, String>,
    pub credentials: Option<Credentials>,
}

/// The parsed location of a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// An absolute directory.
    File(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    Memory {
        name: String,
        prefix: String,
    },
}

impl BucketConfig {
    /// A config with no options and no credentials. Nothing is checked until [`Self::validate`]
    /// or `Bucket::open`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// The directory of a local (`file://` or bare path) bucket; None for other backends or an
    /// invalid URL.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self.location() {
            Ok(Location::File(dir)) => Some(dir),
            _ => None,
        }
    }

    /// The bucket of a volume's storage configuration (as the meta service stores it).
    pub fn from_storage(
        storage: &mirrorfs_api::meta::StorageConfig,
        credentials: Option<Credentials>,
    ) -> Result<Self, ObjError> {
        if storage.bucket_url.is_empty() {
            return Err(ObjError::Invalid(
                "the volume has no bucket configured (its storage bucket_url is empty); create \
                 the volume with --bucket"
                    .into(),
            ));
        }
        let cfg = Self {
            url: storage.bucket_url.clone(),
            options: storage
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            credentials,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the URL and options without any I/O.
    pub fn validate(&self) -> Result<(), ObjError> {
        let loc = self.location()?;
        for (k, v) in &self.options {
            let Some((_, _)) = KNOWN_OPTIONS.iter().find(|(n, _)| n == k) else {
                let known: Vec<String> = KNOWN_OPTIONS
                    .iter()
                    .map(|(n, what)| format!("  {n}: {what}"))
                    .collect();
                return Err(ObjError::Invalid(format!(
                    "unknown option {k:?} for bucket {}; known options:\n{}",
                    self.display(),
                    known.join("\n")
                )));
            };
            let applies = match loc {
                Location::S3 { .. } => true,
                Location::File(_) | Location::Memory { .. } => false,
            };
            if !applies {
                return Err(ObjError::Invalid(format!(
                    "option {k:?} does not apply to bucket {}",
                    self.display()
                )));
            }
            match k.as_str() {
                "path_style" | "allow_http" | "conditional_put" => {
                    parse_bool(k, v)?;
                }
                "max_retries" => {
                    v.parse::<usize>().map_err(|_| {
                        ObjError::Invalid(format!("option max_retries={v:?} is not a number"))
                    })?;
                }
                "retry_timeout" | "connect_timeout" | "timeout" => {
                    parse_duration(k, v)?;
                }
                _ => {}
            }
        }
        // Credentials given for a bucket that takes none (a directory) are ignored: callers
        // pass the same environment credentials to every bucket of a kind.
        Ok(())
    }

    /// The URL as shown in messages and logs (bucket URLs never carry secrets: credentials in
    /// the URL are refused).
    pub fn display(&self) -> String {
        match self.options.get("endpoint") {
            Some(ep) => format!("{} (endpoint {ep})", self.url),
            None => self.url.clone(),
        }
    }

    pub(crate) fn bool_option(&self, key: &str) -> Result<Option<bool>, ObjError> {
        self.options
            .get(key)
            .map(|v| parse_bool(key, v))
            .transpose()
    }

    pub(crate) fn duration_option(&self, key: &str) -> Result<Option<Duration>, ObjError> {
        self.options
            .get(key)
            .map(|v| parse_duration(key, v))
            .transpose()
    }

    pub(crate) fn location(&self) -> Result<Location, ObjError> {
        let url = self.url.trim();
        let invalid = |why: &str| {
            ObjError::Invalid(format!(
                "bucket URL {url:?} is not valid: {why} (expected file:///abs/dir, \
                 s3://bucket/prefix or memory://name)"
            ))
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.is_empty() {
                return Err(invalid("it is empty"));
            }
            // A bare path names a local directory.
            let p = Path::new(url);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| invalid(&format!("cannot resolve a relative path: {e}")))?
                    .join(p)
            };
            return Ok(Location::File(abs));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(
                        "a file:// URL takes an absolute path (file:///dir)",
                    ));
                }
                Ok(Location::File(PathBuf::from(rest)))
            }
            "s3" | "s3a" | "memory" => {
                let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if host.contains('@') {
                    return Err(invalid(
                        "credentials do not belong in the URL; give them through the \
                         environment or a credentials file",
                    ));
                }
                if host.is_empty() {
                    return Err(invalid("the bucket name is missing"));
                }
                let prefix = prefix.trim_matches('/').to_owned();
                if prefix.split('/').any(|c| c == "." || c == "..") {
                    return Err(invalid("'.' and '..' are not allowed in the prefix"));
                }
                if scheme == "memory" {
                    Ok(Location::Memory {
                        name: host.to_owned(),
                        prefix,
                    })
                } else {
                    Ok(Location::S3 {
                        bucket: host.to_owned(),
                        prefix,
                    })
                }
            }
            other => Err(invalid(&format!("scheme {other:?} is not supported"))),
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ObjError> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ObjError::Invalid(format!(
            "option {key}={v:?} must be true or false"
        ))),
    }
}

fn parse_duration(key: &str, v: &str) -> Result<Duration, ObjError> {
    humantime::parse_duration(v).map_err(|e| {
        ObjError::Invalid(format!(
            "option {key}={v:?} is not a duration like 30s or 500ms: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            BucketConfig::new("file:///var/blocks").location().ok(),
            Some(Location::File("/var/blocks".into()))
        );
        assert_eq!(
            BucketConfig::new("s3://b/p/q/").location().ok(),
            Some(Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            })
        );
        assert_eq!(
            BucketConfig::new("memory://m").location().ok(),
            Some(Location::Memory {
                name: "m".into(),
                prefix: String::new()
            })
        );
        for bad in [
            "",
            "file://rel",
            "s3://",
            "s3://k:s@b/p",
            "ftp://x",
            "s3://b/../x",
        ] {
            assert!(BucketConfig::new(bad).location().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_option_lists_the_known_ones() {
        let e = BucketConfig::new("s3://b")
            .with_option("endpoit", "http://x")
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("endpoit") && e.contains("endpoint") && e.contains("path_style"));
        assert!(
            BucketConfig::new("file:///x")
                .with_option("region", "eu")
                .validate()
                .is_err()
        );
        assert!(
            BucketConfig::new("s3://b")
                .with_option("timeout", "soon")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            access_key_id: "AKIA1".into(),
            secret_access_key: "hunter2".into(),
            session_token: Some("tok3n".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("AKIA1") && !s.contains("hunter2") && !s.contains("tok3n"));
        let cfg = BucketConfig::new("s3://b").with_credentials(Some(c));
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
