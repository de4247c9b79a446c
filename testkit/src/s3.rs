//! A real S3 server in the test process: `s3s-fs` (S3 over a local directory) behind `s3s`'s
//! SigV4 authentication, served with hyper on a loopback port chosen by the kernel.
//!
//! Each bucket is a directory `<root>/<bucket>` and each object a file `<root>/<bucket>/<key>`,
//! so tests can damage an object on disk (flip a byte, truncate it) and watch a client notice.
//! The server honours `If-None-Match: *` on PUT (what `object_store`'s `PutMode::Create`
//! sends). Dropping the server stops it and closes its connections.

use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A running S3 server. Clients use path-style requests to [`S3Server::endpoint`] with
/// [`S3Server::access_key`] / [`S3Server::secret_key`] and any region.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    task: JoinHandle<()>,
}

impl S3Server {
    /// Serves the buckets under `dir` (created if missing) with fresh random credentials.
    pub async fn start(dir: &Path) -> io::Result<S3Server> {
        Self::start_inner(dir.to_path_buf(), None).await
    }

    /// Serves buckets in a temporary directory removed when the server is dropped.
    pub async fn start_temp() -> io::Result<S3Server> {
        let tmp = tempfile::Builder::new().prefix("mirrorfs-s3-").tempdir()?;
        Self::start_inner(tmp.path().to_path_buf(), Some(tmp)).await
    }

    async fn start_inner(root: PathBuf, tmp: Option<tempfile::TempDir>) -> io::Result<S3Server> {
        std::fs::create_dir_all(&root)?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let access_key = format!("AK{}", random_hex(8));
        let secret_key = random_hex(20);
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(
                access_key.clone(),
                secret_key.clone(),
            ));
            b.build()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            // Connections live in the set: dropping it (when the task is aborted) aborts them.
            let mut conns = JoinSet::new();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { continue };
                        // Without it, small responses wait for delayed ACKs (~40 ms each).
                        let _ = socket.set_nodelay(true);
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        conns.spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(S3Server {
            endpoint,
            access_key,
            secret_key,
            root,
            _tmp: tmp,
            task,
        })
    }

    /// Creates an empty bucket (idempotent).
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The directory holding every bucket.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that stores `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Stops the server and closes its connections (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    use std::hash::{BuildHasher, Hasher};
    // No rand dependency here: RandomState is seeded randomly per process and per instance.
    let mut s = String::new();
    while s.len() < bytes * 2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(s.len());
        let _ = write!(s, "{:016x}", h.finish());
    }
    s.truncate(bytes * 2);
    s
}
