//! Real FUSE mounts for tests: a source region (meta service over a memory engine on a loopback
//! port, a local-directory bucket) and optionally a mirror region following it (its own meta
//! service and bucket), with volumes mounted in this process through `Mount::open`, the code
//! path of `mirrorfs mount`. Every mount is unmounted when its guard is dropped, also when the
//! test panics (lazy unmount by path); nothing is killed by name.
//!
//! FUSE is required: without /dev/fuse the tests fail with a message saying so.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs_api::meta::StorageConfig;
use mirrorfs_fs::mount::{self, FuseOptions, Mount, MountConfig};
use mirrorfs_fs::{FsConfig, FsCore};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{FsMeta, NewVolume};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

pub const ADMIN: &str = "test-admin-token";
pub const WAIT: Duration = Duration::from_secs(30);

/// Fails the test (never skips it) when FUSE cannot be used here.
pub fn require_fuse() {
    if let Err(e) = mount::check_fuse_device() {
        panic!(
            "these tests need FUSE (CI runs them as root with /dev/fuse): {e}; \
             uid {}",
            nix::unistd::geteuid()
        );
    }
}

/// A meta service on a fixed loopback address (chosen by the kernel at first start), which
/// can be stopped and started again on the same address.
pub struct Served {
    pub addr: SocketAddr,
    pub url: String,
    state: Arc<MetaState>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Served {
    async fn start(state: Arc<MetaState>) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Served {
            addr,
            url: format!("http://{addr}"),
            state,
            stop: None,
            task: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, mut rx) = watch::channel(false);
        self.task = Some(tokio::spawn(mirrorfs_meta::service::run(
            listener,
            self.state.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
        self.stop = Some(stop);
    }

    /// Stops the service: streams end, connections are closed, the port is released.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
        {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot rebind {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
    }
}

fn state(fs: FsMeta, mirror: Option<FollowerHandle>) -> Arc<MetaState> {
    Arc::new(MetaState {
        mirror,
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    })
}

pub struct MirrorRegion {
    pub fs: FsMeta,
    pub follower: FollowerHandle,
    follower_stop: watch::Sender<bool>,
    pub served: Served,
}

/// A source region and optionally a mirror region, with their own runtime: tests are plain
/// `#[test]` functions whose file-system calls block, as a user's would.
pub struct Regions {
    pub source: Served,
    pub source_fs: FsMeta,
    pub mirror: Option<MirrorRegion>,
    pub dir: TempDir,
    pub rt: Runtime,
}

impl Regions {
    pub fn source() -> Regions {
        Self::start(false)
    }

    pub fn with_mirror() -> Regions {
        Self::start(true)
    }

    fn start(with_mirror: bool) -> Regions {
        require_fuse();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("mirrorfs-fuse-")
            .tempdir()
            .unwrap();
        for d in ["source", "mirror", "mnt"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let (source_fs, source, mirror) = rt.block_on(async {
            let source_fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
            let source = Served::start(state(source_fs.clone(), None)).await;
            let mirror = if with_mirror {
                let engine = Arc::new(MemoryEngine::new());
                let mut config = FollowerConfig::new(&source.url, ADMIN);
                config.backoff_min = Duration::from_millis(5);
                config.backoff_max = Duration::from_millis(100);
                let (follower_stop, rx) = watch::channel(false);
                let follower = follower::start(engine.clone(), config, rx).await.unwrap();
                let fs = FsMeta::open_mirror(engine).await.unwrap();
                let served = Served::start(state(fs.clone(), Some(follower.clone()))).await;
                Some(MirrorRegion {
                    fs,
                    follower,
                    follower_stop,
                    served,
                })
            } else {
                None
            };
            (source_fs, source, mirror)
        });
        Regions {
            source,
            source_fs,
            mirror,
            dir,
            rt,
        }
    }

    pub fn storage(&self, which: &str) -> StorageConfig {
        StorageConfig {
            bucket_url: format!("file://{}", self.dir.path().join(which).display()),
            options: Default::default(),
        }
    }

    /// Creates a source volume; returns its token.
    pub fn volume(&self, name: &str) -> String {
        self.rt.block_on(async {
            self.source_fs
                .create_volume(NewVolume {
                    name: name.into(),
                    storage: self.storage("source"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .1
        })
    }

    /// Creates a mirror volume of `source` (with the mirror bucket if `own_bucket`) once the
    /// mirror has the source volume; returns its token.
    pub fn mirror_volume(&self, name: &str, source: &str, own_bucket: bool) -> String {
        let m = self.mirror.as_ref().expect("a mirror region");
        let storage = if own_bucket {
            self.storage("mirror")
        } else {
            StorageConfig::default()
        };
        self.rt.block_on(async {
            let deadline = Instant::now() + WAIT;
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
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "cannot create mirror volume {name}: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    }

    pub fn mirror_url(&self) -> String {
        self.mirror
            .as_ref()
            .expect("a mirror region")
            .served
            .url
            .clone()
    }

    /// A new empty directory to mount on.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("mnt").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// The mount configuration `mirrorfs mount` would build (short timeouts for tests).
    pub fn config(&self, url: &str, volume: &str, token: &str, at: &Path) -> MountConfig {
        let mut c = MountConfig::new(volume, at, url, token);
        c.connect_timeout = Duration::from_secs(5);
        c.fs = FsConfig::default();
        c
    }

    /// Mounts with `config` (the path of `mirrorfs mount`).
    pub fn mount_with(&self, config: MountConfig) -> Mounted {
        let path = config.mountpoint.clone();
        let m = self
            .rt
            .block_on(Mount::open(config))
            .unwrap_or_else(|e| panic!("cannot mount on {}: {e}", path.display()));
        Mounted {
            path: m.path().to_owned(),
            mount: Some(m),
            rt: self.rt.handle().clone(),
        }
    }

    /// Mounts source volume `volume` on a new directory `at`.
    pub fn mount_source(&self, volume: &str, token: &str, at: &str) -> Mounted {
        let p = self.mountpoint(at);
        self.mount_with(self.config(&self.source.url.clone(), volume, token, &p))
    }

    /// Mounts mirror volume `volume` on a new directory `at`.
    pub fn mount_mirror(&self, volume: &str, token: &str, at: &str) -> Mounted {
        let p = self.mountpoint(at);
        self.mount_with(self.config(&self.mirror_url(), volume, token, &p))
    }

    /// Mounts an already opened core with explicit FUSE options (tests of the adapter alone).
    pub fn mount_core(&self, core: Arc<FsCore>, at: &str, opts: FuseOptions) -> Mounted {
        let p = self.mountpoint(at);
        let m = self
            .rt
            .block_on(Mount::start(core, &p, opts))
            .unwrap_or_else(|e| panic!("cannot mount on {}: {e}", p.display()));
        Mounted {
            path: m.path().to_owned(),
            mount: Some(m),
            rt: self.rt.handle().clone(),
        }
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        if let Some(m) = &self.mirror {
            m.follower_stop.send_replace(true);
        }
    }
}

/// A live mount; unmounted (lazily, by path) when dropped, panicking test or not.
pub struct Mounted {
    pub path: PathBuf,
    mount: Option<Mount>,
    rt: tokio::runtime::Handle,
}

impl Mounted {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// A clean unmount (flush, umount, wait for the session to end).
    pub fn unmount(mut self) {
        if let Some(m) = self.mount.take() {
            self.rt.block_on(m.unmount(false)).unwrap();
        }
        assert!(
            mount::find_mount(&self.path).is_none(),
            "{} is still mounted",
            self.path.display()
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Mount's own drop detaches it; make sure by path in any case.
        drop(self.mount.take());
        if mount::find_mount(&self.path).is_some_and(|m| m.source.starts_with("mirrorfs:")) {
            let _ = mount::unmount(&self.path, true);
        }
    }
}

/// Polls `check` until it holds; panics with `what` at the deadline.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
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

/// The errno of a failed call, for comparisons.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}
