//! Serving the CSI services on the endpoint's Unix socket until a shutdown future resolves:
//! Identity always, Controller and Node by role.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::client::{ConnectError, socket_path};
use crate::config::{Config, ConfigError};
use crate::csi::identity_server::IdentityServer;
use crate::identity::Identity;

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
    #[error("the CSI gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `config.endpoint` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let path = socket_path(&config.endpoint)?;
    let listener = bind(&path)?;
    serve_on(config, listener, shutdown).await
}

/// Removes a stale socket left by an earlier run, creates the parent directory and listens.
fn bind(path: &std::path::Path) -> Result<UnixListener, ServeError> {
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

/// Serves on an already bound listener (tests bind a socket in a temporary directory).
pub async fn serve_on(
    config: Config,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let config = Arc::new(config);
    tracing::info!(
        endpoint = %config.endpoint,
        role = ?config.role,
        node_id = config.node_id.as_deref().unwrap_or(""),
        "serving CSI"
    );
    let identity = IdentityServer::new(Identity::new(config.clone()));
    tonic::transport::Server::builder()
        .add_service(identity)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
