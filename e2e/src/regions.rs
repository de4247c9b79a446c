//! Two regions on this machine: a source meta service and a mirror-region meta service
//! following it, each a real `mirrorfs meta serve` process with an embedded engine, the mirror
//! reaching the source through a fault-injecting TCP proxy (the inter-region link, which a test
//! can delay or cut). Volumes are created through the admin API; data sets are written into the
//! source volume through the file-system core (the code a mount runs), with their blocks in a
//! local-directory bucket that the mirror volume shares.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs_api::meta::admin_client::AdminClient;
use mirrorfs_api::meta::{self as pb, resolve_reply};
use mirrorfs_fs::meta::RetryPolicy;
use mirrorfs_fs::{BlockOptions, Blocks, FsConfig, FsCore, GrpcMeta, MetaClient};
use mirrorfs_meta::client;
use mirrorfs_testkit::Proxy;

use crate::process::Proc;

/// How long a meta service gets to start, and the mirror to catch up.
pub const WAIT: Duration = Duration::from_secs(60);

/// A meta service process.
pub struct MetaProc {
    pub proc: Proc,
    pub url: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
}

impl MetaProc {
    /// Starts `mirrorfs meta serve` on kernel-chosen loopback ports with `extra` flags and waits
    /// until it prints its address.
    pub fn start(name: &str, data_dir: &Path, extra: &[String]) -> MetaProc {
        std::fs::create_dir_all(data_dir).expect("create the meta data dir");
        let log = data_dir.with_extension("log");
        let mut cmd = Command::new(crate::binary::mirrorfs());
        cmd.args([
            "meta",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--mirror-check-interval",
            "0s",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("MIRRORFS_LOG", "warn")
        .env_remove("MIRRORFS_ADMIN_TOKEN")
        .env_remove("MIRRORFS_ADMIN_TOKEN_FILE");
        let mut proc = Proc::spawn(name, cmd, &log);
        let deadline = Instant::now() + WAIT;
        let url = loop {
            let text = proc.log();
            if let Some(url) = text
                .lines()
                .find_map(|l| l.strip_prefix("mirrorfs meta: serving gRPC on "))
            {
                break url.to_owned();
            }
            assert!(proc.running(), "{name} exited before serving:\n{text}");
            assert!(
                Instant::now() < deadline,
                "{name} did not print its address within {WAIT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("the generated admin token")
            .trim()
            .to_owned();
        MetaProc {
            proc,
            url,
            admin_token,
            data_dir: data_dir.to_owned(),
        }
    }

    pub async fn admin(&self) -> AdminClient<client::Authed> {
        let ch = client::connect(&self.url, Duration::from_secs(10))
            .await
            .expect("connect to the meta service");
        client::admin(ch, &self.admin_token).expect("admin client")
    }
}

/// A file of a data set.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// Absolute path in the volume, e.g. `/teams/vision/train/part-0.bin`.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Directories, files and symlinks written into a source volume.
#[derive(Clone, Debug, Default)]
pub struct DataSet {
    pub dirs: Vec<String>,
    pub files: Vec<DataFile>,
    /// (path, target)
    pub symlinks: Vec<(String, String)>,
}

impl DataSet {
    /// A small tree with files of several sizes (empty, small, several blocks), and symlinks
    /// pointing inside and outside the volume.
    pub fn standard() -> DataSet {
        let mut files = Vec::new();
        for (i, len) in [0usize, 1, 4096, 100_000, (2 << 20) + 12_345]
            .into_iter()
            .enumerate()
        {
            files.push(DataFile {
                path: format!("/teams/vision/imagenet/train/part-{i:03}.bin"),
                bytes: pattern(len, i as u64 + 1),
            });
        }
        files.push(DataFile {
            path: "/teams/vision/imagenet/val/labels.txt".into(),
            bytes: b"cat\ndog\n".to_vec(),
        });
        files.push(DataFile {
            path: "/teams/speech/README".into(),
            bytes: b"speech data\n".to_vec(),
        });
        files.push(DataFile {
            path: "/teams/vision/imagenet/train/nested/deeper/leaf.bin".into(),
            bytes: pattern(7_777, 99),
        });
        DataSet {
            dirs: vec![
                "/teams/vision/imagenet/train/nested/deeper".into(),
                "/teams/vision/imagenet/val".into(),
                "/teams/speech/librispeech".into(),
                "/teams/vision/imagenet/train/emptydir".into(),
                "/links".into(),
            ],
            files,
            symlinks: vec![
                ("/links/outside".into(), "/etc".into()),
                ("/links/up".into(), "../../..".into()),
                ("/links/inside".into(), "../teams/vision".into()),
            ],
        }
    }

    /// The files under `dir` (an absolute volume path), keyed by their path relative to it
    /// (`/part-000.bin`), with their bytes.
    pub fn files_under(&self, dir: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let dir = dir.trim_end_matches('/');
        self.files
            .iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix(dir)
                    .filter(|r| r.starts_with('/'))
                    .map(|r| (r.to_owned(), f.bytes.clone()))
            })
            .collect()
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

/// A source region and a mirror region.
pub struct Regions {
    pub source: MetaProc,
    pub mirror: MetaProc,
    /// The mirror's link to the source.
    pub link: Proxy,
    /// The source volumes' bucket (shared by mirror volumes).
    pub bucket: PathBuf,
}

impl Regions {
    /// Starts both regions under `dir`.
    pub async fn start(dir: &Path) -> Regions {
        let bucket = dir.join("bucket-source");
        std::fs::create_dir_all(&bucket).expect("create the bucket dir");
        let source = MetaProc::start("source meta service", &dir.join("meta-source"), &[]);
        let upstream = source
            .url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .expect("the source's address");
        let link = Proxy::start(upstream).await.expect("start the link proxy");
        let token_file = source.data_dir.join("admin.token");
        let mirror = MetaProc::start(
            "mirror meta service",
            &dir.join("meta-mirror"),
            &[
                "--mirror-of".into(),
                link.url(),
                "--mirror-token-file".into(),
                token_file.display().to_string(),
            ],
        );
        Regions {
            source,
            mirror,
            link,
            bucket,
        }
    }

    /// Creates a source volume with its blocks in the shared bucket; returns its token.
    pub async fn source_volume(&self, name: &str) -> String {
        let r = self
            .source
            .admin()
            .await
            .create_volume(pb::CreateVolumeRequest {
                name: name.into(),
                storage: Some(pb::StorageConfig {
                    bucket_url: format!("file://{}", self.bucket.display()),
                    options: Default::default(),
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create source volume {name}: {e}"));
        r.into_inner().token
    }

    /// Creates the mirror volume `name` exposing source volume `source` (sharing its bucket)
    /// once the mirror has applied that volume; returns its token.
    pub async fn mirror_volume(&self, name: &str, source: &str) -> String {
        self.wait_caught_up().await;
        let mut admin = self.mirror.admin().await;
        let r = admin
            .create_volume(pb::CreateVolumeRequest {
                name: name.into(),
                source_volume: source.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create mirror volume {name}: {e}"));
        r.into_inner().token
    }

    /// The source's current revision.
    pub async fn source_revision(&self) -> u64 {
        self.source
            .admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("source status")
            .into_inner()
            .revision
    }

    /// The mirror's follower status.
    pub async fn mirror_status(&self) -> pb::MirrorStatus {
        self.mirror
            .admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("mirror status")
            .into_inner()
            .mirror
            .expect("the mirror reports its follower")
    }

    /// Waits until the mirror has applied source revision `rev`.
    pub async fn wait_applied(&self, rev: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.mirror_status().await;
            if st.applied_revision >= rev {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the mirror did not apply source revision {rev} within {WAIT:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the mirror has applied everything the source has committed so far.
    pub async fn wait_caught_up(&self) {
        let rev = self.source_revision().await;
        self.wait_applied(rev).await;
    }

    /// The file-system core over the source volume, as a read-write mount opens it.
    pub async fn source_core(&self, volume: &str, token: &str) -> Arc<FsCore> {
        let meta = GrpcMeta::connect(&self.source.url, token, volume, Duration::from_secs(10))
            .await
            .expect("connect to the source volume")
            .with_retry(RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(50),
                timeout: Duration::from_secs(10),
            });
        let meta: Arc<dyn MetaClient> = Arc::new(meta);
        let v = meta.open_volume().await.expect("open the source volume");
        let blocks = Blocks::for_volume(&v, BlockOptions::default()).expect("the volume's bucket");
        let config = FsConfig {
            watch: false,
            ..FsConfig::default()
        };
        FsCore::open_volume(meta, blocks, config)
            .await
            .expect("open the file-system core")
    }

    /// Writes `data` into source volume `volume`; returns the source revision afterwards.
    pub async fn write(&self, volume: &str, token: &str, data: &DataSet) -> u64 {
        let core = self.source_core(volume, token).await;
        for d in &data.dirs {
            mkdirs(&core, d).await;
        }
        for f in &data.files {
            let (parent, name) = f.path.rsplit_once('/').expect("an absolute path");
            let parent = mkdirs(&core, parent).await;
            let (attr, fh) = core
                .create(
                    parent,
                    name.as_bytes(),
                    0o644,
                    0,
                    0,
                    libc::O_WRONLY | libc::O_EXCL,
                )
                .await
                .unwrap_or_else(|e| panic!("create {}: {e}", f.path));
            let mut off = 0usize;
            while off < f.bytes.len() {
                let end = (off + (256 << 10)).min(f.bytes.len());
                let n = core
                    .write(attr.ino, fh, off as u64, &f.bytes[off..end])
                    .await
                    .unwrap_or_else(|e| panic!("write {}: {e}", f.path));
                off += n as usize;
            }
            core.release(attr.ino, fh)
                .await
                .unwrap_or_else(|e| panic!("close {}: {e}", f.path));
        }
        for (path, target) in &data.symlinks {
            let (parent, name) = path.rsplit_once('/').expect("an absolute path");
            let parent = mkdirs(&core, parent).await;
            core.symlink(parent, name.as_bytes(), target.as_bytes(), 0, 0)
                .await
                .unwrap_or_else(|e| panic!("symlink {path}: {e}"));
        }
        core.close();
        self.source_revision().await
    }

    /// `mkdir -p` of `path` in source volume `volume`; returns the source revision afterwards.
    pub async fn source_mkdirs(&self, volume: &str, token: &str, path: &str) -> u64 {
        let core = self.source_core(volume, token).await;
        mkdirs(&core, path).await;
        core.close();
        self.source_revision().await
    }

    /// Whether `path` exists in the mirror volume `volume`, per the mirror meta service.
    pub async fn mirror_has(&self, volume: &str, token: &str, path: &str) -> bool {
        let ch = client::connect(&self.mirror.url, Duration::from_secs(10))
            .await
            .expect("connect to the mirror");
        let mut fs = client::fs(ch, token).expect("fs client");
        let r = fs
            .resolve(pb::ResolveRequest {
                volume: Some(pb::VolumeRef {
                    volume: volume.into(),
                }),
                path: path.into(),
            })
            .await
            .expect("resolve on the mirror")
            .into_inner();
        matches!(r.result, Some(resolve_reply::Result::Found(_)))
    }
}

/// `mkdir -p`; returns the inode of the last directory.
async fn mkdirs(core: &FsCore, path: &str) -> u64 {
    let mut parent = core.root();
    for name in path.split('/').filter(|c| !c.is_empty()) {
        parent = match core.lookup(parent, name.as_bytes()).await {
            Ok(a) => a.ino,
            Err(_) => {
                core.mkdir(parent, name.as_bytes(), 0o755, 0, 0)
                    .await
                    .unwrap_or_else(|e| panic!("mkdir {name} in {path}: {e}"))
                    .ino
            }
        };
    }
    parent
}
