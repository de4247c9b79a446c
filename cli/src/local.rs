//! A meta service inside this process on a loopback port picked by the kernel: what `demo` and
//! `bench` run against.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, FsMeta};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct LocalMeta {
    pub url: String,
    pub fs: FsMeta,
    pub admin_token: String,
    /// Set for a mirror: its follower.
    pub mirror: Option<FollowerHandle>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl LocalMeta {
    /// Opens an embedded engine in `dir` and serves it on 127.0.0.1 with a fresh admin token.
    pub async fn start(dir: &Path) -> anyhow::Result<LocalMeta> {
        Self::start_with(dir, None).await
    }

    /// Like [`LocalMeta::start`], as a read-only mirror of the source at `source_url`, which
    /// accepts `token` for its changelog.
    pub async fn start_mirror(
        dir: &Path,
        source_url: &str,
        token: &str,
    ) -> anyhow::Result<LocalMeta> {
        Self::start_with(dir, Some(FollowerConfig::new(source_url, token))).await
    }

    async fn start_with(dir: &Path, follow: Option<FollowerConfig>) -> anyhow::Result<LocalMeta> {
        let engine: Arc<dyn Engine> = Arc::new(EmbeddedEngine::open(&dir.join("meta.redb"))?);
        Self::start_on(engine, follow).await
    }

    /// Serves `engine` (any engine: the benchmarks also run over etcd) on 127.0.0.1 with a fresh
    /// admin token; with `follow`, as a read-only mirror.
    pub async fn start_on(
        engine: Arc<dyn Engine>,
        follow: Option<FollowerConfig>,
    ) -> anyhow::Result<LocalMeta> {
        let (stop, stop_rx) = watch::channel(false);
        let (fs, mirror) = match follow {
            None => (FsMeta::open(engine).await?, None),
            Some(config) => {
                let fs = FsMeta::open_mirror(engine.clone()).await?;
                let handle = follower::start(engine, config, stop_rx.clone()).await?;
                (fs, Some(handle))
            }
        };
        let admin_token = crate::token::generate();
        let state = Arc::new(MetaState {
            fs: fs.clone(),
            admin: AdminToken::new(&admin_token),
            metrics: Arc::new(MetaMetrics::register(&mut Registry::default())),
            started: Instant::now(),
            replication: None,
            mirror: mirror.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut rx = stop_rx;
        let task = tokio::spawn(mirrorfs_meta::service::run(listener, state, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        Ok(LocalMeta {
            url,
            fs,
            admin_token,
            mirror,
            stop,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(())
    }
}
