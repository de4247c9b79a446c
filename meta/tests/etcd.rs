//! The etcd engine against real etcd processes: the conformance suite, its limits and errors,
//! `FsMeta` over etcd, a three-member cluster that loses a member under load, mirrors with etcd
//! on either side, and TLS (client certificates from a CA made by the test) and authentication.
//! Every test starts its own etcd (see `mirrorfs_testkit::etcd`); without an etcd binary they
//! fail with a message saying how to install it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN, Server};
use futures::StreamExt;
use mirrorfs_api::{Ino, Revision};
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions, EtcdTls};
use mirrorfs_meta::engine::{Engine, EngineError, Mutation, Txn, TxnOutcome};
use mirrorfs_meta::follower::{self, FollowerConfig};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Volume};
use mirrorfs_testkit::etcd::{EtcdCluster, EtcdStart, MAX_REQUEST_BYTES, MAX_TXN_OPS};
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

/// Two engines (two meta services) commit concurrently, unguarded: every commit's time is the
/// time every reader sees for its revision (the changelog from the start and from the middle,
/// `head`, a snapshot), and times never go back along the changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_times_agree_across_readers_under_concurrent_commits() {
    const TASKS: usize = 8;
    const EACH: usize = 40;
    let c = cluster(1);
    let engines = [Arc::new(connect(&c).await), Arc::new(connect(&c).await)];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = engines[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::new();
            for i in 0..EACH {
                match engine.txn(Txn::new().put(format!("t{t}/{i}"), "v")).await {
                    Ok(TxnOutcome::Committed(c)) => commits.push(c),
                    other => panic!("an unguarded commit must go through, got {other:?}"),
                }
            }
            commits
        }));
    }
    let mut commits = Vec::new();
    for t in tasks {
        commits.extend(t.await.unwrap());
    }
    commits.sort_by_key(|c| c.revision);
    let total = (TASKS * EACH) as u64;
    let revisions: Vec<u64> = commits.iter().map(|c| c.revision.0).collect();
    assert_eq!(
        revisions,
        (1..=total).collect::<Vec<_>>(),
        "one revision each"
    );
    assert!(
        commits.windows(2).all(|w| w[0].time <= w[1].time),
        "commit times go back along the revisions"
    );
    let head = engines[1].head().await.unwrap();
    assert_eq!(
        (head.revision, head.time),
        (Revision(total), commits[commits.len() - 1].time)
    );
    let snapshot = engines[0].snapshot().await.unwrap();
    assert_eq!(snapshot.time, head.time, "snapshot time");
    for from in [1, total / 2] {
        let mut log = engines[(from % 2) as usize]
            .watch(Revision(from))
            .await
            .unwrap();
        for c in &commits[(from - 1) as usize..] {
            let entry = tokio::time::timeout(WAIT, log.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(
                (entry.revision, entry.time),
                (c.revision, c.time),
                "watch({from}) disagrees with the commit"
            );
        }
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

// ---------------------------------------------------------------------------------------------
// TLS and authentication

/// A test PKI: a CA that signs a server certificate for 127.0.0.1 and a client certificate,
/// and an unrelated CA. The server's files are on disk for etcd.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    other_ca: String,
    client: (String, String),
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
            ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair, KeyUsagePurpose,
        };
        fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        }
        fn leaf(
            ca: &CertifiedIssuer<'static, KeyPair>,
            name: &str,
            sans: &[&str],
            usages: Vec<Eku>,
        ) -> (String, String) {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = usages;
            let key = KeyPair::generate().unwrap();
            (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
        }
        let authority = ca("mirrorfs test CA");
        // etcd also dials itself with its server certificate, so it may act as a client too.
        let server = leaf(
            &authority,
            "etcd",
            &["127.0.0.1", "localhost"],
            vec![Eku::ServerAuth, Eku::ClientAuth],
        );
        let client = leaf(&authority, "mirrorfs", &[], vec![Eku::ClientAuth]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), authority.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.0).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &server.1).unwrap();
        Pki {
            dir,
            ca: authority.pem(),
            other_ca: ca("some other CA").pem(),
            client,
        }
    }

    /// etcd's TLS files, with or without `--client-cert-auth`.
    fn server_files(&self, client_cert_auth: bool) -> mirrorfs_testkit::etcd::EtcdTlsFiles {
        let p = |name: &str| self.dir.path().join(name);
        mirrorfs_testkit::etcd::EtcdTlsFiles {
            cert: p("server.pem"),
            key: p("server-key.pem"),
            client_ca: client_cert_auth.then(|| p("ca.pem")),
        }
    }

    fn tls(&self, ca: &str, with_client_cert: bool) -> EtcdTls {
        EtcdTls {
            ca_pem: Some(ca.as_bytes().to_vec()),
            identity_pem: with_client_cert.then(|| {
                (
                    self.client.0.as_bytes().to_vec(),
                    self.client.1.as_bytes().to_vec(),
                )
            }),
        }
    }
}

/// Commits, reads, watches, snapshots: what the meta service does, over `engine`.
async fn exercise(engine: &EtcdEngine) {
    let mut log = engine.watch(Revision(1)).await.unwrap();
    let TxnOutcome::Committed(first) = engine.txn(Txn::new().put("a", "1")).await.unwrap() else {
        panic!("conflict")
    };
    let txn = Txn::new()
        .when(mirrorfs_meta::engine::Compare::absent("b"))
        .put("b", "2");
    assert!(matches!(
        engine.txn(txn.clone()).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
    assert_eq!(engine.txn(txn).await.unwrap(), TxnOutcome::Conflict);
    assert_eq!(engine.get(b"a").await.unwrap().unwrap().value, b"1");
    assert_eq!(engine.range(b"", b"\xff", 10).await.unwrap().len(), 2);
    let head = engine.head().await.unwrap();
    assert_eq!(head.revision, Revision(2));
    let entry = tokio::time::timeout(WAIT, log.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((entry.revision, entry.time), (first.revision, first.time));
    let (revision, pairs) = mirrored_all(engine).await;
    assert_eq!((revision, pairs), (Revision(2), 2));
}

async fn mirrored_all(engine: &dyn Engine) -> (Revision, usize) {
    let snap = engine.snapshot().await.unwrap();
    let mut n = 0;
    let mut chunks = snap.chunks;
    while let Some(chunk) = chunks.next().await {
        n += chunk.unwrap().len();
    }
    (snap.revision, n)
}

fn quick(options: EtcdOptions) -> EtcdOptions {
    EtcdOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..options
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let pki = Pki::new();
    let c = EtcdCluster::start_with(&EtcdStart {
        members: 1,
        tls: Some(pki.server_files(true)),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = c.endpoints()[0].clone();
    let engine = EtcdEngine::connect(
        &c.endpoints(),
        EtcdOptions {
            tls: Some(pki.tls(&pki.ca, true)),
            ..options()
        },
    )
    .await
    .unwrap();
    exercise(&engine).await;
    // An explicit https:// URL works the same.
    let by_url = EtcdEngine::connect(
        &[format!("https://{endpoint}")],
        EtcdOptions {
            tls: Some(pki.tls(&pki.ca, true)),
            ..options()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_url.head().await.unwrap().revision, Revision(2));

    // A CA that did not sign the server's certificate.
    let wrong_ca = EtcdEngine::connect(
        &c.endpoints(),
        quick(EtcdOptions {
            tls: Some(pki.tls(&pki.other_ca, true)),
            ..options()
        }),
    )
    .await;
    match wrong_ca {
        Err(EngineError::Unavailable(m)) => {
            assert!(m.contains(&endpoint), "{m}");
            assert!(m.contains("TLS handshake failed"), "{m}");
            assert!(m.contains("--etcd-ca-file"), "{m}");
        }
        Err(e) => panic!("expected Unavailable for a wrong CA, got {e}"),
        Ok(_) => panic!("a server certificate from another CA must be refused"),
    }
    // No client certificate, while the server requires one.
    let anonymous = EtcdEngine::connect(
        &c.endpoints(),
        quick(EtcdOptions {
            tls: Some(pki.tls(&pki.ca, false)),
            ..options()
        }),
    )
    .await;
    match anonymous {
        Err(EngineError::Unavailable(m)) => {
            assert!(
                m.contains(&endpoint) && m.contains("--etcd-cert-file"),
                "{m}"
            )
        }
        Err(e) => panic!("expected Unavailable without a client certificate, got {e}"),
        Ok(_) => panic!("etcd with --client-cert-auth must refuse a client without a certificate"),
    }
}

/// Creates `root` (root role) and `mirrorfs` (read-write on the engine's prefix), then enables
/// authentication.
async fn enable_auth(endpoints: &[String]) {
    use etcd_client::{Client, Permission};
    let mut client = Client::connect(endpoints, None).await.unwrap();
    client.user_add("root", "root-secret", None).await.unwrap();
    // etcd 3.4 creates the root role on demand; add it if this version does not.
    let _ = client.role_add("root").await;
    client.user_grant_role("root", "root").await.unwrap();
    client.user_add("mirrorfs", "secret", None).await.unwrap();
    client.role_add("mirrorfs").await.unwrap();
    client
        .role_grant_permission(
            "mirrorfs",
            Permission::read_write("mirrorfs/").with_prefix(),
        )
        .await
        .unwrap();
    client
        .user_grant_role("mirrorfs", "mirrorfs")
        .await
        .unwrap();
    client.auth_enable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_with_user_and_password() {
    let c = cluster(1);
    let endpoint = c.endpoints()[0].clone();
    enable_auth(&c.endpoints()).await;
    let as_user = |user: &str, password: &str| EtcdOptions {
        user: Some((user.into(), password.into())),
        ..quick(options())
    };

    // A user with read-write access to the engine's prefix is all the engine needs.
    let engine = EtcdEngine::connect(&c.endpoints(), as_user("mirrorfs", "secret"))
        .await
        .unwrap();
    exercise(&engine).await;
    assert_eq!(engine.compact(Revision(1)).await.unwrap(), Revision(1));
    let root = EtcdEngine::connect(&c.endpoints(), as_user("root", "root-secret"))
        .await
        .unwrap();
    assert_eq!(root.head().await.unwrap().revision, Revision(2));

    // The same user under another prefix: denied, saying what to grant.
    let elsewhere = EtcdOptions {
        prefix: b"elsewhere/".to_vec(),
        ..as_user("mirrorfs", "secret")
    };
    match EtcdEngine::connect(&c.endpoints(), elsewhere).await {
        Err(EngineError::Invalid(m)) => {
            assert!(
                m.contains(&endpoint) && m.contains("permission denied"),
                "{m}"
            );
            assert!(m.contains("\"elsewhere/\""), "{m}");
        }
        Err(e) => panic!("expected Invalid outside the user's keys, got {e}"),
        Ok(_) => panic!("a user without access to the prefix must be refused"),
    }

    // A wrong password, and no user at all.
    match EtcdEngine::connect(&c.endpoints(), as_user("mirrorfs", "wrong")).await {
        Err(EngineError::Invalid(m)) => {
            assert!(m.contains(&endpoint), "{m}");
            assert!(
                m.contains("unauthenticated") && m.contains("\"mirrorfs\""),
                "{m}"
            );
            assert!(m.contains("--etcd-password-file"), "{m}");
        }
        Err(e) => panic!("expected Invalid for a wrong password, got {e}"),
        Ok(_) => panic!("a wrong password must be refused"),
    }
    match EtcdEngine::connect(&c.endpoints(), quick(options())).await {
        Err(EngineError::Invalid(m)) => {
            assert!(
                m.contains(&endpoint) && m.contains("unauthenticated"),
                "{m}"
            )
        }
        Err(e) => panic!("expected Invalid without credentials, got {e}"),
        Ok(_) => panic!("a client without credentials must be refused"),
    }
}
