//! The driver's configuration as a plain struct (the command line turns flags into it) and the
//! checks that make a misconfigured driver fail at start rather than at the first call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
            ("kubelet-dir", &self.kubelet_dir),
            ("state-dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath {
                    flag,
                    path: path.clone(),
                });
            }
        }
        Ok(())
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
}
