//! The mirror follower against a real source meta service over gRPC: a mirror equals its source
//! at the same revision byte for byte (a randomised history with compactions and follower kills
//! at random points), re-bootstraps after compaction and after a kill mid-bootstrap, refuses a
//! foreign source and a wrong credential, refuses every client mutation while serving reads,
//! finds differences, and never reports negative lag.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ADMIN, Server};
use futures::StreamExt;
use mirrorfs_api::meta::{self as pb, Extent};
use mirrorfs_api::records::Applied;
use mirrorfs_api::{FsErrorKind, Ino, Revision, VolumeId};
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::engine::{Txn, TxnOutcome};
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, SetAttr, Volume, keys};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, client};
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use prost::Message;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

/// A running follower and the switch that stops it.
struct Mirror {
    engine: Arc<dyn Engine>,
    handle: FollowerHandle,
    stop: watch::Sender<bool>,
}

fn config(url: &str, token: &str) -> FollowerConfig {
    let mut c = FollowerConfig::new(url, token);
    c.backoff_min = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(200);
    c.max_batch_entries = 64;
    c
}

impl Mirror {
    async fn start(engine: Arc<dyn Engine>, config: FollowerConfig) -> Mirror {
        let (stop, rx) = watch::channel(false);
        let handle = follower::start(engine.clone(), config, rx).await.unwrap();
        Mirror {
            engine,
            handle,
            stop,
        }
    }

    async fn follow(engine: Arc<dyn Engine>, source: &Server) -> Mirror {
        Self::start(engine, config(&source.url, ADMIN)).await
    }

    /// Stops the follower wherever it is (its tasks are dropped, as by a kill).
    async fn kill(self) -> Arc<dyn Engine> {
        self.stop.send_replace(true);
        self.handle.stopped().await;
        self.engine
    }

    async fn wait_applied(&self, at_least: Revision) {
        let mut rx = self.handle.applied();
        let r = tokio::time::timeout(WAIT, rx.wait_for(|a| *a >= at_least)).await;
        assert!(
            r.is_ok(),
            "the mirror did not reach revision {at_least}: {:?}",
            self.handle.status()
        );
    }

    /// Waits until `cond(status)` holds.
    async fn wait_status(&self, what: &str, cond: impl Fn(&pb::MirrorStatus) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.handle.status();
            if cond(&st) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The mirrored pairs of `engine`, and its `l/mirror/applied` record, from one snapshot.
async fn mirrored(engine: &dyn Engine) -> (Revision, Vec<(Vec<u8>, Vec<u8>)>, Option<Applied>) {
    let snap = engine.snapshot().await.unwrap();
    let mut pairs = Vec::new();
    let mut applied = None;
    let mut chunks = snap.chunks;
    while let Some(chunk) = chunks.next().await {
        for kv in chunk.unwrap() {
            if kv.key.starts_with(b"m/") {
                pairs.push((kv.key, kv.value));
            } else if kv.key == b"l/mirror/applied" {
                applied = Some(Applied::decode(kv.value.as_slice()).unwrap());
            }
        }
    }
    (snap.revision, pairs, applied)
}

/// Waits for the mirror to catch up with a quiet source, then compares the mirrored keyspaces
/// byte for byte at the same revision. Returns that revision.
async fn assert_mirrors(source: &dyn Engine, mirror: &Mirror) -> Revision {
    let deadline = Instant::now() + WAIT;
    loop {
        let (head, theirs, _) = mirrored(source).await;
        mirror.wait_applied(head).await;
        let (_, ours, applied) = mirrored(mirror.engine.as_ref()).await;
        let applied = Revision(applied.expect("an applied record").revision);
        if applied == head {
            assert_eq!(
                theirs.len(),
                ours.len(),
                "number of mirrored keys at {head}"
            );
            for (a, b) in theirs.iter().zip(&ours) {
                assert_eq!(a, b, "first difference at revision {head}");
            }
            assert_eq!(*mirror.handle.applied().borrow(), head);
            return head;
        }
        // The source moved on (a background usage fold); compare again.
        assert!(
            Instant::now() < deadline,
            "the source never stayed quiet: {:?}",
            mirror.handle.status()
        );
    }
}

async fn source_volume(fs: &FsMeta, name: &str) -> (Volume, String) {
    let (_, token) = fs
        .create_volume(NewVolume {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (fs.authenticate(name, &token).await.unwrap(), token)
}

const OWNER: Owner = Owner {
    mode: 0o755,
    uid: 1,
    gid: 2,
};

fn extent(offset: u64, len: u64, block: u64) -> Extent {
    Extent {
        offset,
        length: len,
        block_id: format!("blk/{block}"),
        block_offset: 0,
        block_size: len,
        checksum: vec![7; 32],
    }
}

/// Writes a small tree with every kind of record.
async fn populate(fs: &FsMeta, vol: &Volume, n: u64) {
    let dir = fs.mkdir(vol, vol.root, b"dir", OWNER).await.unwrap();
    for i in 0..n {
        let f = fs
            .create(vol, Ino(dir.ino), format!("f{i}").as_bytes(), OWNER, false)
            .await
            .unwrap();
        fs.commit_extents(vol, Ino(f.ino), vec![extent(0, 100 + i, i)], 100 + i, None)
            .await
            .unwrap();
    }
    fs.symlink(vol, vol.root, b"link", b"dir/f0", OWNER)
        .await
        .unwrap();
}

// --- the randomised history ----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    Mkdir {
        dir: u8,
        name: u8,
    },
    Create {
        dir: u8,
        name: u8,
    },
    Symlink {
        dir: u8,
        name: u8,
    },
    Unlink {
        dir: u8,
        name: u8,
    },
    Rmdir {
        dir: u8,
        name: u8,
    },
    Rename {
        dir: u8,
        name: u8,
        to_dir: u8,
        to_name: u8,
        no_replace: bool,
    },
    Link {
        node: u8,
        dir: u8,
        name: u8,
    },
    SetAttr {
        node: u8,
        size: Option<u64>,
        mode: u32,
    },
    Write {
        node: u8,
        offset: u64,
        len: u64,
    },
    /// Several creates at once, so the follower sees entries arrive faster than it applies.
    Burst(u8),
    /// Deletes the spare volume if it exists (range deletes), else creates and fills it.
    RecycleVolume,
    /// Compacts the source changelog up to its head.
    Compact,
    Kill,
    Restart,
    /// Lets the follower run for a moment.
    Pause(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let i = any::<u8>;
    prop_oneof![
        4 => (i(), i()).prop_map(|(dir, name)| Step::Mkdir { dir, name }),
        5 => (i(), i()).prop_map(|(dir, name)| Step::Create { dir, name }),
        1 => (i(), i()).prop_map(|(dir, name)| Step::Symlink { dir, name }),
        2 => (i(), i()).prop_map(|(dir, name)| Step::Unlink { dir, name }),
        2 => (i(), i()).prop_map(|(dir, name)| Step::Rmdir { dir, name }),
        4 => (i(), i(), i(), i(), any::<bool>()).prop_map(|(dir, name, to_dir, to_name, no_replace)| Step::Rename {
            dir, name, to_dir, to_name, no_replace
        }),
        2 => (i(), i(), i()).prop_map(|(node, dir, name)| Step::Link { node, dir, name }),
        2 => (i(), proptest::option::of(0u64..5000), 0u32..0o7777).prop_map(|(node, size, mode)| Step::SetAttr { node, size, mode }),
        3 => (i(), 0u64..4000, 1u64..3000).prop_map(|(node, offset, len)| Step::Write { node, offset, len }),
        2 => i().prop_map(Step::Burst),
        1 => Just(Step::RecycleVolume),
        1 => Just(Step::Compact),
        2 => Just(Step::Kill),
        2 => Just(Step::Restart),
        2 => i().prop_map(Step::Pause),
    ]
}

fn name(i: u8) -> Vec<u8> {
    [b"a".as_slice(), b"b", b"c", b"d\xff"][usize::from(i % 4)].to_vec()
}

struct History {
    fs: FsMeta,
    vol: Volume,
    /// Every inode ever created (removed ones too: operations on them fail, which is fine).
    inodes: Vec<Ino>,
    blocks: u64,
}

impl History {
    fn pick(&self, i: u8) -> Ino {
        self.inodes[usize::from(i) % self.inodes.len()]
    }

    /// Runs one file-system step on the source; errors (a missing name, a non-empty directory)
    /// are part of the history and ignored.
    async fn run(&mut self, step: &Step) {
        let (fs, vol) = (&self.fs, &self.vol);
        let created = match *step {
            Step::Mkdir { dir, name: n } => fs.mkdir(vol, self.pick(dir), &name(n), OWNER).await,
            Step::Create { dir, name: n } => {
                fs.create(vol, self.pick(dir), &name(n), OWNER, false).await
            }
            Step::Symlink { dir, name: n } => {
                fs.symlink(vol, self.pick(dir), &name(n), b"../t", OWNER)
                    .await
            }
            Step::Unlink { dir, name: n } => {
                let _ = fs.unlink(vol, self.pick(dir), &name(n)).await;
                return;
            }
            Step::Rmdir { dir, name: n } => {
                let _ = fs.rmdir(vol, self.pick(dir), &name(n)).await;
                return;
            }
            Step::Rename {
                dir,
                name: n,
                to_dir,
                to_name,
                no_replace,
            } => {
                let _ = fs
                    .rename(
                        vol,
                        self.pick(dir),
                        &name(n),
                        self.pick(to_dir),
                        &name(to_name),
                        no_replace,
                        false,
                    )
                    .await;
                return;
            }
            Step::Link { node, dir, name: n } => {
                let _ = fs
                    .link(vol, self.pick(node), self.pick(dir), &name(n))
                    .await;
                return;
            }
            Step::SetAttr { node, size, mode } => {
                let set = SetAttr {
                    mode: Some(mode),
                    size,
                    ..Default::default()
                };
                let _ = fs.setattr(vol, self.pick(node), set).await;
                return;
            }
            Step::Write { node, offset, len } => {
                self.blocks += 1;
                let e = extent(offset, len, self.blocks);
                let _ = fs
                    .commit_extents(vol, self.pick(node), vec![e], offset + len, None)
                    .await;
                return;
            }
            Step::Burst(n) => {
                let dir = self.pick(n);
                let names: Vec<String> = (0..2 + n % 16).map(|i| format!("burst{n}.{i}")).collect();
                let made = futures::future::join_all(
                    names
                        .iter()
                        .map(|name| fs.create(vol, dir, name.as_bytes(), OWNER, true)),
                )
                .await;
                self.inodes
                    .extend(made.into_iter().flatten().map(|a| Ino(a.ino)));
                return;
            }
            Step::RecycleVolume => {
                if fs.delete_volume("spare").await.is_err() {
                    let (spare, _) = source_volume(fs, "spare").await;
                    populate(fs, &spare, 3).await;
                }
                return;
            }
            Step::Compact | Step::Kill | Step::Restart | Step::Pause(_) => return,
        };
        if let Ok(attr) = created {
            self.inodes.push(Ino(attr.ino));
        }
    }
}

async fn random_history(steps: Vec<Step>, embedded: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mirror_engine: Arc<dyn Engine> = if embedded {
        Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap())
    } else {
        Arc::new(MemoryEngine::new())
    };
    random_history_on(steps, Arc::new(MemoryEngine::new()), mirror_engine).await;
}

/// Runs `steps` on a source served over `source_engine`, followed by a mirror on
/// `mirror_engine`, and checks the mirror equals the source at the end.
async fn random_history_on(
    steps: Vec<Step>,
    source_engine: Arc<dyn Engine>,
    mirror_engine: Arc<dyn Engine>,
) {
    let source = Server::start_on(source_engine).await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    let mut h = History {
        fs: source.fs.clone(),
        inodes: vec![vol.root],
        vol,
        blocks: 0,
    };
    let mut mirror = Some(Mirror::follow(mirror_engine.clone(), &source).await);
    for step in &steps {
        match step {
            Step::Kill => {
                if let Some(m) = mirror.take() {
                    m.kill().await;
                }
            }
            Step::Restart => {
                if mirror.is_none() {
                    mirror = Some(Mirror::follow(mirror_engine.clone(), &source).await);
                }
            }
            Step::Compact => {
                let head = source.engine.head().await.unwrap().revision;
                source.engine.compact(head).await.unwrap();
            }
            Step::Pause(n) => {
                for _ in 0..*n % 16 {
                    tokio::task::yield_now().await;
                }
            }
            _ => h.run(step).await,
        }
    }
    let mirror = match mirror {
        Some(m) => m,
        None => Mirror::follow(mirror_engine.clone(), &source).await,
    };
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    // On etcd a killed follower's last transaction, already sent, can still land after a new
    // follower has read its position; the new one then sees the position move, retries, and
    // goes back to tailing (the compare on the position keeps the data right either way).
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = mirror.handle.status();
        if st.state == "tailing" || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st.state, "tailing", "{st:?}");
    assert!(st.lag_seconds >= 0.0);
    mirror.kill().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_mirror_equals_its_source_across_kills_and_compactions(
        steps in proptest::collection::vec(step(), 1..120),
        embedded in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(random_history(steps, embedded));
    }
}

/// The same property with etcd on one side: a real etcd (one for the whole test, a fresh key
/// prefix per case), as the source's engine or the mirror's, the other side embedded. Fewer and
/// shorter cases, as every etcd operation is a network round trip.
#[test]
fn a_mirror_equals_its_source_with_etcd_on_either_side() {
    use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions};
    use mirrorfs_testkit::etcd::{EtcdCluster, MAX_REQUEST_BYTES, MAX_TXN_OPS};
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let cluster = EtcdCluster::start(1).unwrap_or_else(|e| panic!("{e}"));
    let endpoints = cluster.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (proptest::collection::vec(step(), 1..120), any::<bool>());
    let result = runner.run(&strategy, |(steps, etcd_source)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            let etcd: Arc<dyn Engine> = Arc::new(
                EtcdEngine::connect(
                    &endpoints,
                    EtcdOptions {
                        prefix: format!("mirror-case-{n}/").into_bytes(),
                        max_txn_ops: MAX_TXN_OPS,
                        max_request_bytes: MAX_REQUEST_BYTES,
                        ..EtcdOptions::default()
                    },
                )
                .await
                .unwrap(),
            );
            let dir = tempfile::tempdir().unwrap();
            let embedded: Arc<dyn Engine> =
                Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap());
            if etcd_source {
                random_history_on(steps, etcd, embedded).await;
            } else {
                random_history_on(steps, embedded, etcd).await;
            }
        });
        Ok::<(), TestCaseError>(())
    });
    drop(cluster);
    if let Err(e) = result {
        panic!("{e}");
    }
}

// --- bootstrap ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_rebootstraps_after_the_source_compacts_past_it() {
    let source = Server::start().await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    populate(&source.fs, &vol, 5).await;
    let mirror = Mirror::follow(Arc::new(MemoryEngine::new()), &source).await;
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    let first = mirror.handle.status();
    assert_eq!(first.bootstraps, 1, "{first:?}");
    let engine = mirror.kill().await;

    // Writes the stopped mirror never saw, then history that no longer reaches back to it.
    source
        .fs
        .rmdir(&vol, vol.root, b"nothing")
        .await
        .unwrap_err();
    let dir = source.fs.lookup(&vol, vol.root, b"dir").await.unwrap();
    source.fs.unlink(&vol, Ino(dir.ino), b"f1").await.unwrap();
    source
        .fs
        .mkdir(&vol, vol.root, b"new", OWNER)
        .await
        .unwrap();
    let head = source.engine.head().await.unwrap().revision;
    source.engine.compact(head).await.unwrap();

    let mirror = Mirror::follow(engine, &source).await;
    let at = assert_mirrors(source.engine.as_ref(), &mirror).await;
    let st = mirror.handle.status();
    assert_eq!(
        st.bootstraps, 1,
        "a fresh follower counts its own bootstraps: {st:?}"
    );
    assert!(
        st.last_bootstrap_revision >= head.0 && st.last_bootstrap.is_some(),
        "{st:?}"
    );
    assert_eq!(st.applied_revision, at.0);
    assert_eq!(st.state, "tailing");

    // And it keeps tailing afterwards.
    source
        .fs
        .mkdir(&vol, vol.root, b"after", OWNER)
        .await
        .unwrap();
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    mirror.kill().await;
}

/// Writes `n` synthetic inode records straight into `engine`, in large transactions.
async fn bulk_inodes(engine: &dyn Engine, vol: u64, n: u64) {
    let value = vec![0x5a; 64];
    let mut i = 0;
    while i < n {
        let mut txn = Txn::new();
        for ino in i..(i + 5000).min(n) {
            txn = txn.put(
                keys::inode(VolumeId(vol), Ino(1_000_000 + ino)),
                value.clone(),
            );
        }
        assert!(matches!(
            engine.txn(txn).await.unwrap(),
            TxnOutcome::Committed(_)
        ));
        i += 5000;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_mid_bootstrap_is_followed_by_a_fresh_bootstrap() {
    let source = Server::start().await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    populate(&source.fs, &vol, 3).await;
    bulk_inodes(source.engine.as_ref(), vol.id.0, 150_000).await;

    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Engine> =
        Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap());
    let mirror = Mirror::follow(engine.clone(), &source).await;
    // Kill it once the marker and some copied keys are on disk.
    let deadline = Instant::now() + WAIT;
    loop {
        let marker = engine.get(b"l/mirror/bootstrap").await.unwrap();
        let copied = engine.range(b"m/", b"m0", 10_000).await.unwrap().len();
        if marker.is_some() && copied >= 8000 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", mirror.handle.status());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(mirror.handle.status().state, "bootstrapping");
    let engine = mirror.kill().await;
    assert!(
        engine.get(b"l/mirror/bootstrap").await.unwrap().is_some(),
        "the kill should land mid-bootstrap"
    );
    assert!(engine.get(b"l/mirror/applied").await.unwrap().is_none());

    // The source moves on; a restarted follower must not tail from the half-written state.
    let extra = source
        .fs
        .mkdir(&vol, vol.root, b"later", OWNER)
        .await
        .unwrap();
    let mirror = Mirror::follow(engine.clone(), &source).await;
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    let st = mirror.handle.status();
    assert_eq!(st.bootstraps, 1, "{st:?}");
    assert!(st.last_bootstrap_revision >= extra.revision, "{st:?}");
    assert!(engine.get(b"l/mirror/bootstrap").await.unwrap().is_none());
    mirror.kill().await;
}

// --- refusals -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_refuses_a_source_with_another_cluster_id() {
    let a = Server::start().await;
    let (vol, _) = source_volume(&a.fs, "data").await;
    populate(&a.fs, &vol, 2).await;
    let mirror = Mirror::follow(Arc::new(MemoryEngine::new()), &a).await;
    assert_mirrors(a.engine.as_ref(), &mirror).await;
    let engine = mirror.kill().await;
    let before = mirrored(engine.as_ref()).await;

    let b = Server::start().await;
    let (other, _) = source_volume(&b.fs, "data").await;
    populate(&b.fs, &other, 4).await;
    let mirror = Mirror::follow(engine.clone(), &b).await;
    mirror
        .wait_status("the failed state", |s| s.state == "failed")
        .await;
    let st = mirror.handle.status();
    let (id_a, id_b) = (
        a.fs.cluster_id().await.unwrap(),
        b.fs.cluster_id().await.unwrap(),
    );
    assert!(
        st.last_error.contains(&id_a) && st.last_error.contains(&id_b),
        "the error names both clusters: {}",
        st.last_error
    );
    assert!(
        st.last_error.contains("wipe"),
        "and what to do: {}",
        st.last_error
    );
    assert_eq!(st.source_cluster_id, id_a);
    let after = mirrored(engine.as_ref()).await;
    assert_eq!(before.1, after.1, "local data untouched");
    assert_eq!(before.2, after.2);
    mirror.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_credential_is_reported_and_nothing_is_applied() {
    let engine = Arc::new(MemoryEngine::new());
    let fs = FsMeta::open(engine.clone()).await.unwrap();
    let source = Server::serve(MetaState {
        replication: Some(AdminToken::new("replication-secret")),
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    })
    .await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    populate(&source.fs, &vol, 2).await;

    let local: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let mirror = Mirror::start(local.clone(), config(&source.url, "not-the-token")).await;
    mirror
        .wait_status("an error", |s| !s.last_error.is_empty())
        .await;
    let st = mirror.handle.status();
    assert!(
        st.last_error.contains("refused the replication credential"),
        "{st:?}"
    );
    assert_eq!(st.applied_revision, 0);
    assert_eq!(st.state, "retrying");
    let (_, pairs, applied) = mirrored(local.as_ref()).await;
    assert!(pairs.is_empty() && applied.is_none());
    mirror.kill().await;

    // The replication token works.
    let mirror = Mirror::start(local, config(&source.url, "replication-secret")).await;
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    mirror.kill().await;
}

// --- a served mirror ------------------------------------------------------------------------

fn vref(name: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef {
        volume: name.into(),
    })
}

async fn serve_mirror(source: &Server) -> (Server, Mirror) {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let fs = FsMeta::open_mirror(engine.clone()).await.unwrap();
    let mirror = Mirror::follow(engine, source).await;
    let server = Server::serve(MetaState {
        mirror: Some(mirror.handle.clone()),
        ..MetaState::source(
            fs,
            AdminToken::new(ADMIN),
            Arc::new(MetaMetrics::register(&mut Registry::default())),
        )
    })
    .await;
    (server, mirror)
}

fn read_only(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(
        FsErrorKind::of(&e),
        Some(FsErrorKind::ReadOnly),
        "{what}: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_mirror_refuses_every_mutation_and_serves_reads() {
    let source = Server::start().await;
    let (vol, source_token) = source_volume(&source.fs, "data").await;
    populate(&source.fs, &vol, 3).await;
    let (server, mirror) = serve_mirror(&source).await;
    assert_mirrors(source.engine.as_ref(), &mirror).await;

    let mut admin = client::admin(server.channel().await, ADMIN).unwrap();
    let token = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "mdata".into(),
            source_volume: "data".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.role, "mirror");
    let ms = status.mirror.unwrap();
    assert_eq!(ms.state, "tailing");
    assert_eq!(ms.source_cluster_id, source.fs.cluster_id().await.unwrap());

    let mut fs = client::fs(server.channel().await, &token).unwrap();
    let m = || vref("mdata");
    let root = Ino::ROOT.0;

    // Reads return the source's data.
    let opened = fs
        .open_volume(pb::OpenVolumeRequest { volume: m() })
        .await
        .unwrap()
        .into_inner();
    assert!(opened.read_only);
    let dir = fs
        .lookup(pb::LookupRequest {
            volume: m(),
            parent: root,
            name: b"dir".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let src_dir = source.fs.lookup(&vol, vol.root, b"dir").await.unwrap();
    assert_eq!(dir.ino, src_dir.ino);
    let listed = fs
        .read_dir(pb::ReadDirRequest {
            volume: m(),
            ino: dir.ino,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, vec![b"f0".to_vec(), b"f1".to_vec(), b"f2".to_vec()]);
    let resolved = fs
        .resolve(pb::ResolveRequest {
            volume: m(),
            path: "/dir/f2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::resolve_reply::Result::Found(f2)) = resolved.result else {
        panic!("{resolved:?}")
    };
    assert_eq!(resolved.revision, mirror.handle.applied().borrow().0);
    let attr = fs
        .get_attr(pb::GetAttrRequest {
            volume: m(),
            ino: f2.ino,
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(attr.size, 102);
    let src_attr = source.fs.getattr(&vol, Ino(f2.ino)).await.unwrap();
    assert_eq!(attr.size, src_attr.size);
    assert_eq!(attr.mtime, src_attr.mtime);

    // Every mutation is refused as read-only.
    let name = || b"x".to_vec();
    read_only(
        fs.mkdir(pb::MkdirRequest {
            volume: m(),
            parent: root,
            name: name(),
            mode: 0o755,
            ..Default::default()
        })
        .await,
        "mkdir",
    );
    read_only(
        fs.create(pb::CreateRequest {
            volume: m(),
            parent: root,
            name: name(),
            mode: 0o644,
            ..Default::default()
        })
        .await,
        "create",
    );
    read_only(
        fs.unlink(pb::UnlinkRequest {
            volume: m(),
            parent: dir.ino,
            name: b"f0".to_vec(),
        })
        .await,
        "unlink",
    );
    read_only(
        fs.rmdir(pb::RmdirRequest {
            volume: m(),
            parent: root,
            name: b"dir".to_vec(),
        })
        .await,
        "rmdir",
    );
    read_only(
        fs.rename(pb::RenameRequest {
            volume: m(),
            parent: root,
            name: b"dir".to_vec(),
            new_parent: root,
            new_name: name(),
            ..Default::default()
        })
        .await,
        "rename",
    );
    read_only(
        fs.link(pb::LinkRequest {
            volume: m(),
            ino: f2.ino,
            new_parent: root,
            new_name: name(),
        })
        .await,
        "link",
    );
    read_only(
        fs.symlink(pb::SymlinkRequest {
            volume: m(),
            parent: root,
            name: name(),
            target: b"dir".to_vec(),
            ..Default::default()
        })
        .await,
        "symlink",
    );
    read_only(
        fs.set_attr(pb::SetAttrRequest {
            volume: m(),
            ino: f2.ino,
            mode: Some(0o600),
            ..Default::default()
        })
        .await,
        "setattr",
    );
    read_only(
        fs.commit_extents(pb::CommitExtentsRequest {
            volume: m(),
            ino: f2.ino,
            extents: vec![extent(0, 10, 99)],
            new_size: 10,
            mtime: None,
        })
        .await,
        "commit_extents",
    );
    // Nothing changed anywhere.
    assert_mirrors(source.engine.as_ref(), &mirror).await;

    // Source tokens do not open the mirror volume, and the mirror token opens no source volume.
    let mut with_source_token = client::fs(server.channel().await, &source_token).unwrap();
    for volume in ["mdata", "data"] {
        let e = with_source_token
            .open_volume(pb::OpenVolumeRequest {
                volume: vref(volume),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                FsErrorKind::of(&e),
                Some(FsErrorKind::Unauthenticated | FsErrorKind::NotFound)
            ),
            "{volume}: {e:?}"
        );
    }
    let mut on_source = client::fs(source.channel().await, &token).unwrap();
    for volume in ["data", "mdata"] {
        let e = on_source
            .open_volume(pb::OpenVolumeRequest {
                volume: vref(volume),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                FsErrorKind::of(&e),
                Some(FsErrorKind::Unauthenticated | FsErrorKind::NotFound)
            ),
            "{volume}: {e:?}"
        );
    }
    mirror.kill().await;
}

// --- the difference check and lag --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_check_finds_no_difference_then_locates_a_damaged_record() {
    let source = Server::start().await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    populate(&source.fs, &vol, 4).await;
    let (server, mirror) = serve_mirror(&source).await;
    assert_mirrors(source.engine.as_ref(), &mirror).await;

    // Equal, also while the source keeps writing (the tail is held at the digest's revision).
    let writer = {
        let (fs, vol) = (source.fs.clone(), vol.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                fs.mkdir(&vol, vol.root, format!("busy{i}").as_bytes(), OWNER)
                    .await
                    .unwrap();
            }
        })
    };
    let mut admin = client::admin(server.channel().await, ADMIN).unwrap();
    for _ in 0..3 {
        let r = admin
            .check_mirror(pb::CheckMirrorRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(r.equal, "{r:?}");
        assert!(r.keys_compared > 10 && r.checked.is_some() && r.revision > 0);
    }
    writer.await.unwrap();
    let r = mirror.handle.check().await.unwrap();
    assert!(r.equal && r.divergences.is_empty(), "{r:?}");
    assert_eq!(mirror.handle.status().last_check, Some(r));

    // Damage one inode record of the mirror behind the follower's back.
    let dir = source.fs.lookup(&vol, vol.root, b"dir").await.unwrap();
    let key = keys::inode(vol.id, Ino(dir.ino));
    let txn = Txn::new().put(key, b"garbage".to_vec());
    mirror.engine.txn(txn).await.unwrap();
    let r = mirror.handle.check().await.unwrap();
    assert!(!r.equal, "{r:?}");
    assert_eq!(r.divergences.len(), 1, "{r:?}");
    assert_eq!(
        r.divergences[0].section,
        format!("volume {} inodes", vol.id.0)
    );
    assert_eq!(mirror.handle.status().last_check, Some(r));
    mirror.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_is_never_negative_and_zero_when_caught_up() {
    let source = Server::start().await;
    let (vol, _) = source_volume(&source.fs, "data").await;
    let mirror = Mirror::follow(Arc::new(MemoryEngine::new()), &source).await;
    let writer = {
        let (fs, vol) = (source.fs.clone(), vol.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                fs.create(&vol, vol.root, format!("f{i}").as_bytes(), OWNER, false)
                    .await
                    .unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let st = mirror.handle.status();
        assert!(
            st.lag_seconds >= 0.0 && st.lag_seconds.is_finite(),
            "{st:?}"
        );
        assert_eq!(
            st.lag_revisions,
            st.source_revision.saturating_sub(st.applied_revision)
        );
        tokio::task::yield_now().await;
    }
    assert_mirrors(source.engine.as_ref(), &mirror).await;
    mirror
        .wait_status("no lag", |s| s.lag_revisions == 0 && s.lag_seconds == 0.0)
        .await;
    let st = mirror.handle.status();
    assert!(
        st.source_reachable && st.unreachable_since.is_none(),
        "{st:?}"
    );
    assert!(st.applied_committed.is_some());
    mirror.kill().await;
}
