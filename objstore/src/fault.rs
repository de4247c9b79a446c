//! `FaultyStore`: an `ObjectStore` wrapper whose faults tests switch on and off while it is in
//! use: an outage (every request fails as a transport error would), refused credentials,
//! corrupted or truncated reads of chosen keys, an outage after N more requests, and delay.
//! Clones share their switches, so a test keeps one clone and hands another to the code under
//! test (`Bucket::from_store(Arc::new(faulty.clone()), ...)`).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// How reads of a key are damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    CorruptNext,
    CorruptAll,
}

#[derive(Debug, Default)]
struct Faults {
    unavailable: bool,
    denied: bool,
    /// Requests still answered before an outage starts.
    outage_after: Option<u64>,
    truncate_gets: bool,
    delay: Duration,
    /// Keyed by a suffix of the object's location.
    damage: HashMap<String, Damage>,
}

/// An `ObjectStore` with switchable faults. See the module docs.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<Mutex<Faults>>,
    requests: Arc<AtomicU64>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
            requests: Arc::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Faults) -> R) -> R {
        f(&mut self.faults.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every request fails as if the server could not be reached.
    pub fn set_unavailable(&self, on: bool) {
        self.with(|f| {
            f.unavailable = on;
            f.outage_after = None;
        });
    }

    /// After `n` more requests, every request fails as unavailable.
    pub fn set_unavailable_after(&self, n: u64) {
        self.with(|f| f.outage_after = Some(n));
    }

    /// Every request is refused as with wrong credentials.
    pub fn set_denied(&self, on: bool) {
        self.with(|f| f.denied = on);
    }

    /// The next read of the object whose location ends with `key` returns one flipped byte.
    pub fn corrupt_next_get(&self, key: &str) {
        self.with(|f| f.damage.insert(key.to_owned(), Damage::CorruptNext));
    }

    /// Every read of the object whose location ends with `key` returns one flipped byte.
    pub fn corrupt_all_gets(&self, key: &str) {
        self.with(|f| f.damage.insert(key.to_owned(), Damage::CorruptAll));
    }

    /// Reads return only the first half of each object (as a truncated object would).
    pub fn set_truncate_gets(&self, on: bool) {
        self.with(|f| f.truncate_gets = on);
    }

    /// Every request waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|f| f.delay = delay);
    }

    /// Switches every fault off.
    pub fn clear(&self) {
        self.with(|f| *f = Faults::default());
    }

    /// Requests seen so far (including failed ones).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Applies delay and request-level faults; called first by every operation.
    async fn gate(&self, location: &Path) -> Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (delay, unavailable, denied) = self.with(|f| {
            if let Some(n) = &mut f.outage_after {
                if *n == 0 {
                    f.unavailable = true;
                } else {
                    *n -= 1;
                }
            }
            (f.delay, f.unavailable, f.denied)
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if unavailable {
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: "injected outage: connection refused".into(),
            });
        }
        if denied {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "injected fault: access denied (wrong credentials)".into(),
            });
        }
        Ok(())
    }

    fn damage_of(&self, location: &Path) -> (Option<Damage>, bool) {
        self.with(|f| {
            let loc = location.as_ref();
            let key = f.damage.keys().find(|k| loc.ends_with(k.as_str())).cloned();
            let d = key.and_then(|k| {
                let d = f.damage.get(&k).copied();
                if d == Some(Damage::CorruptNext) {
                    f.damage.remove(&k);
                }
                d
            });
            (d, f.truncate_gets)
        })
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.gate(location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate(location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate(location).await?;
        let head = options.head;
        let r = self.inner.get_opts(location, options).await?;
        if head {
            return Ok(r);
        }
        let (damage, truncate) = self.damage_of(location);
        if damage.is_none() && !truncate {
            return Ok(r);
        }
        let GetResult {
            meta,
            range,
            attributes,
            payload,
        } = r;
        let whole = GetResult {
            meta: meta.clone(),
            range: range.clone(),
            attributes: attributes.clone(),
            payload,
        };
        let mut data = whole.bytes().await?.to_vec();
        if damage.is_some() && !data.is_empty() {
            let mid = data.len() / 2;
            data[mid] ^= 0x5a;
        }
        if truncate {
            data.truncate(data.len() / 2);
        }
        let len = data.len() as u64;
        let range: Range<u64> = range.start..range.start + len;
        let bytes = Bytes::from(data);
        Ok(GetResult {
            meta,
            range,
            attributes,
            payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        let inner = self.inner.clone();
        let gated = locations
            .then(move |r| {
                let this = this.clone();
                async move {
                    let p = r?;
                    this.gate(&p).await?;
                    Ok(p)
                }
            })
            .boxed();
        inner.delete_stream(gated)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move {
            let p = prefix.clone().unwrap_or_default();
            match this.gate(&p).await {
                Ok(()) => this.inner.list(prefix.as_ref()),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate(&prefix.cloned().unwrap_or_default()).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate(to).await?;
        self.inner.copy_opts(from, to, options).await
    }
}
