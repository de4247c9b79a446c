//! The mirror-aware CSI driver (`csi.mirrorfs.io`): identity, controller and node services
//! speaking CSI v1.12.0 on a Unix socket. The controller maps claims onto existing directories
//! of mirror volumes; the node plugin mounts them read-only through `mirrorfs mount` processes
//! and bind mounts. OS effects sit behind [`Mounter`]; the mirror metadata behind [`MirrorView`].

mod cache_dir;
mod capability;
pub mod client;
mod config;
mod controller;
#[cfg(test)]
mod driver_tests;
mod error;
mod identity;
mod locks;
mod metrics;
pub mod mirror;
pub mod mounter;
pub mod mountinfo;
mod node;
mod params;
pub mod process;
mod relpath;
pub mod server;
mod service;
mod state;
mod volume_id;

pub use config::{Config, ConfigError, Role};
pub use error::CsiError;
pub use mirror::MirrorView;
pub use mounter::Mounter;
pub use params::{Secrets, VolumeSpec};
pub use relpath::RelPath;
pub use server::{Driver, ServeError, serve};

/// The driver name (GetPluginInfo, CSIDriver object, kubelet plugin directory).
pub const DRIVER_NAME: &str = "csi.mirrorfs.io";

/// The node label key advertised when `--region` is set.
pub const TOPOLOGY_REGION_KEY: &str = "topology.csi.mirrorfs.io/region";

/// Generated CSI code (messages, servers and clients), package `csi.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    pub mod csi {
        pub mod v1 {
            tonic::include_proto!("csi.v1");
        }
    }
}

/// The CSI v1 messages, servers (`identity_server`, `controller_server`, `node_server`) and
/// clients (`identity_client`, `controller_client`, `node_client`).
pub use proto::csi::v1 as csi;
