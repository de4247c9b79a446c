//! Assembling the driver (Identity always; Controller and Node by role) and serving it on the
//! endpoint's Unix socket until a shutdown future resolves; `/metrics` and `/healthz` on
//! `--metrics-addr`; a restarted node plugin repairs its staged volumes in the background.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::client::{ConnectError, socket_path};
use crate::config::{Config, ConfigError};
use crate::controller::ControllerCore;
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::identity::{Health, Identity};
use crate::metrics::Metrics;
use crate::mirror::MirrorView;
use crate::mirror::grpc::GrpcMirror;
use crate::mounter::Mounter;
use crate::mounter::linux::LinuxMounter;
use crate::node::NodeCore;
use crate::service::{ControllerService, NodeService};
use crate::state::Store;

/// Why the driver could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Endpoint(#[from] ConnectError),
    #[error("cannot listen on the CSI socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the state directory {path} (--state-dir): {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr} (--metrics-addr): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the CSI gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The driver's services, wired to a mounter and a mirror view.
pub struct Driver {
    config: Arc<Config>,
    health: Arc<Health>,
    controller: Option<Arc<ControllerCore>>,
    node: Option<Arc<NodeCore>>,
    metrics: Arc<Metrics>,
}

impl Driver {
    pub fn new(
        config: Config,
        mounter: Arc<dyn Mounter>,
        mirror: Arc<dyn MirrorView>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        config.check_cache_root()?;
        let config = Arc::new(config);
        let store = Store::open(&config.state_dir).map_err(|source| ServeError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let controller = config.role.controller().then(|| {
            Arc::new(ControllerCore::new(
                config.clone(),
                mirror.clone(),
                store.clone(),
            ))
        });
        let node = config.role.node().then(|| {
            Arc::new(NodeCore::new(
                config.clone(),
                mounter.clone(),
                mirror.clone(),
                store,
            ))
        });
        Ok(Self {
            health: Arc::new(Health {
                config: config.clone(),
                mounter,
                recovering: AtomicBool::new(false),
            }),
            config,
            controller,
            node,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The real driver: mounts through nix and `mirrorfs mount`, the mirror over gRPC.
    pub fn real(config: Config) -> Result<Self, ServeError> {
        let mounter = Arc::new(LinuxMounter::new(config.mount_binary.clone()));
        Self::new(config, mounter, Arc::new(GrpcMirror::new()))
    }

    /// Repairs staged volumes after a restart (node role); Probe says "not ready" meanwhile.
    pub async fn recover(&self) {
        if let Some(node) = &self.node {
            self.health.recovering.store(true, Ordering::SeqCst);
            node.recover().await;
            self.health.recovering.store(false, Ordering::SeqCst);
        }
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve_on(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(addr) = this.config.metrics_addr {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Metrics { addr, source })?;
            if let Ok(a) = l.local_addr() {
                tracing::info!(addr = %a, "serving /metrics and /healthz");
            }
            let health = this.health.clone();
            let check: Arc<dyn Fn() -> Result<(), String> + Send + Sync> =
                Arc::new(move || health.check().map_err(|e| e.to_string()));
            let mut rx = stop_rx.clone();
            let metrics = this.metrics.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = crate::metrics::serve(l, metrics, check, stop).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        if this.node.is_some() {
            // Not ready until the repair is done, from the first Probe on.
            this.health.recovering.store(true, Ordering::SeqCst);
            let d = this.clone();
            tokio::spawn(async move { d.recover().await });
        }
        tracing::info!(
            endpoint = %this.config.endpoint,
            role = ?this.config.role,
            node_id = this.config.node_id.as_deref().unwrap_or(""),
            "serving CSI"
        );
        let mut router =
            tonic::transport::Server::builder().add_service(IdentityServer::new(Identity {
                health: this.health.clone(),
            }));
        if let Some(c) = &this.controller {
            router = router.add_service(ControllerServer::new(ControllerService {
                core: c.clone(),
                metrics: this.metrics.clone(),
            }));
        }
        if let Some(n) = &this.node {
            router = router.add_service(NodeServer::new(NodeService {
                core: n.clone(),
                metrics: this.metrics.clone(),
            }));
        }
        let r = router
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        let _ = stop_tx.send(true);
        r?;
        Ok(())
    }
}

/// Serves the real driver on `config.endpoint` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let path = socket_path(&config.endpoint)?;
    let driver = Driver::real(config)?;
    let listener = bind(&path)?;
    let r = driver.serve_on(listener, shutdown).await;
    let _ = std::fs::remove_file(&path);
    r
}

/// Removes a stale socket left by an earlier run, creates the parent directory and listens.
pub fn bind(path: &std::path::Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}
