//! The meta service: the `Fs`, `Admin` and `Changelog` gRPC services over [`FsMeta`], with
//! authentication, metrics, and `run(listener, shutdown)` as the one way to serve them.

mod admin;
mod auth;
mod changelog;
mod fs;
mod replication;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use mirrorfs_api::meta::{
    admin_server::AdminServer, changelog_server::ChangelogServer, fs_server::FsServer,
    replication_server::ReplicationServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use auth::{AdminToken, bearer};

use crate::error::MetaError;
use crate::follower::FollowerHandle;
use crate::fs::FsMeta;
use crate::metrics::MetaMetrics;

pub use mirrorfs_api::client::MAX_MESSAGE_BYTES;

/// What the service shares between its gRPC services.
pub struct MetaState {
    pub fs: FsMeta,
    pub admin: AdminToken,
    /// A token that opens only the `Changelog` service, for mirrors (the admin token does too).
    pub replication: Option<AdminToken>,
    pub metrics: Arc<MetaMetrics>,
    pub started: Instant,
    /// Set on a mirror cluster: the follower that keeps it equal to its source.
    pub mirror: Option<FollowerHandle>,
}

impl MetaState {
    /// A source cluster's state with default settings.
    pub fn source(fs: FsMeta, admin: AdminToken, metrics: Arc<MetaMetrics>) -> Self {
        Self {
            fs,
            admin,
            replication: None,
            metrics,
            started: Instant::now(),
            mirror: None,
        }
    }

    /// "source" or "mirror".
    pub fn role(&self) -> &'static str {
        if self.mirror.is_some() {
            "mirror"
        } else {
            "source"
        }
    }

    /// The revision a read is answered at: a mirror's applied source revision, or the local head.
    async fn read_revision(&self) -> Result<mirrorfs_api::Revision, MetaError> {
        match &self.mirror {
            Some(m) => Ok(*m.applied().borrow()),
            None => Ok(self.fs.engine().head().await?.revision),
        }
    }

    /// Times `fut`, counts its outcome under `method`, and maps its error to the wire.
    async fn observe<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, MetaError>>,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        let start = Instant::now();
        let result = fut.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        self.metrics.observe(method, outcome, start.elapsed());
        match result {
            Ok(v) => Ok(tonic::Response::new(v)),
            Err(e) => {
                tracing::debug!(method, error = %e, "call failed");
                Err(e.into())
            }
        }
    }
}

/// Serves the meta API on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    state: Arc<MetaState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Long-lived changelog streams end at shutdown; otherwise a graceful stop would wait for
    // every follower to hang up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let fs = FsServer::from_arc(Arc::new(fs::FsService {
        state: state.clone(),
        stop: stop_rx.clone(),
    }))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::from_arc(Arc::new(admin::AdminService(state.clone())));
    let replication =
        ReplicationServer::from_arc(Arc::new(replication::ReplicationService(state.clone())));
    let changelog = ChangelogServer::from_arc(Arc::new(changelog::ChangelogService {
        state,
        stop: stop_rx,
    }))
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Replies of several segments (readdir pages, snapshot chunks) would otherwise wait for a
    // delayed ACK (~40 ms) under Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(fs)
        .add_service(admin)
        .add_service(changelog)
        .add_service(replication)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
