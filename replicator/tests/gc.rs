//! Garbage collection end to end: a source meta service served over gRPC, a bucket (a local
//! directory or a real S3 server), blocks written and committed as a client would, and
//! `gc::collect` reading the referenced blocks through `Admin.ListBlocks`. Time moves through
//! `GcOptions::now` instead of sleeps.
//!
//! Pinned: referenced blocks are never deleted; a dereferenced or leaked block is a candidate
//! at one run and deleted only by a run at least the grace period later; a run inside the grace
//! window or a dry run deletes nothing; an unreachable bucket or meta service is a clear error
//! and deletes nothing; keys outside `v<id>/` are never touched; a mirror volume is collected in
//! its own bucket only.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mirrorfs_api::client::{self, Authed};
use mirrorfs_api::meta::{
    Extent, ListBlocksRequest, ListVolumesRequest, StorageConfig, admin_client::AdminClient,
};
use mirrorfs_api::{Ino, VolumeId};
use mirrorfs_meta::Engine;
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Volume};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_objstore::{Bucket, BucketConfig, Credentials, ObjError, new_block_id};
use mirrorfs_replicator::gc::{
    self, GcError, GcOptions, GcPhase, GcSummary, Referenced, block_prefix, state_key,
};
use mirrorfs_testkit::S3Server;
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

const ADMIN: &str = "test-admin-token";
const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(60);
const OWNER: Owner = Owner {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

/// Runs a test body over a local-directory bucket and over a real S3 server.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name(super::Backend::Local).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name(super::Backend::S3).await
            }
        }
    )*};
}

both_backends!(
    referenced_blocks_stay_and_dereferenced_or_leaked_ones_go_one_grace_period_later,
    a_dry_run_deletes_nothing_and_records_nothing,
    an_unreachable_bucket_or_meta_service_is_a_clear_error_and_deletes_nothing,
    a_bucket_outage_during_the_sweep_is_finished_by_the_next_run,
    keys_outside_the_volume_prefix_are_never_touched,
    an_object_written_after_it_was_recorded_waits_another_grace_period,
    a_mirror_volume_is_collected_in_its_own_bucket_from_the_mirror_metadata,
);

/// A meta service on a loopback port, stopped when dropped.
struct Served {
    url: String,
    stop: watch::Sender<bool>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn serve(fs: FsMeta, mirror: Option<FollowerHandle>) -> Served {
    let state = MetaState {
        mirror,
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(mirrorfs_meta::service::run(
        listener,
        Arc::new(state),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Served { url, stop }
}

async fn admin(url: &str) -> AdminClient<Authed> {
    let channel = client::connect(url, Duration::from_secs(5)).await.unwrap();
    client::admin(channel, ADMIN).unwrap()
}

/// Bucket `which` as a volume's storage configuration.
fn storage(backend: Backend, s3: Option<&S3Server>, dir: &Path, which: &str) -> StorageConfig {
    match (backend, s3) {
        (Backend::S3, Some(s3)) => StorageConfig {
            bucket_url: format!("s3://{which}/blocks"),
            options: [("endpoint".to_string(), s3.endpoint.clone())].into(),
        },
        _ => StorageConfig {
            bucket_url: format!("file://{}", dir.join(which).display()),
            options: Default::default(),
        },
    }
}

/// A source cluster served over gRPC with a bucket, and the volume `data` in it.
struct Source {
    backend: Backend,
    s3: Option<S3Server>,
    dir: TempDir,
    fs: FsMeta,
    served: Served,
    bucket: Bucket,
    vol: Volume,
}

impl Source {
    async fn start(backend: Backend) -> Source {
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
        let fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        let served = serve(fs.clone(), None).await;
        let storage = storage(backend, s3.as_ref(), dir.path(), "source");
        let (_, token) = fs
            .create_volume(NewVolume {
                name: "data".into(),
                storage: storage.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let vol = fs.authenticate("data", &token).await.unwrap();
        let bucket = open(&storage, s3.as_ref());
        Source {
            backend,
            s3,
            dir,
            fs,
            served,
            bucket,
            vol,
        }
    }

    fn storage(&self, which: &str) -> StorageConfig {
        storage(self.backend, self.s3.as_ref(), self.dir.path(), which)
    }

    /// Writes a file of `n` blocks: blocks first, then extents, as a client does.
    async fn write_file(&self, name: &str, n: u64) -> Vec<String> {
        let f = self
            .fs
            .create(&self.vol, Ino::ROOT, name.as_bytes(), OWNER, false)
            .await
            .unwrap();
        let mut extents = Vec::new();
        for i in 0..n {
            extents.push(self.put_block(i * 100, format!("{name}{i}")).await);
        }
        let ids = extents.iter().map(|e| e.block_id.clone()).collect();
        self.fs
            .commit_extents(&self.vol, Ino(f.ino), extents, n * 100, None)
            .await
            .unwrap();
        ids
    }

    /// Uploads a 100-byte block and returns the extent at `offset` that would reference it.
    async fn put_block(&self, offset: u64, content: String) -> Extent {
        let data = Bytes::from(format!("{content:0>100}").into_bytes());
        let id = new_block_id(self.vol.id);
        let sum = self.bucket.put_block(&id, data).await.unwrap();
        Extent {
            offset,
            length: 100,
            block_id: id.as_str().into(),
            block_offset: 0,
            block_size: 100,
            checksum: sum.0.to_vec(),
        }
    }

    /// Overwrites the first 100 bytes of `name` with a new block; returns its id.
    async fn overwrite_start(&self, name: &str) -> String {
        let ino = self
            .fs
            .lookup(&self.vol, Ino::ROOT, name.as_bytes())
            .await
            .unwrap()
            .ino;
        let e = self.put_block(0, format!("new-{name}")).await;
        let id = e.block_id.clone();
        self.fs
            .commit_extents(&self.vol, Ino(ino), vec![e], 100, None)
            .await
            .unwrap();
        id
    }

    /// A block uploaded and never committed (a writer that died in between).
    async fn leak_block(&self) -> String {
        self.put_block(0, "leaked".into()).await.block_id
    }

    async fn gc(&self, now: SystemTime, dry_run: bool) -> GcSummary {
        self.gc_of(&self.bucket, now, dry_run).await.unwrap()
    }

    async fn gc_of(
        &self,
        bucket: &Bucket,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<GcSummary, GcError> {
        let mut c = admin(&self.served.url).await;
        gc::collect(
            bucket,
            self.vol.id,
            || async move { gc::list_referenced(&mut c, "data").await },
            GcOptions {
                grace: GRACE,
                dry_run,
                now,
                concurrency: 4,
            },
        )
        .await
    }
}

fn credentials(s3: Option<&S3Server>) -> Option<Credentials> {
    s3.map(|s3| Credentials::new(&s3.access_key, &s3.secret_key))
}

fn open(storage: &StorageConfig, s3: Option<&S3Server>) -> Bucket {
    let cfg = BucketConfig::from_storage(storage, credentials(s3)).unwrap();
    Bucket::open(&cfg).unwrap()
}

/// Every key under `v<id>/` and elsewhere in `bucket`.
async fn keys(bucket: &Bucket) -> HashSet<String> {
    use futures::StreamExt;
    let mut out = HashSet::new();
    let mut s = bucket.list(None);
    while let Some(m) = s.next().await {
        out.insert(m.unwrap().key);
    }
    out
}

fn set(ids: &[&String]) -> HashSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

async fn referenced_blocks_stay_and_dereferenced_or_leaked_ones_go_one_grace_period_later(
    backend: Backend,
) {
    let s = Source::start(backend).await;
    let a = s.write_file("a", 3).await;
    let b = s.write_file("b", 2).await;
    let leaked = s.leak_block().await;
    let t = SystemTime::now();

    // First run: the leaked block is the one candidate; the clock starts.
    let r1 = s.gc(t, false).await;
    assert_eq!(r1.phase, GcPhase::Started, "{r1:?}");
    assert_eq!((r1.scanned_objects, r1.scanned_bytes), (6, 600), "{r1:?}");
    assert_eq!((r1.referenced, r1.referenced_missing), (5, 0), "{r1:?}");
    assert_eq!((r1.candidates, r1.candidates_bytes), (1, 100), "{r1:?}");
    assert_eq!(r1.deleted, 0);
    assert!(r1.next_deletion_at.unwrap() >= t + GRACE, "{r1:?}");
    assert!(keys(&s.bucket).await.contains(&state_key(s.vol.id)));

    // b is unlinked and a's first block overwritten: three more unreferenced blocks.
    s.fs.unlink(&s.vol, Ino::ROOT, b"b").await.unwrap();
    let a_new = s.overwrite_start("a").await;
    let referenced = set(&[&a_new, &a[1], &a[2]]);

    // Inside the grace window nothing goes, and the clock is not restarted.
    let r2 = s.gc(t + GRACE / 2, false).await;
    assert_eq!((r2.phase, r2.deleted), (GcPhase::Waiting, 0), "{r2:?}");
    assert_eq!(r2.candidates, 4, "{r2:?}");
    assert_eq!(r2.referenced, 3, "{r2:?}");
    let all: HashSet<String> = referenced
        .iter()
        .chain(&a[..1])
        .chain(&b)
        .chain([&leaked])
        .cloned()
        .collect();
    assert!(keys(&s.bucket).await.is_superset(&all));

    // One grace period after the first run: only what that run recorded goes (the leaked
    // block); the blocks dereferenced since wait for their own grace period.
    let r3 = s.gc(t + GRACE + Duration::from_secs(5), false).await;
    assert_eq!(r3.phase, GcPhase::Swept, "{r3:?}");
    assert_eq!((r3.deleted, r3.deleted_bytes), (1, 100), "{r3:?}");
    assert_eq!(r3.candidates, 3, "{r3:?}");
    let left = keys(&s.bucket).await;
    assert!(!left.contains(&leaked));
    assert!(left.contains(&a[0]) && left.contains(&b[0]) && left.contains(&b[1]));

    // Another grace period: the dereferenced blocks go; the referenced ones never do.
    let r4 = s.gc(t + 2 * GRACE + Duration::from_secs(30), false).await;
    assert_eq!((r4.phase, r4.deleted), (GcPhase::Swept, 3), "{r4:?}");
    assert_eq!((r4.candidates, r4.next_deletion_at), (0, None), "{r4:?}");
    let mut want = referenced.clone();
    want.insert(state_key(s.vol.id));
    assert_eq!(keys(&s.bucket).await, want);

    // Much later, still nothing referenced goes.
    let r5 = s.gc(t + 10 * GRACE, false).await;
    assert_eq!((r5.deleted, r5.candidates), (0, 0), "{r5:?}");
    assert_eq!(keys(&s.bucket).await, want);
}

async fn a_dry_run_deletes_nothing_and_records_nothing(backend: Backend) {
    let s = Source::start(backend).await;
    s.write_file("a", 2).await;
    let leaked = s.leak_block().await;
    let t = SystemTime::now();
    let state = state_key(s.vol.id);

    let d1 = s.gc(t, true).await;
    assert!(d1.dry_run);
    assert_eq!(
        (d1.phase, d1.candidates, d1.deleted),
        (GcPhase::Started, 1, 0)
    );
    assert!(
        !keys(&s.bucket).await.contains(&state),
        "a dry run wrote state"
    );

    s.gc(t, false).await;
    let recorded = s.bucket.get_object(&state).await.unwrap();
    let d2 = s.gc(t + 2 * GRACE, true).await;
    assert_eq!(
        (d2.phase, d2.deleted, d2.deleted_bytes),
        (GcPhase::Swept, 1, 100),
        "{d2:?}"
    );
    assert!(keys(&s.bucket).await.contains(&leaked), "a dry run deleted");
    assert_eq!(s.bucket.get_object(&state).await.unwrap(), recorded);

    let r = s.gc(t + 2 * GRACE, false).await;
    assert_eq!(r.deleted, 1);
    assert!(!keys(&s.bucket).await.contains(&leaked));
}

async fn an_unreachable_bucket_or_meta_service_is_a_clear_error_and_deletes_nothing(
    backend: Backend,
) {
    let s = Source::start(backend).await;
    s.write_file("a", 2).await;
    let leaked = s.leak_block().await;
    let t = SystemTime::now();
    s.gc(t, false).await;
    let later = t + 2 * GRACE;

    // The bucket cannot be reached: an error naming it, nothing deleted.
    let (unreachable, display) = match backend {
        Backend::S3 => {
            // Nothing listens on the port of a listener just closed.
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let cfg = BucketConfig::new("s3://source/blocks")
                .with_option("endpoint", format!("http://127.0.0.1:{port}"))
                .with_option("max_retries", "0")
                .with_option("retry_timeout", "1s")
                .with_credentials(credentials(s.s3.as_ref()));
            (Bucket::open(&cfg).unwrap(), cfg.display())
        }
        Backend::Local => {
            let (b, faults) = s.bucket.with_faults();
            faults.set_unavailable(true);
            let d = b.display().to_owned();
            (b, d)
        }
    };
    let e = s.gc_of(&unreachable, later, false).await.unwrap_err();
    assert!(
        matches!(
            &e,
            GcError::Bucket {
                error: ObjError::Unavailable { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&display) && msg.contains("unavailable"),
        "{msg}"
    );

    // The meta service cannot answer: nothing deleted although the state is old enough.
    let mut gone = admin(&s.served.url).await;
    let e = gc::collect(
        &s.bucket,
        s.vol.id,
        || async move { gc::list_referenced(&mut gone, "no-such-volume").await },
        GcOptions {
            grace: GRACE,
            now: later,
            ..GcOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, GcError::Meta { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-volume"), "{e}");
    let mut c = admin(&s.served.url).await;
    let e = gc::collect(
        &s.bucket,
        VolumeId(s.vol.id.0 + 1),
        || async move { gc::list_referenced(&mut c, "data").await },
        GcOptions {
            grace: GRACE,
            now: later,
            ..GcOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, GcError::WrongVolume { .. }), "{e:?}");
    assert!(keys(&s.bucket).await.contains(&leaked));

    // Reachable again: the next run collects.
    assert_eq!(s.gc(later, false).await.deleted, 1);
}

async fn a_bucket_outage_during_the_sweep_is_finished_by_the_next_run(backend: Backend) {
    let s = Source::start(backend).await;
    let kept = s.write_file("a", 2).await;
    let mut leaked = Vec::new();
    for _ in 0..8 {
        leaked.push(s.leak_block().await);
    }
    let t = SystemTime::now();
    s.gc(t, false).await;
    // The bucket goes away a few requests into the sweep. How many requests come before the
    // first delete depends on the backend (listing pages, state reads), so the outage starts
    // one request later each try until a run is cut after some deletes and before the last.
    let (faulty, faults) = s.bucket.with_faults();
    let mut cut = None;
    for budget in 1..200 {
        faults.set_unavailable_after(budget);
        let e = s.gc_of(&faulty, t + 2 * GRACE, false).await.unwrap_err();
        assert!(matches!(e, GcError::Bucket { .. }), "{e:?}");
        faults.clear();
        let left = keys(&s.bucket).await;
        let remaining = leaked.iter().filter(|k| left.contains(*k)).count();
        assert!(
            remaining > 0,
            "an outage after {budget} requests still deleted every block"
        );
        if remaining < leaked.len() {
            cut = Some(remaining);
            break;
        }
    }
    assert!(cut.is_some(), "no outage cut the sweep midway");
    faults.clear();
    let r = s.gc(t + 2 * GRACE, false).await;
    assert_eq!(r.phase, GcPhase::Swept, "{r:?}");
    let left = keys(&s.bucket).await;
    assert!(leaked.iter().all(|k| !left.contains(k)), "{left:?}");
    assert!(kept.iter().all(|k| left.contains(k)), "{left:?}");
}

async fn keys_outside_the_volume_prefix_are_never_touched(backend: Backend) {
    let s = Source::start(backend).await;
    s.write_file("a", 1).await;
    let leaked = s.leak_block().await;
    // Another volume's blocks (one a prefix look-alike: v10 when collecting v1), another
    // volume's state, and unrelated objects.
    let id = s.vol.id.0;
    let outside = [
        format!("v{}/00/{}", id + 1, "0".repeat(32)),
        format!("v{id}0/ab/{}", "1".repeat(32)),
        format!("v{id}x"),
        format!("_mirrorfs/gc/v{}.json", id + 1),
        "other/file".to_string(),
    ];
    for k in &outside {
        s.bucket
            .create_object(k, Bytes::from_static(b"not a block of this volume"))
            .await
            .unwrap();
    }
    let t = SystemTime::now();
    let r1 = s.gc(t, false).await;
    assert_eq!((r1.scanned_objects, r1.candidates), (2, 1), "{r1:?}");
    let r2 = s.gc(t + 2 * GRACE, false).await;
    assert_eq!(r2.deleted, 1, "{r2:?}");
    let left = keys(&s.bucket).await;
    assert!(!left.contains(&leaked));
    for k in &outside {
        assert!(left.contains(k), "{k} was touched");
        assert!(!k.starts_with(&block_prefix(s.vol.id)));
    }
}

async fn an_object_written_after_it_was_recorded_waits_another_grace_period(backend: Backend) {
    let s = Source::start(backend).await;
    let leaked = s.leak_block().await;
    // Runs an hour in the past see an object modified after they recorded it (as a late
    // replication copy or a repair would be): it is not deleted on their word.
    let past = SystemTime::now() - Duration::from_secs(3600);
    let r1 = s.gc(past, false).await;
    assert_eq!(r1.candidates, 1);
    let r2 = s.gc(past + 2 * GRACE, false).await;
    assert_eq!(
        (r2.phase, r2.deleted, r2.candidates),
        (GcPhase::Swept, 0, 1),
        "{r2:?}"
    );
    assert!(keys(&s.bucket).await.contains(&leaked));
    // Recorded again after it was written, it goes one grace period later.
    let t = SystemTime::now();
    s.gc(t, false).await;
    let r3 = s.gc(t + 2 * GRACE, false).await;
    assert_eq!(r3.deleted, 1, "{r3:?}");
}

async fn a_mirror_volume_is_collected_in_its_own_bucket_from_the_mirror_metadata(backend: Backend) {
    let s = Source::start(backend).await;
    let a = s.write_file("a", 2).await;
    let b = s.write_file("b", 2).await;

    // A mirror cluster following the source (no replication workers: blocks are copied into
    // the mirror bucket by hand below).
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let mut config = FollowerConfig::new(&s.served.url, ADMIN);
    config.backoff_min = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(100);
    let (_follower_stop, rx) = watch::channel(false);
    let follower = follower::start(engine.clone(), config, rx).await.unwrap();
    let mirror_fs = FsMeta::open_mirror(engine).await.unwrap();
    let mirror = serve(mirror_fs.clone(), Some(follower)).await;
    let mirror_storage = s.storage("mirror");
    let deadline = Instant::now() + WAIT;
    for (name, storage) in [
        ("own", mirror_storage.clone()),
        ("shared", StorageConfig::default()),
    ] {
        loop {
            let created = mirror_fs
                .create_volume(NewVolume {
                    name: name.into(),
                    storage: storage.clone(),
                    source_volume: "data".into(),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "mirror volume {name}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The mirror volume sharing the source bucket is refused; the other one names its own.
    let mut c = admin(&mirror.url).await;
    let volumes = c
        .list_volumes(ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    let info = |n: &str| volumes.iter().find(|v| v.name == n).unwrap().clone();
    let e = gc::gc_storage(&info("shared")).unwrap_err().to_string();
    assert!(e.contains("source region"), "{e}");
    assert_eq!(gc::gc_storage(&info("own")).unwrap(), mirror_storage);
    assert_eq!(info("own").id, s.vol.id.0);
    let mirror_bucket = open(&mirror_storage, s.s3.as_ref());
    let source_before = keys(&s.bucket).await;
    for id in a.iter().chain(&b) {
        let data = s.bucket.get_object(id).await.unwrap();
        mirror_bucket.create_object(id, data).await.unwrap();
    }

    // b is unlinked in the source; once the mirror has applied that, its ListBlocks leaves b
    // out.
    s.fs.unlink(&s.vol, Ino::ROOT, b"b").await.unwrap();
    let head = s.fs.engine().head().await.unwrap().revision.0;
    let deadline = Instant::now() + WAIT;
    loop {
        let page = c
            .list_blocks(ListBlocksRequest {
                volume: "own".into(),
                after: Vec::new(),
                limit: 0,
            })
            .await;
        match page {
            Ok(p) if p.get_ref().revision >= head => {
                let p = p.into_inner();
                assert_eq!(p.volume_id, s.vol.id.0);
                assert_eq!(
                    p.block_ids.into_iter().collect::<HashSet<_>>(),
                    set(&[&a[0], &a[1]])
                );
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the mirror never applied revision {head}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = |now| {
        let mut c = c.clone();
        let bucket = mirror_bucket.clone();
        async move {
            gc::collect(
                &bucket,
                s.vol.id,
                || async move { gc::list_referenced(&mut c, "own").await },
                GcOptions {
                    grace: GRACE,
                    dry_run: false,
                    now,
                    concurrency: 4,
                },
            )
            .await
            .unwrap()
        }
    };
    let t = SystemTime::now();
    let r1 = run(t).await;
    assert_eq!(
        (r1.phase, r1.candidates, r1.deleted),
        (GcPhase::Started, 2, 0),
        "{r1:?}"
    );
    let r2 = run(t + 2 * GRACE).await;
    assert_eq!(r2.deleted, 2, "{r2:?}");
    let left = keys(&mirror_bucket).await;
    assert!(left.contains(&a[0]) && left.contains(&a[1]));
    assert!(!left.contains(&b[0]) && !left.contains(&b[1]));
    // The source bucket is the source region's to collect: untouched.
    assert_eq!(keys(&s.bucket).await, source_before);
}

#[tokio::test]
async fn a_prepared_referenced_set_for_another_volume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = open(&storage(Backend::Local, None, dir.path(), "b"), None);
    let e = gc::collect(
        &bucket,
        VolumeId(1),
        || async {
            Ok(Referenced {
                volume_id: VolumeId(2),
                ..Default::default()
            })
        },
        GcOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            GcError::WrongVolume {
                expected: 1,
                actual: 2
            }
        ),
        "{e:?}"
    );
}
