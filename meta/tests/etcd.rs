//! The etcd engine against real etcd processes: the conformance suite, its limits and errors,
//! `FsMeta` over etcd, a three-member cluster that loses a member under load, and mirrors with
//! etcd on either side. Every test starts its own etcd (see `mirrorfs_testkit::etcd`); without
//! an etcd binary they fail with a message saying how to install it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN, Server};
use futures::StreamExt;
use mirrorfs_api::{Ino, Revision};
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions};
use mirrorfs_meta::engine::{Engine, EngineError, Mutation, Txn, TxnOutcome};
use mirrorfs_meta::follower::{self, FollowerConfig};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Volume};
use mirrorfs_testkit::etcd::{EtcdCluster, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);
const OWNER: Owner = Owner {
    mode: 0o755,
    uid: 1,
    gid: 2,
};

fn cluster(members: usize) -> EtcdCluster {
    EtcdCluster::start(members).unwrap_or_else(|e| panic!("{e}"))
}

/// The options matching the test cluster's raised limits.
fn options() -> EtcdOptions {
    EtcdOptions {
        max_txn_ops: MAX_TXN_OPS,
        max_request_bytes: MAX_REQUEST_BYTES,
        ..EtcdOptions::default()
    }
}

async fn connect(c: &EtcdCluster) -> EtcdEngine {
    EtcdEngine::connect(&c.endpoints(), options())
        .await
        .unwrap()
}

/// A factory of etcd engines, each on its own single-member cluster (revisions are per
/// cluster); the clusters live as long as the factory.
fn factory() -> impl Fn() -> futures::future::BoxFuture<'static, EtcdEngine> {
    let clusters = Arc::new(Mutex::new(Vec::new()));
    move || {
        let c = cluster(1);
        let endpoints = c.endpoints();
        clusters.lock().unwrap().push(c);
        Box::pin(async move { EtcdEngine::connect(&endpoints, options()).await.unwrap() })
    }
}

mod conformance {
    use super::*;

    mirrorfs_meta::engine_conformance_tests!(factory());
}

// ---------------------------------------------------------------------------------------------
// Limits, errors, reconnecting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_unavailable_and_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let opts = EtcdOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    match EtcdEngine::connect(std::slice::from_ref(&endpoint), opts).await {
        Err(EngineError::Unavailable(m)) => assert!(m.contains(&endpoint), "{m}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("connecting to nothing must fail"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_over_the_limits_are_invalid_and_say_how_to_raise_them() {
    let c = cluster(1);
    // Client-side check against etcd's defaults.
    let small = EtcdEngine::connect(&c.endpoints(), EtcdOptions::default())
        .await
        .unwrap();
    let mut big = Txn::new();
    for i in 0..200 {
        big = big.put(format!("k{i}"), "v");
    }
    match small.txn(big.clone()).await {
        Err(EngineError::Invalid(m)) => {
            assert!(m.contains("--max-txn-ops") && m.contains("128"), "{m}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    match small
        .txn(Txn::new().put("big", vec![0u8; 2 * 1024 * 1024]))
        .await
    {
        Err(EngineError::Invalid(m)) => assert!(m.contains("--max-request-bytes"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Server-side refusal when mirrorfs is told a larger limit than the servers have.
    let wrong = EtcdEngine::connect(
        &c.endpoints(),
        EtcdOptions {
            max_txn_ops: 1_000_000,
            max_request_bytes: 1 << 30,
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap();
    let mut huge = Txn::new();
    for i in 0..MAX_TXN_OPS + 10 {
        huge = huge.put(format!("k{i}"), "v");
    }
    match wrong.txn(huge).await {
        Err(EngineError::Invalid(m)) => assert!(m.contains("--max-txn-ops"), "{m}"),
        other => panic!("expected Invalid from the server, got {other:?}"),
    }
    assert_eq!(small.head().await.unwrap().revision, Revision(0));
    // With the raised limits the same transaction goes through.
    let raised = connect(&c).await;
    assert!(matches!(
        raised.txn(big).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_key_twice_in_a_transaction_apply_in_order() {
    let c = cluster(1);
    let e = connect(&c).await;
    e.txn(Txn::new().put("a", "1").put("b", "1").put("c", "1"))
        .await
        .unwrap();
    let txn = Txn {
        compares: vec![],
        mutations: vec![
            Mutation::DeleteRange {
                start: b"a".to_vec(),
                end: b"z".to_vec(),
            },
            Mutation::Put {
                key: b"b".to_vec(),
                value: b"2".to_vec(),
            },
            Mutation::Put {
                key: b"x".to_vec(),
                value: b"1".to_vec(),
            },
            Mutation::Delete { key: b"x".to_vec() },
            Mutation::Put {
                key: b"b".to_vec(),
                value: b"3".to_vec(),
            },
        ],
    };
    let TxnOutcome::Committed(commit) = e.txn(txn.clone()).await.unwrap() else {
        panic!("conflict")
    };
    let all = e.range(b"", b"\xff", 100).await.unwrap();
    let pairs: Vec<_> = all
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(pairs, vec![(b"b".to_vec(), b"3".to_vec())]);
    let mut log = e.watch(commit.revision).await.unwrap();
    let entry = log.next().await.unwrap().unwrap();
    assert_eq!(entry.mutations, txn.mutations, "recorded verbatim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_on_the_same_cluster_sees_the_same_revisions() {
    let c = cluster(1);
    let a = connect(&c).await;
    for i in 0..5 {
        a.txn(Txn::new().put(format!("k{i}"), "v")).await.unwrap();
    }
    a.compact(Revision(2)).await.unwrap();
    let b = connect(&c).await;
    assert_eq!(a.base_revision(), b.base_revision());
    let h = b.head().await.unwrap();
    assert_eq!((h.revision, h.compacted), (Revision(5), Revision(2)));
    assert_eq!(
        b.get(b"k4").await.unwrap().unwrap().mod_revision,
        Revision(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_with_unavailable_when_etcd_goes_away() {
    let mut c = cluster(1);
    let e = connect(&c).await;
    e.txn(Txn::new().put("a", "1")).await.unwrap();
    let mut log = e.watch(Revision(1)).await.unwrap();
    assert_eq!(log.next().await.unwrap().unwrap().revision, Revision(1));
    c.kill(0);
    let end = tokio::time::timeout(WAIT, log.next()).await.unwrap();
    match end {
        Some(Err(EngineError::Unavailable(_))) => {}
        other => panic!("expected the stream to end with Unavailable, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// FsMeta over etcd

async fn volume(fs: &FsMeta, name: &str) -> (Volume, String) {
    let (_, token) = fs
        .create_volume(NewVolume {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (fs.authenticate(name, &token).await.unwrap(), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_basics_over_etcd() {
    let c = cluster(1);
    let engine: Arc<dyn Engine> = Arc::new(connect(&c).await);
    let fs = FsMeta::open(engine.clone()).await.unwrap();
    let (v, _) = volume(&fs, "data").await;
    let d = fs.mkdir(&v, Ino::ROOT, b"d", OWNER).await.unwrap();
    assert_eq!(fs.getattr(&v, Ino::ROOT).await.unwrap().nlink, 3);
    let f = fs.create(&v, Ino(d.ino), b"f", OWNER, true).await.unwrap();
    assert_eq!(
        fs.create(&v, Ino(d.ino), b"f", OWNER, true)
            .await
            .unwrap_err()
            .kind(),
        mirrorfs_api::FsErrorKind::Exists
    );
    fs.rename(&v, Ino(d.ino), b"f", Ino::ROOT, b"g", false, false)
        .await
        .unwrap();
    assert_eq!(fs.lookup(&v, Ino::ROOT, b"g").await.unwrap().ino, f.ino);
    assert_eq!(
        fs.lookup(&v, Ino(d.ino), b"f").await.unwrap_err().kind(),
        mirrorfs_api::FsErrorKind::NotFound
    );
    assert_eq!(
        fs.rmdir(&v, Ino::ROOT, b"g").await.unwrap_err().kind(),
        mirrorfs_api::FsErrorKind::NotDirectory
    );
    fs.unlink(&v, Ino::ROOT, b"g").await.unwrap();
    fs.rmdir(&v, Ino::ROOT, b"d").await.unwrap();
    let root = fs.readdir(&v, Ino::ROOT, b"", 0).await.unwrap();
    assert!(root.entries.is_empty());
    assert_eq!(fs.getattr(&v, Ino::ROOT).await.unwrap().nlink, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_over_etcd() {
    const TASKS: usize = 16;
    const FILES: usize = 20;
    let c = cluster(1);
    let engine: Arc<dyn Engine> = Arc::new(connect(&c).await);
    let fs = FsMeta::open(engine.clone()).await.unwrap();
    let (v, token) = volume(&fs, "data").await;
    // Two processes over one cluster.
    let second = FsMeta::open(Arc::new(connect(&c).await)).await.unwrap();
    let v2 = second.authenticate("data", &token).await.unwrap();
    let shared = fs.mkdir(&v, Ino::ROOT, b"shared", OWNER).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (fs, v) = if t % 2 == 0 {
            (fs.clone(), v.clone())
        } else {
            (second.clone(), v2.clone())
        };
        let dir = Ino(shared.ino);
        tasks.push(tokio::spawn(async move {
            let mut inos = Vec::new();
            for n in 0..FILES {
                let name = format!("t{t}-f{n}");
                inos.push(
                    fs.create(&v, dir, name.as_bytes(), OWNER, true)
                        .await
                        .unwrap()
                        .ino,
                );
            }
            inos
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for i in t.await.unwrap() {
            assert!(all.insert(i), "inode {i} handed out twice");
        }
    }
    let listed = fs.readdir(&v, Ino(shared.ino), b"", 0).await.unwrap();
    assert_eq!(listed.entries.len(), TASKS * FILES);
}

// ---------------------------------------------------------------------------------------------
// A three-member cluster loses a member under load

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_the_loss_of_a_member() {
    let mut c = cluster(3);
    let engine = Arc::new(
        EtcdEngine::connect(
            &c.endpoints(),
            EtcdOptions {
                request_timeout: Duration::from_secs(3),
                ..options()
            },
        )
        .await
        .unwrap(),
    );
    let acked = Arc::new(Mutex::new(Vec::<(String, Revision)>::new()));
    let (stop_tx, stop) = watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4 {
        let (engine, acked, stop) = (engine.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut retries = 0u32;
            let mut i = 0u64;
            while !*stop.borrow() {
                let key = format!("w{w}/{i}");
                let txn = Txn::new()
                    .when(mirrorfs_meta::engine::Compare::absent(key.clone()))
                    .put(key.clone(), "v");
                match engine.txn(txn).await {
                    Ok(TxnOutcome::Committed(c)) => {
                        acked.lock().unwrap().push((key, c.revision));
                        i += 1;
                    }
                    // A retried commit that had landed before the error.
                    Ok(TxnOutcome::Conflict) => i += 1,
                    Err(EngineError::Unavailable(_)) => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
            retries
        }));
    }
    let count = || acked.lock().unwrap().len();
    wait_until("200 acknowledged writes", || count() >= 200).await;
    let before = count();
    c.kill(0);
    wait_until("300 more writes after the kill", || count() >= before + 300).await;
    stop_tx.send_replace(true);
    let mut retries = 0;
    for w in writers {
        retries += w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged ({before} before the kill), {retries} retries",
        acked.len()
    );
    for (key, revision) in &acked {
        let kv = engine
            .get(key.as_bytes())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
    // The changelog still has every revision once, in order.
    let head = engine.head().await.unwrap().revision;
    // A watch may land on the dead member and end with Unavailable: reopen it, as a follower does.
    let mut next = 1;
    let mut reopened = 0;
    while next <= head.0 {
        let mut log = match engine.watch(Revision(next)).await {
            Ok(log) => log,
            Err(EngineError::Unavailable(_)) if reopened < 20 => {
                reopened += 1;
                continue;
            }
            Err(e) => panic!("watch({next}): {e}"),
        };
        while next <= head.0 {
            match tokio::time::timeout(WAIT, log.next()).await.unwrap() {
                Some(Ok(e)) => {
                    assert_eq!(e.revision, Revision(next));
                    next += 1;
                }
                Some(Err(EngineError::Unavailable(_))) if reopened < 20 => {
                    reopened += 1;
                    break;
                }
                other => panic!("watch at {next}: {other:?}"),
            }
        }
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Mirrors with etcd on either side

async fn populate(fs: &FsMeta, v: &Volume, n: u64) {
    let dir = fs.mkdir(v, v.root, b"dir", OWNER).await.unwrap();
    for i in 0..n {
        fs.create(v, Ino(dir.ino), format!("f{i}").as_bytes(), OWNER, false)
            .await
            .unwrap();
    }
    fs.symlink(v, v.root, b"link", b"dir/f0", OWNER)
        .await
        .unwrap();
    fs.unlink(v, Ino(dir.ino), b"f1").await.unwrap();
}

/// The `m/` pairs of `engine` from one snapshot.
async fn mirrored(engine: &dyn Engine) -> (Revision, Vec<(Vec<u8>, Vec<u8>)>) {
    let snap = engine.snapshot().await.unwrap();
    let mut pairs = Vec::new();
    let mut chunks = snap.chunks;
    while let Some(chunk) = chunks.next().await {
        for kv in chunk.unwrap() {
            if kv.key.starts_with(b"m/") {
                pairs.push((kv.key, kv.value));
            }
        }
    }
    (snap.revision, pairs)
}

/// Bootstraps a mirror on `mirror_engine` from `source`, lets it tail more writes, and compares
/// the mirrored keyspaces byte for byte.
async fn mirror_round_trip(source_engine: Arc<dyn Engine>, mirror_engine: Arc<dyn Engine>) {
    let source = Server::start_on(source_engine.clone()).await;
    let (v, _) = volume(&source.fs, "data").await;
    populate(&source.fs, &v, 300).await;
    let mut config = FollowerConfig::new(&source.url, ADMIN);
    config.backoff_min = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(200);
    let (stop, rx) = watch::channel(false);
    let handle = follower::start(mirror_engine.clone(), config, rx)
        .await
        .unwrap();
    // More writes while it follows: the tail path.
    let (v2, _) = volume(&source.fs, "more").await;
    populate(&source.fs, &v2, 100).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (head, theirs) = mirrored(source_engine.as_ref()).await;
        let mut applied = handle.applied();
        tokio::time::timeout(WAIT, applied.wait_for(|a| *a >= head))
            .await
            .unwrap_or_else(|_| panic!("the mirror did not reach {head}: {:?}", handle.status()))
            .unwrap();
        let (_, ours) = mirrored(mirror_engine.as_ref()).await;
        if *handle.applied().borrow() == head {
            assert_eq!(theirs.len(), ours.len(), "mirrored keys at {head}");
            assert!(theirs == ours, "the mirrored keyspaces differ at {head}");
            break;
        }
        assert!(Instant::now() < deadline, "the source never stayed quiet");
    }
    stop.send_replace(true);
    handle.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_on_etcd_mirrors_to_embedded() {
    let c = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn Engine> = Arc::new(connect(&c).await);
    let mirror: Arc<dyn Engine> =
        Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap());
    mirror_round_trip(source, mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_on_embedded_mirrors_to_etcd() {
    let c = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn Engine> =
        Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap());
    let mirror: Arc<dyn Engine> = Arc::new(connect(&c).await);
    mirror_round_trip(source, mirror).await;
}
