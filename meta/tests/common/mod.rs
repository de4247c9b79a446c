//! Shared test setup: a meta service on a loopback port chosen by the kernel, stopped when the
//! handle drops.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, FsMeta, client};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const ADMIN: &str = "test-admin-token";

pub struct Server {
    pub url: String,
    pub engine: Arc<dyn Engine>,
    pub fs: FsMeta,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_on(Arc::new(MemoryEngine::new())).await
    }

    pub async fn start_on(engine: Arc<dyn Engine>) -> Server {
        let fs = FsMeta::open(engine.clone()).await.expect("open metadata");
        Self::serve(MetaState {
            fs,
            admin: AdminToken::new(ADMIN),
            metrics: Arc::new(MetaMetrics::register(&mut Registry::default())),
            started: Instant::now(),
            replication: None,
            mirror: None,
        })
        .await
    }

    /// Serves `state` (a source, or a mirror with its follower) on a loopback port.
    pub async fn serve(state: MetaState) -> Server {
        let (engine, fs) = (state.fs.engine().clone(), state.fs.clone());
        let state = Arc::new(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mirrorfs_meta::service::run(listener, state, async {
                let _ = rx.await;
            })
            .await
            .expect("meta service failed");
        });
        Server {
            url,
            engine,
            fs,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        client::connect(&self.url, Duration::from_secs(5))
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
