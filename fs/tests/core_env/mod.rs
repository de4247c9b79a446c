//! In-process regions for tests of the file-system core: a source meta service (memory
//! engine) on a loopback port, optionally a mirror meta service following it, and
//! local-directory (or S3) buckets; FsCore instances opened over gRPC as a mount would.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs_api::meta::StorageConfig;
use mirrorfs_fs::meta::RetryPolicy;
use mirrorfs_fs::{BlockOptions, Blocks, FsConfig, FsCore, GrpcMeta, MetaClient};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{FsMeta, NewVolume};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_objstore::Credentials;
use mirrorfs_testkit::S3Server;
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const ADMIN: &str = "test-admin-token";
pub const WAIT: Duration = Duration::from_secs(30);

/// A meta service on a loopback port, stopped when dropped (or by `stop`).
pub struct Served {
    pub url: String,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Served {
    pub async fn start(state: MetaState) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(mirrorfs_meta::service::run(
            listener,
            Arc::new(state),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        Served {
            url,
            stop,
            task: Some(task),
        }
    }

    /// Stops the service and waits until its port is closed.
    /// Graceful: the service closes its connections (aborting the accept loop alone would
    /// leave established connections served by their own tasks).
    pub async fn stop(&mut self) {
        self.stop.send_replace(true);
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
        {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn state(fs: FsMeta, mirror: Option<FollowerHandle>) -> MetaState {
    MetaState {
        mirror,
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    }
}

/// Which object store the buckets are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

pub struct Mirror {
    pub fs: FsMeta,
    pub follower: FollowerHandle,
    pub follower_stop: watch::Sender<bool>,
    pub served: Served,
}

/// A source region (and optionally a mirror region) on this machine.
pub struct Env {
    pub dir: TempDir,
    pub backend: Backend,
    pub s3: Option<S3Server>,
    pub source_fs: FsMeta,
    pub source: Served,
    pub mirror: Option<Mirror>,
}

impl Env {
    pub async fn source() -> Env {
        Self::start(Backend::Local, false).await
    }

    pub async fn with_mirror() -> Env {
        Self::start(Backend::Local, true).await
    }

    pub async fn start(backend: Backend, mirror: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        for d in ["source", "mirror"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let s3 = match backend {
            Backend::Local => None,
            Backend::S3 => {
                let s3 = S3Server::start(&dir.path().join("s3")).await.unwrap();
                for b in ["source", "mirror"] {
                    s3.create_bucket(b).unwrap();
                }
                Some(s3)
            }
        };
        let source_fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        let source = Served::start(state(source_fs.clone(), None)).await;
        let mirror = if mirror {
            let engine = Arc::new(MemoryEngine::new());
            let mut config = FollowerConfig::new(&source.url, ADMIN);
            config.backoff_min = Duration::from_millis(5);
            config.backoff_max = Duration::from_millis(100);
            let (follower_stop, rx) = watch::channel(false);
            let follower = follower::start(engine.clone(), config, rx).await.unwrap();
            let fs = FsMeta::open_mirror(engine).await.unwrap();
            let served = Served::start(state(fs.clone(), Some(follower.clone()))).await;
            Some(Mirror {
                fs,
                follower,
                follower_stop,
                served,
            })
        } else {
            None
        };
        Env {
            dir,
            backend,
            s3,
            source_fs,
            source,
            mirror,
        }
    }

    /// Bucket `which` ("source" or "mirror") as a volume's storage.
    pub fn storage(&self, which: &str) -> StorageConfig {
        match &self.s3 {
            Some(s3) => StorageConfig {
                bucket_url: format!("s3://{which}/blocks"),
                options: [("endpoint".to_string(), s3.endpoint.clone())].into(),
            },
            None => StorageConfig {
                bucket_url: format!("file://{}", self.dir.path().join(which).display()),
                options: Default::default(),
            },
        }
    }

    pub fn credentials(&self) -> Option<Credentials> {
        self.s3
            .as_ref()
            .map(|s3| Credentials::new(&s3.access_key, &s3.secret_key))
    }

    /// Creates a source volume; returns its token.
    pub async fn volume(&self, name: &str) -> String {
        let (_, token) = self
            .source_fs
            .create_volume(NewVolume {
                name: name.into(),
                storage: self.storage("source"),
                ..Default::default()
            })
            .await
            .unwrap();
        token
    }

    /// Creates a mirror volume exposing `source` once the mirror has it; returns its token.
    pub async fn mirror_volume(&self, name: &str, source: &str, own_bucket: bool) -> String {
        let m = self.mirror.as_ref().expect("a mirror region");
        let deadline = Instant::now() + WAIT;
        let storage = if own_bucket {
            self.storage("mirror")
        } else {
            StorageConfig::default()
        };
        loop {
            let created =
                m.fs.create_volume(NewVolume {
                    name: name.into(),
                    storage: storage.clone(),
                    source_volume: source.into(),
                    ..Default::default()
                })
                .await;
            match created {
                Ok((_, token)) => return token,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot create mirror volume {name}: {e}"),
            }
        }
    }

    pub fn mirror_url(&self) -> &str {
        &self.mirror.as_ref().expect("a mirror region").served.url
    }

    pub async fn meta(&self, url: &str, volume: &str, token: &str) -> GrpcMeta {
        GrpcMeta::connect(url, token, volume, Duration::from_secs(5))
            .await
            .unwrap()
            .with_retry(RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(50),
                timeout: Duration::from_secs(5),
            })
    }

    /// An FsCore over gRPC, as a mount opens it.
    pub async fn core_over(&self, meta: Arc<dyn MetaClient>, config: FsConfig) -> Arc<FsCore> {
        let v = meta.open_volume().await.unwrap();
        let opts = BlockOptions {
            credentials: self.credentials(),
            ..Default::default()
        };
        let blocks = Blocks::for_volume(&v, opts).unwrap();
        FsCore::open_volume(meta, blocks, config).await.unwrap()
    }

    pub async fn core(
        &self,
        url: &str,
        volume: &str,
        token: &str,
        config: FsConfig,
    ) -> Arc<FsCore> {
        let meta = Arc::new(self.meta(url, volume, token).await);
        self.core_over(meta, config).await
    }

    pub async fn source_core(&self, volume: &str, token: &str) -> Arc<FsCore> {
        let url = self.source.url.clone();
        self.core(&url, volume, token, FsConfig::default()).await
    }
}

/// Waits until `check` holds, polling; panics with `what` at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn path_exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}
