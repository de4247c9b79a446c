//! A meta service inside this process on a loopback port picked by the kernel: what `demo` and
//! `bench` run against.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, FsMeta};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct LocalMeta {
    pub url: String,
    pub fs: FsMeta,
    pub admin_token: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl LocalMeta {
    /// Opens an embedded engine in `dir` and serves it on 127.0.0.1 with a fresh admin token.
    pub async fn start(dir: &Path) -> anyhow::Result<LocalMeta> {
        let engine: Arc<dyn Engine> = Arc::new(EmbeddedEngine::open(&dir.join("meta.redb"))?);
        let fs = FsMeta::open(engine).await?;
        let admin_token = crate::token::generate();
        let state = Arc::new(MetaState {
            fs: fs.clone(),
            admin: AdminToken::new(&admin_token),
            metrics: Arc::new(MetaMetrics::register(&mut Registry::default())),
            started: Instant::now(),
            replication: None,
            mirror: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(mirrorfs_meta::service::run(listener, state, async {
            let _ = rx.await;
        }));
        Ok(LocalMeta {
            url,
            fs,
            admin_token,
            stop,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
