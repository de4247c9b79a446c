//! The driver's configuration as a plain struct (the command line turns flags into it) and the
//! checks that make a misconfigured driver fail at start rather than at the first call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mirrorfs_api::size::MIN_CACHE_SIZE;

/// Which CSI services this process serves (Identity is always served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Controller,
    Node,
    All,
}

impl Role {
    pub fn controller(self) -> bool {
        matches!(self, Role::Controller | Role::All)
    }
    pub fn node(self) -> bool {
        matches!(self, Role::Node | Role::All)
    }
}

impl std::str::FromStr for Role {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "controller" => Ok(Role::Controller),
            "node" => Ok(Role::Node),
            "all" => Ok(Role::All),
            other => Err(ConfigError::BadRole(other.to_owned())),
        }
    }
}

/// Everything `mirrorfs csi` takes.
#[derive(Clone, Debug)]
pub struct Config {
    /// `unix:///path/csi.sock`.
    pub endpoint: String,
    pub role: Role,
    /// Required for the node role.
    pub node_id: Option<String>,
    /// Advertised as `topology.csi.mirrorfs.io/region` when set.
    pub region: Option<String>,
    pub kubelet_dir: PathBuf,
    /// Per-volume mount records and mount-process logs.
    pub state_dir: PathBuf,
    /// How long CreateVolume/NodePublish wait for a path the mirror has not applied yet.
    pub path_wait: Duration,
    /// Mirror lag above which a volume's condition is abnormal.
    pub max_lag: Duration,
    /// `/metrics` and `/healthz`.
    pub metrics_addr: Option<SocketAddr>,
    /// The `mirrorfs` binary that runs FUSE mounts.
    pub mount_binary: PathBuf,
    /// Where each staged volume's FUSE mount gets a disk cache directory of its own; `None`: no
    /// disk cache.
    pub cache_root: Option<PathBuf>,
    /// The disk cache size limit of each staged volume's mount, in bytes.
    pub cache_size: u64,
}

/// A configuration the driver cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid role {0:?}: use controller, node or all")]
    BadRole(String),
    #[error(
        "the node role needs --node-id (env MIRRORFS_NODE_ID; the chart sets it to spec.nodeName)"
    )]
    MissingNodeId,
    #[error("--node-id {0:?} is invalid: it must be 1 to 256 bytes without control characters")]
    BadNodeId(String),
    #[error(
        "--region {0:?} is invalid: a Kubernetes label value (at most 63 characters: letters, digits, '-', '_', '.', alphanumeric at both ends)"
    )]
    BadRegion(String),
    #[error("--{flag} must be an absolute path, got {path:?}")]
    RelativePath { flag: &'static str, path: PathBuf },
    #[error("--cache-size must be at least 16MiB (a few 4 MiB blocks), got {0} bytes")]
    CacheTooSmall(u64),
    #[error("--cache-root {path}: {why}")]
    CacheRoot { path: PathBuf, why: String },
}

impl Config {
    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.role.node() {
            let id = self.node_id.as_deref().ok_or(ConfigError::MissingNodeId)?;
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(ConfigError::BadNodeId(id.to_owned()));
            }
        }
        if let Some(r) = &self.region
            && !is_label_value(r)
        {
            return Err(ConfigError::BadRegion(r.clone()));
        }
        for (flag, path) in [
            ("kubelet-dir", Some(&self.kubelet_dir)),
            ("state-dir", Some(&self.state_dir)),
            ("cache-root", self.cache_root.as_ref()),
        ] {
            let Some(path) = path else { continue };
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath {
                    flag,
                    path: path.clone(),
                });
            }
        }
        if self.cache_root.is_some() && self.cache_size < MIN_CACHE_SIZE {
            return Err(ConfigError::CacheTooSmall(self.cache_size));
        }
        Ok(())
    }

    /// The system checks of a node plugin's `--cache-root`: an existing directory this process
    /// can create files in (a probe file is created and removed).
    pub fn check_cache_root(&self) -> Result<(), ConfigError> {
        let Some(root) = self.cache_root.as_ref().filter(|_| self.role.node()) else {
            return Ok(());
        };
        let fail = |why: String| ConfigError::CacheRoot {
            path: root.clone(),
            why,
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(fail("not a directory".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    "does not exist; create it (the chart mounts a hostPath there)".into(),
                ));
            }
            Err(e) => return Err(fail(format!("cannot be read: {e}"))),
        }
        let probe = root.join(format!(".write-probe-{}", std::process::id()));
        std::fs::File::create(&probe).map_err(|e| fail(format!("is not writable: {e}")))?;
        std::fs::remove_file(&probe).map_err(|e| {
            fail(format!(
                "cannot remove the probe file {}: {e}",
                probe.display()
            ))
        })
    }
}

/// A non-empty Kubernetes label value.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            endpoint: "unix:///csi/csi.sock".into(),
            role: Role::All,
            node_id: Some("node-1".into()),
            region: None,
            kubelet_dir: "/var/lib/kubelet".into(),
            state_dir: "/var/lib/mirrorfs-csi".into(),
            path_wait: Duration::from_secs(30),
            max_lag: Duration::from_secs(300),
            metrics_addr: None,
            mount_binary: "/usr/bin/mirrorfs".into(),
            cache_root: None,
            cache_size: mirrorfs_api::size::DEFAULT_CACHE_SIZE,
        }
    }

    #[test]
    fn roles_parse_and_reject_others() {
        assert_eq!("node".parse::<Role>().ok(), Some(Role::Node));
        assert_eq!("controller".parse::<Role>().ok(), Some(Role::Controller));
        assert_eq!("all".parse::<Role>().ok(), Some(Role::All));
        let e = "both".parse::<Role>().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid role \"both\": use controller, node or all")
        );
    }

    #[test]
    fn node_role_needs_a_node_id() {
        let mut c = config();
        assert!(c.validate().is_ok());
        c.node_id = None;
        assert!(matches!(c.validate(), Err(ConfigError::MissingNodeId)));
        c.role = Role::Controller;
        assert!(c.validate().is_ok());
        c.role = Role::Node;
        c.node_id = Some("x".repeat(257));
        assert!(matches!(c.validate(), Err(ConfigError::BadNodeId(_))));
    }

    #[test]
    fn bad_region_and_relative_dirs_are_refused() {
        let mut c = config();
        c.region = Some("eu-west-1".into());
        assert!(c.validate().is_ok());
        c.region = Some("-bad".into());
        assert!(matches!(c.validate(), Err(ConfigError::BadRegion(_))));
        let mut c = config();
        c.state_dir = "state".into();
        assert!(
            matches!(c.validate(), Err(ConfigError::RelativePath { flag, .. }) if flag == "state-dir")
        );
    }

    #[test]
    fn cache_flags_are_checked() {
        let mut c = config();
        c.cache_root = Some("cache".into());
        assert!(
            matches!(c.validate(), Err(ConfigError::RelativePath { flag, .. }) if flag == "cache-root")
        );
        c.cache_root = Some("/var/lib/mirrorfs/cache".into());
        assert!(c.validate().is_ok());
        c.cache_size = (16 << 20) - 1;
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--cache-size must be at least 16MiB"), "{e}");
        // Without a cache root the size is unused and not checked.
        c.cache_root = None;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cache_root_must_be_a_writable_directory() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut c = config();
        c.cache_root = Some(d.path().to_owned());
        assert!(c.check_cache_root().is_ok());
        assert_eq!(std::fs::read_dir(d.path()).map(|r| r.count()).ok(), Some(0));
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        c.cache_root = Some(file.clone());
        let e = c
            .check_cache_root()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            format!("--cache-root {}: not a directory", file.display())
        );
        c.cache_root = Some(d.path().join("missing"));
        let e = c
            .check_cache_root()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("does not exist"), "{e}");
        // The controller does not use it.
        c.role = Role::Controller;
        assert!(c.check_cache_root().is_ok());
    }
}
