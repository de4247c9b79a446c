//! Engine tests: the conformance suite over the memory and embedded engines, and what only the
//! embedded engine promises (reopening, durability across kill -9, damaged files, limits, group
//! commit).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mirrorfs_api::Revision;
use mirrorfs_meta::engine::embedded::{EmbeddedEngine, MAX_KEY_LEN, MAX_MUTATIONS};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::engine::{
    ChangeEntry, Compare, Engine, EngineError, KeyValue, Mutation, Txn, TxnOutcome,
};

mod memory {
    use super::*;

    mirrorfs_meta::engine_conformance_tests!(|| async { MemoryEngine::new() });

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn run_all_passes() {
        // The whole suite through its public entry point, as other engines' tests may call it.
        mirrorfs_meta::engine::conformance::run_all(|| async { MemoryEngine::new() }).await;
    }
}

mod embedded {
    use super::*;

    /// A factory of embedded engines, each in its own file of one temporary directory that
    /// lives as long as the factory.
    fn factory() -> impl Fn() -> std::future::Ready<EmbeddedEngine> {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = AtomicUsize::new(0);
        move || {
            let path = dir
                .path()
                .join(format!("meta-{}.redb", n.fetch_add(1, Ordering::Relaxed)));
            std::future::ready(EmbeddedEngine::open(&path).expect("open the embedded engine"))
        }
    }

    mirrorfs_meta::engine_conformance_tests!(factory());
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn open(path: &Path) -> EmbeddedEngine {
    EmbeddedEngine::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

async fn commit(engine: &impl Engine, txn: Txn) -> Revision {
    match engine.txn(txn).await.expect("txn") {
        TxnOutcome::Committed(c) => c.revision,
        TxnOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// The whole retained changelog, checked to be gapless from `compacted + 1` to the head.
async fn changelog(engine: &impl Engine) -> Vec<ChangeEntry> {
    let head = engine.head().await.expect("head");
    let mut stream = engine.watch(Revision(0)).await.expect("watch(0)");
    let mut out = Vec::new();
    for expected in head.compacted.0 + 1..=head.revision.0 {
        let entry = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("changelog entry within 30 s")
            .expect("the stream is open")
            .expect("changelog entry");
        assert_eq!(entry.revision, Revision(expected), "changelog gap");
        out.push(entry);
    }
    out
}

async fn snapshot_pairs(engine: &impl Engine) -> (Revision, Vec<KeyValue>) {
    let snap = engine.snapshot().await.expect("snapshot");
    let mut pairs = Vec::new();
    let mut chunks = snap.chunks;
    while let Some(chunk) = chunks.next().await {
        pairs.extend(chunk.expect("snapshot chunk"));
    }
    (snap.revision, pairs)
}

/// The keyspace a full changelog replay gives.
fn replay(log: &[ChangeEntry]) -> Vec<KeyValue> {
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, Revision)> = BTreeMap::new();
    for entry in log {
        for m in &entry.mutations {
            match m {
                Mutation::Put { key, value } => {
                    model.insert(key.clone(), (value.clone(), entry.revision));
                }
                Mutation::Delete { key } => {
                    model.remove(key);
                }
                Mutation::DeleteRange { start, end } => {
                    model.retain(|k, _| !(start <= k && k < end));
                }
            }
        }
    }
    model
        .into_iter()
        .map(|(key, (value, mod_revision))| KeyValue {
            key,
            value,
            mod_revision,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reopening

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_preserves_keys_revisions_changelog_and_compaction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let engine = open(&path);
    for i in 0..20u32 {
        let mut txn = Txn::new().put(format!("k{i:02}"), i.to_be_bytes().to_vec());
        if i % 7 == 6 {
            txn.mutations.push(Mutation::DeleteRange {
                start: format!("k{:02}", i - 3).into_bytes(),
                end: format!("k{:02}", i - 1).into_bytes(),
            });
        }
        commit(&engine, txn).await;
    }
    assert_eq!(
        engine.compact(Revision(5)).await.expect("compact"),
        Revision(5)
    );
    let head = engine.head().await.expect("head");
    let log = changelog(&engine).await;
    let snap = snapshot_pairs(&engine).await;
    drop(engine);

    let engine = open(&path);
    assert_eq!(
        engine.head().await.expect("head"),
        head,
        "head after reopen"
    );
    assert_eq!(changelog(&engine).await, log, "changelog after reopen");
    assert_eq!(snapshot_pairs(&engine).await, snap, "keyspace after reopen");
    assert!(matches!(
        engine.watch(Revision(5)).await,
        Err(EngineError::Compacted { .. })
    ));
    let next = engine
        .txn(Txn::new().put("after", "reopen"))
        .await
        .expect("txn after reopen");
    let TxnOutcome::Committed(c) = next else {
        panic!("conflict after reopen")
    };
    assert_eq!(c.revision, Revision(21), "revisions continue after reopen");
    assert!(c.time >= head.time, "commit times continue after reopen");
    drop(engine);

    // A third open sees the commit made after the second.
    let engine = open(&path);
    assert_eq!(engine.head().await.expect("head").revision, Revision(21));
    assert_eq!(
        engine.get(b"after").await.expect("get").map(|kv| kv.value),
        Some(b"reopen".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_compaction_finishes_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let engine = Arc::new(open(&path));
    // More entries than one cleanup chunk, committed concurrently to keep it quick.
    let mut tasks = Vec::new();
    for t in 0..50 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                commit(&*engine, Txn::new().put(format!("t{t}/{i}"), "v")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    assert_eq!(
        engine.compact(Revision(19_990)).await.expect("compact"),
        Revision(19_990)
    );
    // Commits go on while the old entries are dropped.
    for i in 0..5 {
        commit(&*engine, Txn::new().put(format!("late{i}"), "v")).await;
    }
    let log = changelog(&*engine).await;
    assert_eq!(log.first().map(|e| e.revision), Some(Revision(19_991)));
    assert_eq!(log.len(), 15);
    drop(log);
    let engine = Arc::into_inner(engine).expect("no other engine handle");
    drop(engine);
    let engine = open(&path);
    assert_eq!(
        changelog(&engine).await.len(),
        15,
        "compaction survives reopen"
    );
}

// ---------------------------------------------------------------------------------------------
// kill -9

/// Set in the child process: the database file to write to.
const CHILD_DB: &str = "MIRRORFS_TEST_ENGINE_WRITER_DB";
/// Set in the child process: a tag making its keys unique across rounds.
const CHILD_ROUND: &str = "MIRRORFS_TEST_ENGINE_WRITER_ROUND";

/// Not a test on its own: the writer that `acknowledged_commits_survive_kill_9` runs in a child
/// process (this test binary, re-executed with `CHILD_DB` set) and kills. Prints `ACK <revision>
/// <key>` for every acknowledged commit.
#[test]
fn kill9_writer_child() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let round = std::env::var(CHILD_ROUND).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let engine = Arc::new(open(Path::new(&db)));
        for t in 0..32 {
            let engine = engine.clone();
            let round = round.clone();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let key = format!("r{round}/t{t}/{i}");
                    let value = vec![(i % 251) as u8; 512 + (i as usize % 1024)];
                    let txn = Txn::new()
                        .when(Compare::absent(key.clone()))
                        .put(key.clone(), value);
                    match engine.txn(txn).await {
                        Ok(TxnOutcome::Committed(c)) => println!("ACK {} {key}", c.revision),
                        other => panic!("writer: unexpected {other:?}"),
                    }
                }
            });
        }
        // The parent kills this process long before; never linger if it does not.
        tokio::time::sleep(Duration::from_secs(60)).await;
        eprintln!("writer: not killed within 60 s");
        std::process::exit(3);
    });
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let exe = std::env::current_exe().expect("test binary path");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut acked: Vec<(Revision, String)> = Vec::new();

    for round in 0..3u32 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill9_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &path)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines) = std::sync::mpsc::channel::<(Revision, String)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                if let (Some("ACK"), Some(rev), Some(key), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    let rev = rev.parse().expect("revision in an ACK line");
                    if lines_tx.send((Revision(rev), key.to_string())).is_err() {
                        break;
                    }
                }
            }
        });

        // Kill at a different point of each round, once the writer is well under way.
        let wanted = 300 + 700 * round as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < wanted {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(ack) => {
                    acked.push(ack);
                    seen += 1;
                }
                Err(_) => {
                    if let Some(status) = child.try_wait().expect("child status") {
                        panic!("the writer exited early with {status}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the writer acknowledged only {seen} commits in 60 s"
                    );
                }
            }
        }
        // `Child::kill` sends SIGKILL to this child's pid.
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("reap the writer");
        assert!(!status.success(), "the writer was killed: {status}");
        reader.join().expect("stdout reader");
        acked.extend(lines.try_iter());

        runtime.block_on(async {
            let engine = open(&path);
            let head = engine.head().await.expect("head");
            let log = changelog(&engine).await;
            assert_eq!(
                log.len() as u64,
                head.revision.0,
                "the changelog must run from 1 to the head"
            );
            for (revision, key) in &acked {
                assert!(
                    *revision <= head.revision,
                    "acknowledged revision {revision} is past the recovered head {}",
                    head.revision
                );
                let kv = engine
                    .get(key.as_bytes())
                    .await
                    .expect("get")
                    .unwrap_or_else(|| {
                        panic!("acknowledged key {key} (revision {revision}) is lost after kill -9")
                    });
                assert_eq!(kv.mod_revision, *revision, "key {key}");
            }
            let (snap_rev, pairs) = snapshot_pairs(&engine).await;
            assert_eq!(snap_rev, head.revision);
            assert_eq!(
                pairs,
                replay(&log),
                "the keyspace equals its changelog replayed"
            );
            eprintln!(
                "round {round}: {} commits acknowledged so far, {} recovered",
                acked.len(),
                head.revision
            );
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged and unusable files

fn assert_names_file(result: Result<EmbeddedEngine, EngineError>, path: &Path, what: &str) {
    let location = path.display().to_string();
    match result {
        Ok(_) => panic!("{what}: opening must fail"),
        Err(EngineError::Corrupt {
            location: l,
            detail,
        }) => {
            assert!(
                l.contains(&location),
                "{what}: {l} does not name {location}"
            );
            assert!(!detail.is_empty());
        }
        Err(EngineError::Io { location: l, .. }) => {
            assert!(
                l.contains(&location),
                "{what}: {l} does not name {location}"
            );
        }
        Err(other) => panic!("{what}: expected Corrupt or Io naming the file, got {other}"),
    }
}

#[test]
fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let mut garbage = Vec::with_capacity(64 * 1024);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..garbage.capacity() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        garbage.push(x as u8);
    }
    std::fs::write(&path, &garbage).expect("write garbage");
    let result = EmbeddedEngine::open(&path);
    if let Err(e) = &result {
        eprintln!("garbage file: {e}");
    }
    assert_names_file(result, &path, "a file of random bytes");

    std::fs::write(&path, b"not a database").expect("write text");
    assert_names_file(EmbeddedEngine::open(&path), &path, "a short text file");
}

#[test]
fn a_directory_or_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_names_file(EmbeddedEngine::open(dir.path()), dir.path(), "a directory");
    let missing = dir.path().join("no-such-dir").join("meta.redb");
    assert_names_file(
        EmbeddedEngine::open(&missing),
        &missing,
        "a file in a missing directory",
    );
}

#[test]
fn a_file_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.redb");
    let _first = open(&path);
    let result = EmbeddedEngine::open(&path);
    if let Err(e) = &result {
        eprintln!("second open: {e}");
    }
    assert_names_file(result, &path, "a file another engine has open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_pages_never_panic() {
    // Overwrite parts of a valid file: opening or reading may fail, but only with an error.
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.redb");
    {
        let engine = open(&good);
        for i in 0..200u32 {
            commit(
                &engine,
                Txn::new().put(format!("key{i:04}"), vec![7u8; 300]),
            )
            .await;
        }
    }
    let bytes = std::fs::read(&good).expect("read the file");
    let mut outcomes = Vec::new();
    for (n, (start, len)) in [(0, 512), (512, 4096), (4096, 8192), (bytes.len() / 2, 4096)]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("damaged-{n}.redb"));
        let mut damaged = bytes.clone();
        let end = (start + len).min(damaged.len());
        for (i, b) in damaged[start..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0xa5;
        }
        std::fs::write(&path, &damaged).expect("write the damaged file");
        let outcome = match EmbeddedEngine::open(&path) {
            Err(e) => {
                let location = path.display().to_string();
                let named = match &e {
                    EngineError::Corrupt { location: l, .. }
                    | EngineError::Io { location: l, .. } => l.contains(&location),
                    _ => false,
                };
                assert!(
                    named,
                    "damage at {start}: the error must name the file: {e}"
                );
                format!("open failed: {e}")
            }
            Ok(engine) => {
                let read = engine.range(b"", b"\xff", usize::MAX).await;
                let log = engine.watch(Revision(0)).await;
                format!(
                    "opened; range: {}; watch: {}",
                    match read {
                        Ok(pairs) => format!("{} pairs", pairs.len()),
                        Err(e) => e.to_string(),
                    },
                    if log.is_ok() { "ok" } else { "failed" }
                )
            }
        };
        outcomes.push(format!("damage at {start}+{len}: {outcome}"));
    }
    eprintln!("{}", outcomes.join("\n"));
    // Truncated to half.
    let path = dir.path().join("truncated.redb");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write the truncated file");
    if let Err(e) = EmbeddedEngine::open(&path) {
        eprintln!("truncated: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_transactions_are_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(&dir.path().join("meta.redb"));
    let too_many = Txn {
        compares: vec![],
        mutations: (0..=MAX_MUTATIONS)
            .map(|i| Mutation::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![],
            })
            .collect(),
    };
    assert!(matches!(
        engine.txn(too_many).await,
        Err(EngineError::Invalid(_))
    ));
    let long_key = Txn::new().put(vec![b'k'; MAX_KEY_LEN + 1], "v");
    match engine.txn(long_key).await {
        Err(EngineError::Invalid(m)) => assert!(m.contains("4096"), "{m}"),
        other => panic!("a key over the limit must be Invalid, got {other:?}"),
    }
    let long_range = Txn {
        compares: vec![],
        mutations: vec![Mutation::DeleteRange {
            start: vec![],
            end: vec![0xff; MAX_KEY_LEN + 1],
        }],
    };
    assert!(matches!(
        engine.txn(long_range).await,
        Err(EngineError::Invalid(_))
    ));
    assert_eq!(
        engine.head().await.expect("head").revision,
        Revision(0),
        "rejected transactions commit nothing"
    );
    // The limits themselves are accepted.
    let at_limit = Txn {
        compares: vec![],
        mutations: (0..MAX_MUTATIONS)
            .map(|i| Mutation::Put {
                key: format!("k{i:05}").into_bytes(),
                value: vec![1],
            })
            .collect(),
    }
    .put(vec![b'k'; MAX_KEY_LEN], "v");
    let mut at_limit = at_limit;
    at_limit.mutations.remove(0);
    assert_eq!(commit(&engine, at_limit).await, Revision(1));
}

// ---------------------------------------------------------------------------------------------
// Group commit

async fn measure(path: PathBuf, writers: usize, total: usize) -> (f64, f64) {
    let engine = Arc::new(open(&path));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / writers {
                commit(
                    &*engine,
                    Txn::new().put(format!("w{w}/{i}"), vec![1u8; 100]),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = engine.group_commit_stats();
    assert_eq!(stats.txns, total as u64);
    let per_commit = stats.txns as f64 / stats.commits as f64;
    eprintln!(
        "group commit: {writers:>2} writers: {total} txns in {elapsed:.2} s = {:.0} txns/s, {} fsyncs, {per_commit:.1} txns per fsync",
        total as f64 / elapsed,
        stats.commits
    );
    (total as f64 / elapsed, per_commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, alone) = measure(dir.path().join("one.redb"), 1, 200).await;
    assert_eq!(alone, 1.0, "a lone writer gets one commit per transaction");
    let (_, shared) = measure(dir.path().join("many.redb"), 64, 3200).await;
    assert!(
        shared > 1.5,
        "64 concurrent writers must share commits, got {shared:.2} transactions per commit"
    );
}
