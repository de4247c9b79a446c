//! Replication end to end: a source meta service and bucket, a mirror meta service that follows
//! it, a mirror bucket, and workers talking to the mirror over gRPC. Blocks written in the
//! source reach the mirror bucket verified; a full sync covers blocks written before a mirror
//! volume got its own bucket; a killed worker's tasks run again; a failed copy is retried; a
//! reader's repair replaces a corrupt copy; tokens reach only their volume.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirrorfs_api::Ino;
use mirrorfs_api::client::{self, Authed};
use mirrorfs_api::meta::{
    CompleteRequest, Extent, LeaseRequest, ReplicationStatus, StorageConfig, TaskResult, VolumeRef,
    replication_client::ReplicationClient,
};
use mirrorfs_meta::Engine;
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Volume};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_objstore::{
    BlockInfo, Bucket, BucketConfig, Credentials, ObjMetrics, ReadSource, RegionReader,
    new_block_id,
};
use mirrorfs_replicator::repair::QueueRepairs;
use mirrorfs_replicator::worker::{Worker, WorkerConfig};
use mirrorfs_testkit::S3Server;
use prometheus_client::registry::Registry;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

const ADMIN: &str = "test-admin-token";
const WAIT: Duration = Duration::from_secs(30);
const OWNER: Owner = Owner {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

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

async fn serve(state: MetaState) -> Served {
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

fn state(fs: FsMeta, mirror: Option<FollowerHandle>) -> MetaState {
    MetaState {
        mirror,
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    }
}

/// A source region and a mirror region on this machine, with local-directory buckets.
struct Regions {
    backend: Backend,
    s3: Option<S3Server>,
    dir: TempDir,
    source_fs: FsMeta,
    source: Served,
    source_bucket: Bucket,
    mirror_engine: Arc<dyn Engine>,
    mirror_fs: FsMeta,
    follower: FollowerHandle,
    follower_stop: watch::Sender<bool>,
    mirror: Served,
    mirror_bucket: Bucket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

/// Bucket `which` ("source" or "mirror") as a volume's storage configuration.
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

fn credentials(s3: Option<&S3Server>) -> Option<Credentials> {
    s3.map(|s3| Credentials::new(&s3.access_key, &s3.secret_key))
}

/// Runs a test body over a local-directory backend and over a real S3 server.
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
    blocks_written_in_the_source_reach_the_mirror_bucket_verified,
    a_full_sync_copies_blocks_written_before_the_mirror_volume_had_its_bucket,
    a_killed_workers_tasks_run_again_after_the_lease_expires,
    a_failed_copy_is_retried_with_its_error_until_it_succeeds,
    a_reader_falls_back_and_its_repair_replaces_a_corrupt_copy,
    a_volume_token_reaches_only_its_volumes_tasks,
    queued_tasks_survive_a_restart_of_the_mirror_and_deleting_the_mirror_volume_drops_them,
    a_periodic_reconciliation_restores_blocks_missing_from_either_bucket,
);

impl Regions {
    async fn start(backend: Backend) -> Regions {
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(backend, dir, Arc::new(MemoryEngine::new()), None).await
    }

    async fn start_full(
        backend: Backend,
        dir: TempDir,
        mirror_engine: Arc<dyn Engine>,
        reconcile_every: Option<Duration>,
    ) -> Regions {
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
        let source = serve(state(source_fs.clone(), None)).await;
        let (follower, follower_stop) =
            follow_with(&source.url, mirror_engine.clone(), reconcile_every).await;
        let mirror_fs = FsMeta::open_mirror(mirror_engine.clone()).await.unwrap();
        let mirror = serve(state(mirror_fs.clone(), Some(follower.clone()))).await;
        let open = |d: &str| {
            let storage = storage(backend, s3.as_ref(), dir.path(), d);
            let cfg = BucketConfig::from_storage(&storage, credentials(s3.as_ref())).unwrap();
            Bucket::open(&cfg).unwrap()
        };
        Regions {
            source_bucket: open("source"),
            mirror_bucket: open("mirror"),
            backend,
            s3,
            dir,
            source_fs,
            source,
            mirror_engine,
            mirror_fs,
            follower,
            follower_stop,
            mirror,
        }
    }

    fn storage(&self, which: &str) -> StorageConfig {
        storage(self.backend, self.s3.as_ref(), self.dir.path(), which)
    }

    /// The file on disk that holds block `id` of bucket `which`.
    fn block_file(&self, which: &str, id: &str) -> PathBuf {
        match &self.s3 {
            None => self.dir.path().join(which).join(id),
            Some(s3) => s3.object_path(which, &format!("blocks/{id}")),
        }
    }

    /// Creates a source volume whose blocks live in the source bucket.
    async fn source_volume(&self, name: &str) -> Volume {
        let (_, token) = self
            .source_fs
            .create_volume(NewVolume {
                name: name.into(),
                storage: self.storage("source"),
                ..Default::default()
            })
            .await
            .unwrap();
        self.source_fs.authenticate(name, &token).await.unwrap()
    }

    /// Creates a mirror volume exposing `source` (with the mirror bucket if `own_bucket`) once
    /// the mirror has the source volume; returns its token.
    async fn mirror_volume(&self, name: &str, source: &str, own_bucket: bool) -> String {
        let deadline = Instant::now() + WAIT;
        let storage = if own_bucket {
            self.storage("mirror")
        } else {
            StorageConfig::default()
        };
        loop {
            let created = self
                .mirror_fs
                .create_volume(NewVolume {
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

    /// Writes a file of `n` blocks of `size` bytes into the source: blocks first, then extents.
    async fn write_file(&self, vol: &Volume, name: &str, n: u64, size: usize) -> Vec<BlockInfo> {
        let f = self
            .source_fs
            .create(vol, Ino::ROOT, name.as_bytes(), OWNER, false)
            .await
            .unwrap();
        let mut blocks = Vec::new();
        let mut extents = Vec::new();
        for i in 0..n {
            let data: Vec<u8> = (0..size)
                .map(|j| (j as u64 * 31 + i * 7 + f.ino) as u8)
                .collect();
            let id = new_block_id(vol.id);
            let checksum = self
                .source_bucket
                .put_block(&id, Bytes::from(data.clone()))
                .await
                .unwrap();
            extents.push(Extent {
                offset: i * size as u64,
                length: size as u64,
                block_id: id.as_str().into(),
                block_offset: 0,
                block_size: size as u64,
                checksum: checksum.0.to_vec(),
            });
            blocks.push(BlockInfo::of(id, &data));
        }
        self.source_fs
            .commit_extents(vol, Ino(f.ino), extents, n * size as u64, None)
            .await
            .unwrap();
        blocks
    }

    async fn client(&self, token: &str) -> ReplicationClient<Authed> {
        let channel = client::connect(&self.mirror.url, Duration::from_secs(5))
            .await
            .unwrap();
        client::replication(channel, token).unwrap()
    }

    /// Starts a worker over gRPC; it stops when the returned sender is dropped or set.
    async fn worker(
        &self,
        mut config: WorkerConfig,
        token: &str,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        config.source_credentials = credentials(self.s3.as_ref());
        config.mirror_credentials = credentials(self.s3.as_ref());
        let worker = Worker::new(self.client(token).await, config);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { worker.run(rx).await.unwrap() });
        (stop, task)
    }

    async fn status(&self) -> ReplicationStatus {
        self.follower.replication().status().await.unwrap()
    }

    /// Waits until every block is in the mirror bucket with the right contents.
    async fn wait_replicated(&self, blocks: &[BlockInfo]) {
        let deadline = Instant::now() + WAIT;
        for b in blocks {
            loop {
                match self.mirror_bucket.get_block(b).await {
                    Ok(_) => break,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "block {} never reached the mirror bucket ({e}); queue: {:?}",
                        b.id,
                        self.status().await
                    ),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits until the queue is empty.
    async fn wait_drained(&self) -> ReplicationStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.status().await;
            if st.ready == 0 && st.leased == 0 && st.full_syncs == 0 && st.enqueuer_lag <= 2 {
                return st;
            }
            assert!(Instant::now() < deadline, "the queue never drained: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn follow(url: &str, engine: Arc<dyn Engine>) -> (FollowerHandle, watch::Sender<bool>) {
    follow_with(url, engine, None).await
}

async fn follow_with(
    url: &str,
    engine: Arc<dyn Engine>,
    reconcile_every: Option<Duration>,
) -> (FollowerHandle, watch::Sender<bool>) {
    let mut config = FollowerConfig::new(url, ADMIN);
    config.replication.reconcile_every = reconcile_every;
    config.backoff_min = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(100);
    let (stop, rx) = watch::channel(false);
    (follower::start(engine, config, rx).await.unwrap(), stop)
}

fn worker_config(name: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(name);
    c.concurrency = 4;
    c.wait = Duration::from_millis(500);
    c
}

fn vref(name: &str) -> Option<VolumeRef> {
    Some(VolumeRef {
        volume: name.into(),
    })
}

/// Leases with a long poll until at least one task comes back.
async fn lease_some(
    c: &mut ReplicationClient<Authed>,
    volume: Option<VolumeRef>,
    lease_seconds: u32,
) -> Vec<mirrorfs_api::meta::LeasedTask> {
    let deadline = Instant::now() + WAIT;
    loop {
        let tasks = c
            .lease(LeaseRequest {
                volume: volume.clone(),
                worker: "test".into(),
                max_tasks: 100,
                lease_seconds,
                wait_ms: 500,
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if !tasks.is_empty() {
            return tasks;
        }
        assert!(Instant::now() < deadline, "no task was ever leased");
    }
}

async fn blocks_written_in_the_source_reach_the_mirror_bucket_verified(backend: Backend) {
    let r = Regions::start(backend).await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    let (_stop, _task) = r.worker(worker_config("w1"), ADMIN).await;
    let mut blocks = r.write_file(&vol, "a", 12, 64 << 10).await;
    blocks.extend(r.write_file(&vol, "b", 3, 1000).await);
    r.wait_replicated(&blocks).await;
    let st = r.wait_drained().await;
    assert_eq!(st.replicated_volumes, vec!["data-b".to_string()]);
    assert!(
        st.completed_total >= blocks.len() as u64,
        "every copy is acknowledged: {st:?}"
    );
    assert_eq!(st.bytes_copied_total, 12 * (64 << 10) + 3 * 1000);
    assert_eq!(st.failed_total, 0);
}

async fn a_full_sync_copies_blocks_written_before_the_mirror_volume_had_its_bucket(
    backend: Backend,
) {
    let r = Regions::start(backend).await;
    let vol = r.source_volume("data").await;
    let blocks = r.write_file(&vol, "old", 20, 4096).await;
    // First without a bucket of its own: nothing is queued, and repairs are refused.
    r.mirror_volume("shared", "data", false).await;
    let st = r.status().await;
    assert!(st.replicated_volumes.is_empty(), "{st:?}");
    let mut admin = r.client(ADMIN).await;
    let refused = admin
        .repair(mirrorfs_api::meta::RepairRequest {
            volume: None,
            volume_id: vol.id.0,
            block_id: blocks[0].id.as_str().into(),
            block_size: blocks[0].size,
            checksum: blocks[0].checksum.0.to_vec(),
            reason: "missing".into(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("nothing is replicated"),
        "{refused:?}"
    );
    // Then a mirror volume with its own bucket: every existing block is queued and copied.
    r.mirror_volume("own", "data", true).await;
    let (_stop, _task) = r.worker(worker_config("w1"), ADMIN).await;
    r.wait_replicated(&blocks).await;
    r.wait_drained().await;
}

async fn a_killed_workers_tasks_run_again_after_the_lease_expires(backend: Backend) {
    let r = Regions::start(backend).await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    let blocks = r.write_file(&vol, "f", 6, 2048).await;
    // A worker leases tasks for one second, copies one block, and dies before acknowledging.
    let mut c = r.client(ADMIN).await;
    let mut taken = Vec::new();
    while taken.len() < blocks.len() {
        taken.extend(lease_some(&mut c, None, 1).await);
    }
    let first = blocks
        .iter()
        .find(|b| b.id.as_str() == taken[0].block_id)
        .unwrap();
    r.mirror_bucket
        .copy_block_from(&r.source_bucket, first)
        .await
        .unwrap();
    let st = r.status().await;
    assert_eq!((st.ready, st.leased), (0, blocks.len() as u64), "{st:?}");
    // Its leases expire; a new worker copies everything (the copied block is found in place).
    let (_stop, _task) = r.worker(worker_config("w2"), ADMIN).await;
    r.wait_replicated(&blocks).await;
    r.wait_drained().await;
    // The dead worker's late acknowledgement changes nothing.
    let late = c
        .complete(CompleteRequest {
            volume: None,
            worker: "test".into(),
            results: vec![TaskResult {
                volume_id: taken[0].volume_id,
                block_id: taken[0].block_id.clone(),
                lease: taken[0].lease,
                ok: true,
                error: String::new(),
                bytes_copied: 1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((late.acknowledged, late.lease_lost), (0, 1));
}

async fn a_failed_copy_is_retried_with_its_error_until_it_succeeds(backend: Backend) {
    let r = Regions::start(backend).await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    // An extent whose block has not reached the source bucket: the copy fails.
    let data = Bytes::from(vec![5u8; 3000]);
    let id = new_block_id(vol.id);
    let block = BlockInfo::of(id.clone(), &data);
    let f = r
        .source_fs
        .create(&vol, Ino::ROOT, b"late", OWNER, false)
        .await
        .unwrap();
    r.source_fs
        .commit_extents(
            &vol,
            Ino(f.ino),
            vec![Extent {
                offset: 0,
                length: 3000,
                block_id: id.as_str().into(),
                block_offset: 0,
                block_size: 3000,
                checksum: block.checksum.0.to_vec(),
            }],
            3000,
            None,
        )
        .await
        .unwrap();
    let (_stop, _task) = r.worker(worker_config("w1"), ADMIN).await;
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = r.status().await;
        if st.retrying == 1 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the failed copy was never queued for a retry: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(st.failed_total >= 1, "{st:?}");
    assert!(
        st.last_error.contains(id.as_str()),
        "the error names the block: {st:?}"
    );
    // The block arrives; the retry (due one second after the failure) copies it.
    r.source_bucket.put_block(&id, data).await.unwrap();
    r.wait_replicated(&[block]).await;
    r.wait_drained().await;
}

async fn a_reader_falls_back_and_its_repair_replaces_a_corrupt_copy(backend: Backend) {
    let r = Regions::start(backend).await;
    let vol = r.source_volume("data").await;
    let token = r.mirror_volume("data-b", "data", true).await;
    let (_stop, _task) = r.worker(worker_config("w1"), ADMIN).await;
    let blocks = r.write_file(&vol, "f", 2, 8192).await;
    r.wait_replicated(&blocks).await;
    r.wait_drained().await;
    // Damage the mirror copy on disk.
    let path = r.block_file("mirror", blocks[0].id.as_str());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // A reader with the mirror volume's token reads the right bytes from the source and asks
    // for a repair, which the worker carries out first.
    let repairs = QueueRepairs::new(r.client(&token).await, "data-b", vol.id.0);
    let reader = RegionReader::new(
        r.source_bucket.clone(),
        Some(r.mirror_bucket.clone()),
        Arc::new(repairs),
        ObjMetrics::default(),
    );
    let (data, from) = reader.read(&blocks[0]).await.unwrap();
    assert_eq!(from, ReadSource::Fallback);
    assert_eq!(mirrorfs_objstore::checksum(&data), blocks[0].checksum);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((_, ReadSource::Local)) = reader.read(&blocks[0]).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt copy was never repaired: {:?}",
            r.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_volume_token_reaches_only_its_volumes_tasks(backend: Backend) {
    let r = Regions::start(backend).await;
    let a = r.source_volume("a").await;
    let b = r.source_volume("b").await;
    let token_a = r.mirror_volume("a-m", "a", true).await;
    r.mirror_volume("b-m", "b", true).await;
    r.write_file(&a, "fa", 2, 100).await;
    let blocks_b = r.write_file(&b, "fb", 2, 100).await;
    let mut ca = r.client(&token_a).await;
    let tasks = lease_some(&mut ca, vref("a-m"), 30).await;
    assert!(tasks.iter().all(|t| t.volume_id == a.id.0), "{tasks:?}");
    // Completing another volume's task with this token is refused.
    let denied = ca
        .complete(CompleteRequest {
            volume: vref("a-m"),
            worker: "test".into(),
            results: vec![TaskResult {
                volume_id: b.id.0,
                block_id: blocks_b[0].id.as_str().into(),
                lease: 1,
                ok: true,
                error: String::new(),
                bytes_copied: 0,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // The token does not open the whole queue, and a source cluster has no queue at all.
    let whole = ca
        .lease(LeaseRequest {
            volume: None,
            worker: "test".into(),
            max_tasks: 1,
            lease_seconds: 1,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(whole.code(), tonic::Code::Unauthenticated, "{whole:?}");
    let channel = client::connect(&r.source.url, Duration::from_secs(5))
        .await
        .unwrap();
    let on_source = client::replication(channel, ADMIN)
        .unwrap()
        .targets(mirrorfs_api::meta::TargetsRequest { volume: None })
        .await
        .unwrap_err();
    assert!(
        on_source.message().contains("this cluster is a source"),
        "{on_source:?}"
    );
}

async fn queued_tasks_survive_a_restart_of_the_mirror_and_deleting_the_mirror_volume_drops_them(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mirror.redb");
    let engine: Arc<dyn Engine> = Arc::new(EmbeddedEngine::open(&db).unwrap());
    let r = Regions::start_full(backend, dir, engine, None).await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    let blocks = r.write_file(&vol, "f", 5, 512).await;
    let deadline = Instant::now() + WAIT;
    while r.status().await.ready < blocks.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "tasks never queued: {:?}",
            r.status().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restart the mirror cluster's follower and queue on the same database.
    let Regions {
        backend,
        s3,
        dir,
        follower,
        follower_stop,
        mirror,
        mirror_engine,
        source,
        source_fs,
        source_bucket,
        mirror_bucket,
        ..
    } = r;
    drop(mirror);
    follower_stop.send_replace(true);
    follower.stopped().await;
    let (follower, follower_stop) = follow(&source.url, mirror_engine.clone()).await;
    let mirror_fs = FsMeta::open_mirror(mirror_engine.clone()).await.unwrap();
    let mirror = serve(state(mirror_fs.clone(), Some(follower.clone()))).await;
    let r = Regions {
        backend,
        s3,
        dir,
        source_fs,
        source,
        source_bucket,
        mirror_engine,
        mirror_fs,
        follower,
        follower_stop,
        mirror,
        mirror_bucket,
    };
    let st = r.status().await;
    assert_eq!(
        st.ready,
        blocks.len() as u64,
        "the queue survived the restart: {st:?}"
    );
    // Deleting the only mirror volume with its own bucket drops the volume's queue.
    r.mirror_fs.delete_volume("data-b").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let st = r.status().await;
        if st.ready == 0 && st.replicated_volumes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue of a volume no longer replicated stayed: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_periodic_reconciliation_restores_blocks_missing_from_either_bucket(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let r = Regions::start_full(
        backend,
        dir,
        Arc::new(MemoryEngine::new()),
        Some(Duration::from_millis(500)),
    )
    .await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    let (_stop, _task) = r.worker(worker_config("w1"), ADMIN).await;
    let blocks = r.write_file(&vol, "f", 3, 4096).await;
    r.wait_replicated(&blocks).await;
    // Drift: one block vanishes from the mirror bucket, another from the source bucket.
    r.mirror_bucket.delete_block(&blocks[0].id).await.unwrap();
    r.source_bucket.delete_block(&blocks[1].id).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mirror_ok = r.mirror_bucket.get_block(&blocks[0]).await.is_ok();
        let source_ok = r.source_bucket.get_block(&blocks[1]).await.is_ok();
        if mirror_ok && source_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reconciliation did not restore the blocks (mirror {mirror_ok}, source {source_ok}): {:?}",
            r.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mirror_credentials_fail_copies_with_an_error_naming_the_bucket() {
    let r = Regions::start(Backend::S3).await;
    let vol = r.source_volume("data").await;
    r.mirror_volume("data-b", "data", true).await;
    let blocks = r.write_file(&vol, "f", 1, 100).await;
    let mut config = worker_config("bad-keys");
    config.mirror_credentials = Some(Credentials::new("wrong", "wrong"));
    let worker = Worker::new(r.client(ADMIN).await, config);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { worker.run(rx).await });
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = r.status().await;
        if st.failed_total > 0 {
            break st;
        }
        assert!(Instant::now() < deadline, "the copy never failed: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        st.last_error.contains("s3://mirror/blocks")
            && st.last_error.contains(blocks[0].id.as_str()),
        "the error names the bucket and the block: {}",
        st.last_error
    );
    assert!(
        !st.last_error.contains("wrong"),
        "no secret in errors: {}",
        st.last_error
    );
    stop.send_replace(true);
    task.await.unwrap().unwrap();
    assert!(
        r.mirror_bucket
            .head_block(&blocks[0].id)
            .await
            .unwrap()
            .is_none()
    );
}
