//! A bucket of immutable blocks: put never overwrites, get verifies size and BLAKE3 checksum,
//! and a block is copied between buckets only from a verified read.
//!
//! The one exception to "never overwritten": a copy whose checksum or size is *proven* wrong
//! against the metadata (`repair_block_from`) is deleted and then written again, because the
//! bad bytes must not stay under a key that readers trust.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use mirrorfs_api::{BlockId, Checksum, VolumeId};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use tracing::warn;

use crate::config::{BucketConfig, Location};
use crate::error::ObjError;
use crate::fault::FaultyStore;

/// Largest block the store accepts. Files are cut into blocks of at most this size.
pub const BLOCK_SIZE: usize = 4 << 20;

/// What the metadata records about a block; enough to fetch and verify it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockInfo {
    pub id: BlockId,
    pub size: u64,
    pub checksum: Checksum,
}

impl BlockInfo {
    /// The info of `data` stored under `id`.
    pub fn of(id: BlockId, data: &[u8]) -> Self {
        Self {
            id,
            size: data.len() as u64,
            checksum: checksum(data),
        }
    }
}

/// The BLAKE3 checksum of a block.
pub fn checksum(data: &[u8]) -> Checksum {
    Checksum(*blake3::hash(data).as_bytes())
}

/// A fresh block id for `volume`: `v{volume}/{2 hex fan-out}/{32 random hex}`. 128 random bits
/// make ids unique without coordination, so no key is ever reused; the fan-out spreads keys
/// over prefixes (S3 request-rate partitions, directory sizes on a local disk).
pub fn new_block_id(volume: VolumeId) -> BlockId {
    let r: [u8; 16] = rand::random();
    let hex = hex::encode(r);
    let id = format!("v{}/{}/{}", volume.0, &hex[..2], hex);
    // The format above always parses; fall back to the checked constructor's error path
    // only in theory.
    match BlockId::parse(&id) {
        Ok(b) => b,
        Err(e) => unreachable!("generated block id {id} is invalid: {e}"),
    }
}

/// An object as listed: its key relative to the bucket's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// What `copy_block_from` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The block was read (verified) from the source and written here.
    Copied { bytes: u64 },
    /// The destination already had it (right size; verified too with `repair_block_from`).
    AlreadyThere,
}

/// One bucket (or a prefix of one). Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: Arc<str>,
    /// The backend does not honour conditional puts: look before each put.
    head_before_put: bool,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Bucket").field(&self.display).finish()
    }
}

/// Named in-memory buckets of this process (`memory://name`).
static MEMORY: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);

impl Bucket {
    /// Builds a client for the bucket. Does no I/O: [`Bucket::check`] proves it is reachable.
    pub fn open(cfg: &BucketConfig) -> Result<Bucket, ObjError> {
        cfg.validate()?;
        let display = cfg.display();
        let invalid =
            |e: &dyn fmt::Display| ObjError::Invalid(format!("cannot open bucket {display}: {e}"));
        let (store, prefix, head_before_put): (Arc<dyn ObjectStore>, Path, bool) =
            match cfg.location()? {
                Location::File(dir) => {
                    let store = object_store::local::LocalFileSystem::new();
                    let prefix = Path::from_absolute_path(&dir).map_err(|e| invalid(&e))?;
                    (Arc::new(store), prefix, false)
                }
                Location::Memory { name, prefix } => {
                    let store = {
                        let mut m = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
                        m.entry(name).or_default().clone()
                    };
                    (store, parse_path(&prefix, &display)?, false)
                }
                Location::S3 { bucket, prefix } => {
                    let (store, conditional) = s3_store(cfg, &bucket).map_err(|e| invalid(&e))?;
                    (
                        Arc::new(store),
                        parse_path(&prefix, &display)?,
                        !conditional,
                    )
                }
            };
        Ok(Bucket {
            store,
            prefix,
            display: display.into(),
            head_before_put,
        })
    }

    /// A bucket over any `ObjectStore` (tests, fault injection). `prefix` may be empty.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Bucket {
        let prefix = Path::parse(prefix.trim_matches('/')).unwrap_or_else(|_| Path::from(prefix));
        Bucket {
            store,
            prefix,
            display: display.into(),
            head_before_put: false,
        }
    }

    /// The bucket URL as shown in messages (never a secret).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The same bucket (prefix, name) through a [`FaultyStore`] whose faults the caller
    /// switches with the returned handle.
    pub fn with_faults(&self) -> (Bucket, FaultyStore) {
        let faulty = FaultyStore::new(self.store.clone());
        let bucket = Bucket {
            store: Arc::new(faulty.clone()),
            ..self.clone()
        };
        (bucket, faulty)
    }

    /// One cheap request proving the bucket is reachable with these credentials: a HEAD of a
    /// key that does not exist (S3 answers 404 when authorised, 403 otherwise).
    pub async fn check(&self) -> Result<(), ObjError> {
        const PROBE: &str = ".mirrorfs-check";
        match self.store.head(&self.path(PROBE)?).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(PROBE, e)),
        }
    }

    /// Stores a new block and returns its checksum. Never overwrites: if the key exists with
    /// the same bytes (a retried put) this succeeds; with other bytes it fails with `Exists`.
    pub async fn put_block(&self, id: &BlockId, data: Bytes) -> Result<Checksum, ObjError> {
        if data.len() > BLOCK_SIZE {
            return Err(ObjError::Invalid(format!(
                "block {id} is {} bytes, more than the {BLOCK_SIZE}-byte block size",
                data.len()
            )));
        }
        let sum = checksum(&data);
        self.put_new(id.as_str(), data, sum).await?;
        Ok(sum)
    }

    /// Creates an object that must not exist yet; an existing identical one counts as done.
    async fn put_new(&self, key: &str, data: Bytes, sum: Checksum) -> Result<(), ObjError> {
        let path = self.path(key)?;
        let len = data.len() as u64;
        let mode = if self.head_before_put {
            // Check-then-put: racy only between two writers of the same key, and block keys
            // are unique per writer (128 random bits), so that race cannot happen for blocks.
            match self.store.head(&path).await {
                Ok(_) => return self.same_content(key, len, sum).await,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(key, e)),
            }
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => self.same_content(key, len, sum).await,
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// After a refused create: Ok if the object there has exactly these bytes.
    async fn same_content(&self, key: &str, len: u64, sum: Checksum) -> Result<(), ObjError> {
        let existing = self.get_object(key).await?;
        if existing.len() as u64 == len && checksum(&existing) == sum {
            Ok(())
        } else {
            Err(ObjError::Exists {
                bucket: self.display.to_string(),
                key: key.to_owned(),
            })
        }
    }

    /// Reads a whole block and verifies its size and checksum against the metadata.
    pub async fn get_block(&self, b: &BlockInfo) -> Result<Bytes, ObjError> {
        let data = self.get_object(b.id.as_str()).await?;
        self.verify(b, &data)?;
        Ok(data)
    }

    /// Checks `data` against what the metadata records for the block.
    pub fn verify(&self, b: &BlockInfo, data: &[u8]) -> Result<(), ObjError> {
        let len = data.len() as u64;
        if len < b.size {
            return Err(ObjError::Truncated {
                bucket: self.display.to_string(),
                key: b.id.to_string(),
                expected: b.size,
                actual: len,
            });
        }
        let actual = checksum(data);
        if len != b.size || actual != b.checksum {
            return Err(ObjError::Corrupt {
                bucket: self.display.to_string(),
                key: b.id.to_string(),
                expected: b.checksum,
                actual,
            });
        }
        Ok(())
    }

    /// The size of a block, if it is there.
    pub async fn head_block(&self, id: &BlockId) -> Result<Option<u64>, ObjError> {
        self.head_object(id.as_str()).await
    }

    /// Deletes a block; a block that is not there counts as deleted.
    pub async fn delete_block(&self, id: &BlockId) -> Result<(), ObjError> {
        self.delete_object(id.as_str()).await
    }

    /// Copies a block from `source` unless this bucket already has an object of the right size
    /// under its key. The source copy is verified before anything is written.
    pub async fn copy_block_from(
        &self,
        source: &Bucket,
        b: &BlockInfo,
    ) -> Result<CopyOutcome, ObjError> {
        match self.head_block(&b.id).await? {
            Some(size) if size == b.size => Ok(CopyOutcome::AlreadyThere),
            Some(_) => self.replace_bad_copy(source, b).await,
            None => self.copy_missing(source, b).await,
        }
    }

    /// Like `copy_block_from`, but an existing copy is read and verified too, and a copy
    /// proven bad (wrong size or checksum) is deleted and copied again.
    pub async fn repair_block_from(
        &self,
        source: &Bucket,
        b: &BlockInfo,
    ) -> Result<CopyOutcome, ObjError> {
        match self.get_block(b).await {
            Ok(_) => Ok(CopyOutcome::AlreadyThere),
            Err(ObjError::Missing { .. }) => self.copy_missing(source, b).await,
            Err(ObjError::Corrupt { .. } | ObjError::Truncated { .. }) => {
                self.replace_bad_copy(source, b).await
            }
            Err(e) => Err(e),
        }
    }

    async fn copy_missing(&self, source: &Bucket, b: &BlockInfo) -> Result<CopyOutcome, ObjError> {
        let data = source.get_block(b).await?;
        let bytes = data.len() as u64;
        self.put_new(b.id.as_str(), data, b.checksum).await?;
        Ok(CopyOutcome::Copied { bytes })
    }

    /// The documented exception to "never overwritten": fetch a verified copy first, so the
    /// bad one is removed only when a good one is in hand.
    async fn replace_bad_copy(
        &self,
        source: &Bucket,
        b: &BlockInfo,
    ) -> Result<CopyOutcome, ObjError> {
        let data = source.get_block(b).await?;
        warn!(bucket = %self.display, block = %b.id, "replacing a copy whose size or checksum is wrong");
        self.delete_block(&b.id).await?;
        let bytes = data.len() as u64;
        self.put_new(b.id.as_str(), data, b.checksum).await?;
        Ok(CopyOutcome::Copied { bytes })
    }

    // ---- plain objects (any key), for bucket-level sync ----

    /// Reads a whole object. A local-directory bucket's file is read straight into a buffer of
    /// its size (object_store would zero that buffer first: a memset of every block read).
    pub async fn get_object(&self, key: &str) -> Result<Bytes, ObjError> {
        let path = self.path(key)?;
        let r = self.store.get(&path).await.map_err(|e| self.err(key, e))?;
        let range = r.range.clone();
        match r.payload {
            GetResultPayload::File(file, local) => {
                let read = tokio::task::spawn_blocking(move || read_file_range(file, range)).await;
                let detail = match read {
                    Ok(Ok(data)) => return Ok(data),
                    Ok(Err(e)) => format!("reading {key} ({}): {e}", local.display()),
                    Err(e) => format!("reading {key}: {e}"),
                };
                Err(ObjError::Other {
                    bucket: self.display.to_string(),
                    detail,
                })
            }
            GetResultPayload::Stream(_) => {
                let r = object_store::GetResult {
                    payload: r.payload,
                    ..r
                };
                r.bytes().await.map_err(|e| self.err(key, e))
            }
        }
    }

    /// The size of an object, if it is there.
    pub async fn head_object(&self, key: &str) -> Result<Option<u64>, ObjError> {
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Creates an object that must not exist (an identical existing one is fine).
    pub async fn create_object(&self, key: &str, data: Bytes) -> Result<(), ObjError> {
        let sum = checksum(&data);
        self.put_new(key, data, sum).await
    }

    /// Replaces an object known to be wrong: delete, then create. Only for repairs.
    pub async fn replace_object(&self, key: &str, data: Bytes) -> Result<(), ObjError> {
        self.delete_object(key).await?;
        self.create_object(key, data).await
    }

    /// Deletes an object; one that is not there counts as deleted.
    pub async fn delete_object(&self, key: &str) -> Result<(), ObjError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            // Some S3 servers answer a bulk delete of a missing key with a body the client
            // cannot parse: what counts is whether the object is gone.
            Err(e) => match self.store.head(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                _ => Err(self.err(key, e)),
            },
        }
    }

    /// Every object under `under` (whole key components, e.g. `v7` matches `v7/...` but not
    /// `v70/...`), with keys relative to the bucket's prefix. Order is not specified.
    pub fn list(&self, under: Option<&str>) -> BoxStream<'_, Result<ObjectMeta, ObjError>> {
        let dir = match under.map(|u| u.trim_matches('/')).filter(|u| !u.is_empty()) {
            Some(u) => match self.path(u) {
                Ok(p) => p,
                Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
            },
            None => self.prefix.clone(),
        };
        let list_dir = (!dir.as_ref().is_empty()).then_some(dir);
        let key_of_err = under.unwrap_or("").to_owned();
        self.store
            .list(list_dir.as_ref())
            .map(move |r| match r {
                Ok(m) => {
                    let key = match m.location.prefix_match(&self.prefix) {
                        Some(parts) => parts
                            .map(|p| p.as_ref().to_owned())
                            .collect::<Vec<_>>()
                            .join("/"),
                        None => m.location.to_string(),
                    };
                    Ok(ObjectMeta {
                        key,
                        size: m.size,
                        last_modified: SystemTime::from(m.last_modified),
                    })
                }
                // A directory that does not exist yet holds nothing.
                Err(object_store::Error::NotFound { .. }) => Err(None),
                Err(e) => Err(Some(self.err(&key_of_err, e))),
            })
            .filter_map(|r| async move {
                match r {
                    Ok(m) => Some(Ok(m)),
                    Err(None) => None,
                    Err(Some(e)) => Some(Err(e)),
                }
            })
            .boxed()
    }

    fn path(&self, key: &str) -> Result<Path, ObjError> {
        let rel = Path::parse(key).map_err(|e| {
            ObjError::Invalid(format!(
                "key {key:?} is not valid in bucket {}: {e}",
                self.display
            ))
        })?;
        if rel.as_ref().is_empty() {
            return Err(ObjError::Invalid(format!(
                "empty key in bucket {}",
                self.display
            )));
        }
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }

    fn err(&self, key: &str, e: object_store::Error) -> ObjError {
        ObjError::from_store(&self.display, key, e)
    }
}

/// `range` of `file`, read into a buffer of that size (never zeroed first). A file shorter
/// than the range gives fewer bytes (the checksum check reports a truncated block).
fn read_file_range(mut file: std::fs::File, range: std::ops::Range<u64>) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let len = range.end - range.start;
    file.seek(SeekFrom::Start(range.start))?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

fn parse_path(prefix: &str, display: &str) -> Result<Path, ObjError> {
    Path::parse(prefix).map_err(|e| {
        ObjError::Invalid(format!(
            "bucket {display}: prefix {prefix:?} is not valid: {e}"
        ))
    })
}

/// An S3 client for `cfg`; also whether the server is trusted with conditional puts.
fn s3_store(
    cfg: &BucketConfig,
    bucket: &str,
) -> Result<(object_store::aws::AmazonS3, bool), Box<dyn std::error::Error>> {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    use object_store::{ClientOptions, RetryConfig};
    use std::time::Duration;

    let mut b = match &cfg.credentials {
        Some(c) => {
            let mut b = AmazonS3Builder::new()
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(t) = &c.session_token {
                b = b.with_token(t);
            }
            b
        }
        // No explicit credentials: the usual AWS environment (AWS_ACCESS_KEY_ID, web identity,
        // instance metadata) as the AWS SDKs would find it.
        None => AmazonS3Builder::from_env(),
    };
    b = b.with_bucket_name(bucket).with_region(
        cfg.options
            .get("region")
            .map_or("us-east-1", |s| s.as_str()),
    );
    let endpoint = cfg.options.get("endpoint");
    if let Some(ep) = endpoint {
        b = b.with_endpoint(ep);
    }
    let path_style = cfg.bool_option("path_style")?.unwrap_or(endpoint.is_some());
    b = b.with_virtual_hosted_style_request(!path_style);
    let allow_http = cfg
        .bool_option("allow_http")?
        .unwrap_or_else(|| endpoint.is_some_and(|e| e.starts_with("http://")));
    b = b.with_allow_http(allow_http);
    let conditional = cfg.bool_option("conditional_put")?.unwrap_or(true);
    if !conditional {
        b = b.with_conditional_put(S3ConditionalPut::Disabled);
    }
    let retry = RetryConfig {
        max_retries: cfg
            .options
            .get("max_retries")
            .map(|v| v.parse::<usize>())
            .transpose()?
            .unwrap_or(3),
        retry_timeout: cfg
            .duration_option("retry_timeout")?
            .unwrap_or(Duration::from_secs(30)),
        ..RetryConfig::default()
    };
    b = b.with_retry(retry);
    let client = ClientOptions::new()
        .with_connect_timeout(
            cfg.duration_option("connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
        )
        .with_timeout(
            cfg.duration_option("timeout")?
                .unwrap_or(Duration::from_secs(60)),
        )
        .with_allow_http(allow_http);
    b = b.with_client_options(client);
    Ok((b.build()?, conditional))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_are_unique_and_fanned_out() {
        let a = new_block_id(VolumeId(7));
        let b = new_block_id(VolumeId(7));
        assert_ne!(a, b);
        let parts: Vec<&str> = a.as_str().split('/').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "v7");
        assert_eq!(parts[1], &parts[2][..2]);
        assert_eq!(parts[2].len(), 32);
    }
}
