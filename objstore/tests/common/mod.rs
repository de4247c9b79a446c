//! One test body, two backends: a local directory and a real S3 server in the test process
//! (`mirrorfs_testkit::S3Server`). Each bucket uses a key prefix, so prefix handling is tested
//! everywhere.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use mirrorfs_api::{BlockId, VolumeId};
use mirrorfs_objstore::{BlockInfo, Bucket, BucketConfig, Credentials, new_block_id};
use mirrorfs_testkit::S3Server;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

pub const PREFIX: &str = "blocks";

pub struct Env {
    pub backend: Backend,
    tmp: tempfile::TempDir,
    pub s3: Option<S3Server>,
}

impl Env {
    pub async fn new(backend: Backend) -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s3 = match backend {
            Backend::Local => None,
            Backend::S3 => Some(
                S3Server::start(&tmp.path().join("s3"))
                    .await
                    .expect("start the S3 server"),
            ),
        };
        Env { backend, tmp, s3 }
    }

    /// The config of bucket `name` (created empty).
    pub fn config(&self, name: &str) -> BucketConfig {
        match &self.s3 {
            None => BucketConfig::new(format!(
                "file://{}/{PREFIX}",
                self.tmp.path().join("local").join(name).display()
            )),
            Some(s3) => {
                s3.create_bucket(name).expect("create bucket");
                BucketConfig::new(format!("s3://{name}/{PREFIX}"))
                    .with_option("endpoint", &s3.endpoint)
                    .with_option("max_retries", "1")
                    .with_option("retry_timeout", "5s")
                    .with_credentials(Some(Credentials::new(&s3.access_key, &s3.secret_key)))
            }
        }
    }

    pub fn bucket(&self, name: &str) -> Bucket {
        Bucket::open(&self.config(name)).expect("open bucket")
    }

    /// The file on disk that holds `key` of bucket `name`.
    pub fn object_file(&self, name: &str, key: &str) -> PathBuf {
        match &self.s3 {
            None => self
                .tmp
                .path()
                .join("local")
                .join(name)
                .join(PREFIX)
                .join(key),
            Some(s3) => s3.object_path(name, &format!("{PREFIX}/{key}")),
        }
    }

    /// A bucket whose server does not answer: S3 on a closed loopback port; for the local
    /// backend, an injected outage.
    pub async fn unreachable(&self, name: &str) -> Bucket {
        match self.backend {
            Backend::Local => {
                let (b, f) = self.bucket(name).with_faults();
                f.set_unavailable(true);
                b
            }
            Backend::S3 => {
                let port = {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    l.local_addr().expect("addr").port()
                };
                let mut cfg = self.config(name);
                cfg.options
                    .insert("endpoint".into(), format!("http://127.0.0.1:{port}"));
                cfg.options.insert("max_retries".into(), "0".into());
                Bucket::open(&cfg).expect("open")
            }
        }
    }
}

/// Runs `body` over each backend, saying which one failed.
pub async fn each_backend<F, Fut>(body: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for backend in [Backend::Local, Backend::S3] {
        let env = Env::new(backend).await;
        if let Err(e) = body(env).await {
            panic!("{backend:?} backend: {e:#}");
        }
    }
}

/// Deterministic block contents.
pub fn data(len: usize, seed: u8) -> bytes::Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Stores a fresh block of `len` bytes in `bucket`.
pub async fn put(
    bucket: &Bucket,
    len: usize,
    seed: u8,
) -> anyhow::Result<(BlockInfo, bytes::Bytes)> {
    let id: BlockId = new_block_id(VolumeId(1));
    let d = data(len, seed);
    let sum = bucket.put_block(&id, d.clone()).await?;
    Ok((
        BlockInfo {
            id,
            size: len as u64,
            checksum: sum,
        },
        d,
    ))
}

/// Flips one byte of a file in place.
pub fn flip_byte(path: &std::path::Path) {
    let mut b = std::fs::read(path).expect("read object file");
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(path, b).expect("write object file");
}

/// Cuts a file to half its length.
pub fn truncate_half(path: &std::path::Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open object file");
    let len = f.metadata().expect("metadata").len();
    f.set_len(len / 2).expect("truncate");
}
