//! The conformance suite: the engine contract of [`super`] as executable checks, run over every
//! engine (memory, embedded, etcd) so that they all behave alike.
//!
//! Each check is a public async function taking a fresh, empty engine; it panics with a message
//! that says which part of the contract broke. [`run_all`] runs every check, each on a new
//! engine from a factory; [`engine_conformance_tests!`](crate::engine_conformance_tests)
//! generates one `#[tokio::test]` per check instead, so that a failure names its check. The
//! checks need a multi-threaded tokio runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mirrorfs_api::Revision;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    ChangeEntry, ChangeStream, Commit, CommitTime, Compare, Engine, EngineError, Head, KeyValue,
    Mutation, Txn, TxnOutcome, prefix_end,
};

/// How long a check waits for something the engine should deliver promptly.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs every check, each on a new engine from `make`.
pub async fn run_all<E, F, Fut>(make: F)
where
    E: Engine,
    F: Fn() -> Fut,
    Fut: Future<Output = E>,
{
    revisions_start_at_one_and_increase_by_one(Arc::new(make().await)).await;
    conflicts_commit_nothing(Arc::new(make().await)).await;
    compares_on_absent_keys(Arc::new(make().await)).await;
    get_and_range(Arc::new(make().await)).await;
    binary_keys(Arc::new(make().await)).await;
    delete_and_delete_range(Arc::new(make().await)).await;
    watch_replays_then_follows(Arc::new(make().await)).await;
    watch_has_no_gap_under_concurrent_commits(Arc::new(make().await)).await;
    concurrent_compare_and_swap(Arc::new(make().await)).await;
    compaction(Arc::new(make().await)).await;
    snapshot_is_consistent_while_writers_run(Arc::new(make().await)).await;
}

/// Generates one `#[tokio::test]` per conformance check. `$make` is evaluated in each test and
/// must give a factory: a closure returning a future of a fresh engine.
///
/// ```ignore
/// mirrorfs_meta::engine_conformance_tests!(|| async { MemoryEngine::new() });
/// ```
#[macro_export]
macro_rules! engine_conformance_tests {
    ($make:expr) => {
        $crate::engine_conformance_tests!(@each $make;
            revisions_start_at_one_and_increase_by_one,
            conflicts_commit_nothing,
            compares_on_absent_keys,
            get_and_range,
            binary_keys,
            delete_and_delete_range,
            watch_replays_then_follows,
            watch_has_no_gap_under_concurrent_commits,
            concurrent_compare_and_swap,
            compaction,
            snapshot_is_consistent_while_writers_run,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let make = $make;
                let engine = ::std::sync::Arc::new(make().await);
                $crate::engine::conformance::$check(engine).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn commit<E: Engine + ?Sized>(engine: &E, txn: Txn) -> Commit {
    match engine.txn(txn.clone()).await {
        Ok(TxnOutcome::Committed(c)) => c,
        Ok(TxnOutcome::Conflict) => panic!(
            "{}: expected {txn:?} to commit, it conflicted",
            engine.kind()
        ),
        Err(e) => panic!(
            "{}: expected {txn:?} to commit, it failed: {e}",
            engine.kind()
        ),
    }
}

async fn conflict<E: Engine + ?Sized>(engine: &E, txn: Txn) {
    match engine.txn(txn.clone()).await {
        Ok(TxnOutcome::Conflict) => {}
        other => panic!(
            "{}: expected {txn:?} to conflict, got {other:?}",
            engine.kind()
        ),
    }
}

async fn head<E: Engine + ?Sized>(engine: &E) -> Head {
    engine
        .head()
        .await
        .unwrap_or_else(|e| panic!("{}: head() failed: {e}", engine.kind()))
}

async fn get<E: Engine + ?Sized>(engine: &E, key: &[u8]) -> Option<KeyValue> {
    engine
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("{}: get({key:?}) failed: {e}", engine.kind()))
}

async fn range<E: Engine + ?Sized>(
    engine: &E,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Vec<KeyValue> {
    engine
        .range(start, end, limit)
        .await
        .unwrap_or_else(|e| panic!("{}: range({start:?}, {end:?}) failed: {e}", engine.kind()))
}

async fn watch<E: Engine + ?Sized>(engine: &E, from: u64) -> ChangeStream {
    engine
        .watch(Revision(from))
        .await
        .unwrap_or_else(|e| panic!("{}: watch({from}) failed: {e}", engine.kind()))
}

async fn next_entry(stream: &mut ChangeStream, what: &str) -> ChangeEntry {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(entry))) => entry,
        Ok(Some(Err(e))) => panic!("{what}: the watch stream failed: {e}"),
        Ok(None) => panic!("{what}: the watch stream ended"),
        Err(_) => panic!("{what}: no changelog entry within {DEADLINE:?}"),
    }
}

/// Reads `count` entries and checks they are `first, first+1, …` with non-decreasing times.
async fn expect_entries(
    stream: &mut ChangeStream,
    first: u64,
    count: u64,
    what: &str,
) -> Vec<ChangeEntry> {
    let mut out = Vec::new();
    let mut last_time = CommitTime(0);
    for i in 0..count {
        let e = next_entry(stream, what).await;
        assert_eq!(
            e.revision,
            Revision(first + i),
            "{what}: changelog entries must arrive in order with no gap"
        );
        assert!(
            e.time >= last_time,
            "{what}: commit time went back from {last_time:?} to {:?} at revision {}",
            e.time,
            e.revision
        );
        last_time = e.time;
        out.push(e);
    }
    out
}

/// Asserts that nothing arrives on `stream` for a short while.
async fn expect_quiet(stream: &mut ChangeStream, what: &str) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
        panic!("{what}: expected nothing new, got {item:?}");
    }
}

/// Every changelog entry from the start of retained history up to the head.
async fn changelog<E: Engine + ?Sized>(engine: &E, from: u64) -> Vec<ChangeEntry> {
    let h = head(engine).await;
    let first = from.max(h.compacted.0 + 1);
    let mut stream = watch(engine, from).await;
    expect_entries(&mut stream, first, h.revision.0 + 1 - first, "changelog").await
}

fn kv(key: &[u8], value: &[u8], revision: u64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        mod_revision: Revision(revision),
    }
}

/// The keyspace a changelog replay gives: key → (value, mod revision).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Revision)>;

fn replay(model: &mut Model, entry: &ChangeEntry) {
    for m in &entry.mutations {
        match m {
            Mutation::Put { key, value } => {
                model.insert(key.clone(), (value.clone(), entry.revision));
            }
            Mutation::Delete { key } => {
                model.remove(key);
            }
            Mutation::DeleteRange { start, end } => {
                if start < end {
                    let doomed: Vec<_> = model
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        model.remove(&k);
                    }
                }
            }
        }
    }
}

fn model_pairs(model: &Model) -> Vec<KeyValue> {
    model
        .iter()
        .map(|(k, (v, r))| KeyValue {
            key: k.clone(),
            value: v.clone(),
            mod_revision: *r,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks

/// A fresh engine is at revision 0; each commit gets the next revision, times never decrease,
/// and `head()` follows. Every successful transaction counts, even one that writes nothing.
pub async fn revisions_start_at_one_and_increase_by_one<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    assert_eq!(
        head(e).await,
        Head::default(),
        "a fresh engine must be at revision 0"
    );
    let mut last = CommitTime(0);
    for i in 1..=10u64 {
        let before = CommitTime::now();
        let c = commit(e, Txn::new().put(format!("k{i}"), format!("v{i}"))).await;
        let after = CommitTime::now();
        assert_eq!(c.revision, Revision(i), "commit {i} must get revision {i}");
        assert!(
            c.time >= last,
            "commit time went back: {last:?} then {:?}",
            c.time
        );
        // Loose bounds: the commit time is the wall clock at commit, unless the clock went back.
        assert!(
            c.time.0 + 5_000 >= before.0 && c.time.0 <= after.0.max(last.0) + 5_000,
            "commit time {:?} is far from the wall clock ({before:?}..{after:?})",
            c.time
        );
        last = c.time;
        let h = head(e).await;
        assert_eq!(
            (h.revision, h.time, h.compacted),
            (c.revision, c.time, Revision(0)),
            "head() must report the latest commit"
        );
    }
    let empty = commit(e, Txn::new()).await;
    assert_eq!(
        empty.revision,
        Revision(11),
        "an empty transaction still commits a revision"
    );
    let only_compares = commit(e, Txn::new().when(Compare::absent("nothing-here"))).await;
    assert_eq!(only_compares.revision, Revision(12));
    let log = changelog(e, 0).await;
    assert_eq!(log.len(), 12);
    assert!(log[10].mutations.is_empty() && log[11].mutations.is_empty());
    assert_eq!(
        log[0].mutations,
        vec![Mutation::Put {
            key: b"k1".to_vec(),
            value: b"v1".to_vec()
        }]
    );
}

/// A transaction whose compares do not all hold writes nothing and uses no revision.
pub async fn conflicts_commit_nothing<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    let a = commit(e, Txn::new().put("a", "1")).await;
    assert_eq!(a.revision, Revision(1));
    let a_kv = get(e, b"a").await.expect("a was just written");

    // Absent compare on a present key.
    conflict(e, Txn::new().when(Compare::absent("a")).put("b", "x")).await;
    // Wrong revision.
    conflict(
        e,
        Txn::new()
            .when(Compare::ModRevision {
                key: b"a".to_vec(),
                revision: Revision(7),
            })
            .put("b", "x"),
    )
    .await;
    // One holding compare and one failing one.
    conflict(
        e,
        Txn::new()
            .when(Compare::unchanged(&a_kv))
            .when(Compare::absent("a"))
            .put("b", "x")
            .delete("a"),
    )
    .await;

    assert_eq!(
        get(e, b"b").await,
        None,
        "a conflicting transaction must write nothing"
    );
    assert_eq!(
        get(e, b"a").await,
        Some(kv(b"a", b"1", 1)),
        "a conflicting transaction must delete nothing"
    );
    assert_eq!(
        head(e).await.revision,
        Revision(1),
        "a conflict must not use a revision"
    );

    let next = commit(e, Txn::new().when(Compare::unchanged(&a_kv)).put("a", "2")).await;
    assert_eq!(
        next.revision,
        Revision(2),
        "the commit after conflicts gets the next revision"
    );
    // The old read is now stale.
    conflict(e, Txn::new().when(Compare::unchanged(&a_kv)).put("a", "3")).await;
    assert_eq!(get(e, b"a").await, Some(kv(b"a", b"2", 2)));
    let log = changelog(e, 0).await;
    assert_eq!(log.len(), 2, "conflicts must not appear in the changelog");
}

/// `Compare::absent` holds exactly while a key does not exist, including after deletes.
pub async fn compares_on_absent_keys<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    commit(e, Txn::new().when(Compare::absent("k")).put("k", "1")).await;
    conflict(e, Txn::new().when(Compare::absent("k")).put("k", "2")).await;
    // A non-zero revision on an absent key never holds.
    conflict(
        e,
        Txn::new().when(Compare::ModRevision {
            key: b"other".to_vec(),
            revision: Revision(1),
        }),
    )
    .await;
    commit(e, Txn::new().delete("k")).await;
    let c = commit(e, Txn::new().when(Compare::absent("k")).put("k", "3")).await;
    assert_eq!(get(e, b"k").await, Some(kv(b"k", b"3", c.revision.0)));
    commit(e, Txn::new().delete_range(b"a", b"z")).await;
    commit(e, Txn::new().when(Compare::absent("k")).put("k", "4")).await;
    // Compares see the state before the transaction's own mutations.
    let k = get(e, b"k").await.expect("k exists");
    commit(
        e,
        Txn::new()
            .when(Compare::unchanged(&k))
            .when(Compare::absent("fresh"))
            .put("fresh", "1")
            .delete("k"),
    )
    .await;
    assert_eq!(get(e, b"k").await, None);
    assert!(get(e, b"fresh").await.is_some());
}

/// Gets and ranges: key order, half-open bounds, limits, empty and inverted ranges, overwrites.
pub async fn get_and_range<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    assert_eq!(get(e, b"missing").await, None);
    assert!(
        range(e, b"", &[0xff; 4], 100).await.is_empty(),
        "a fresh engine is empty"
    );
    let keys: [&[u8]; 6] = [b"d", b"b", b"a", b"c", b"ca", b"e"];
    let mut txn = Txn::new();
    for k in keys {
        txn = txn.put(k, [b"v-".as_slice(), k].concat());
    }
    let c1 = commit(e, txn).await.revision.0;
    let c2 = commit(e, Txn::new().put("c", "second").put("empty", ""))
        .await
        .revision
        .0;

    assert_eq!(get(e, b"a").await, Some(kv(b"a", b"v-a", c1)));
    assert_eq!(
        get(e, b"c").await,
        Some(kv(b"c", b"second", c2)),
        "an overwrite updates value and revision"
    );
    assert_eq!(
        get(e, b"empty").await,
        Some(kv(b"empty", b"", c2)),
        "empty values are values"
    );

    let all = range(e, b"", &[0xff], usize::MAX).await;
    let names: Vec<&[u8]> = all.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(
        names,
        [b"a".as_slice(), b"b", b"c", b"ca", b"d", b"e", b"empty"],
        "range must return keys in order"
    );
    assert_eq!(
        range(e, b"b", b"d", 100)
            .await
            .iter()
            .map(|k| k.key.clone())
            .collect::<Vec<_>>(),
        [b"b".to_vec(), b"c".to_vec(), b"ca".to_vec()],
        "range is [start, end)"
    );
    assert_eq!(
        range(e, b"c", &prefix_end(b"c"), 100).await.len(),
        2,
        "prefix range"
    );
    assert_eq!(
        range(e, b"bb", b"cb", 100).await.len(),
        2,
        "bounds need not be keys"
    );
    assert_eq!(
        range(e, b"", &[0xff], 3).await,
        all[..3].to_vec(),
        "limit keeps the first keys"
    );
    assert_eq!(range(e, b"", &[0xff], 1).await, all[..1].to_vec());
    assert!(
        range(e, b"", &[0xff], 0).await.is_empty(),
        "limit 0 returns nothing"
    );
    assert!(
        range(e, b"c", b"c", 100).await.is_empty(),
        "an empty range returns nothing"
    );
    assert!(
        range(e, b"d", b"b", 100).await.is_empty(),
        "an inverted range returns nothing"
    );
    assert!(range(e, b"f", b"z", 100).await.is_empty());
    assert_eq!(
        range(e, b"c", b"c\x00", 100).await,
        vec![kv(b"c", b"second", c2)]
    );
}

/// Keys and values are bytes: 0x00 and 0xff, the empty key, and keys that prefix each other.
pub async fn binary_keys<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xff],
        vec![0x01],
        vec![0x7f, 0x80],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
    ];
    let mut txn = Txn::new();
    for (i, k) in keys.iter().enumerate().rev() {
        txn = txn.put(k.clone(), vec![0xff, 0x00, i as u8]);
    }
    let rev = commit(e, txn).await.revision.0;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            get(e, k).await,
            Some(kv(k, &[0xff, 0x00, i as u8], rev)),
            "get({k:?})"
        );
    }
    let all = range(e, b"", &[0xff; 4], usize::MAX).await;
    assert_eq!(
        all.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        keys,
        "binary keys in byte order"
    );
    let ff = range(e, &[0xff], &[0xff, 0xff, 0xff, 0x00], 100).await;
    assert_eq!(
        ff.len(),
        4,
        "[0xff, 0xffffff00) holds 0xff, 0xff00, 0xffff, 0xffffff"
    );
    assert_eq!(range(e, &[0xff, 0x00], &[0xff, 0xff], 100).await.len(), 1);
    let zeros = range(e, &[0x00], &prefix_end(&[0x00]), 100).await;
    assert_eq!(zeros.len(), 3);
    assert_eq!(
        range(e, &[], &[0x00], 100).await,
        vec![kv(&[], &[0xff, 0x00, 0], rev)],
        "the empty key sorts first"
    );
}

/// Delete and DeleteRange remove what they name and nothing else; mutations apply in order and
/// the changelog records them verbatim.
pub async fn delete_and_delete_range<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    let mut txn = Txn::new();
    for k in ["a", "b", "b\x00", "c", "c\u{7f}", "d", "e"] {
        txn = txn.put(k, "v");
    }
    commit(e, txn).await;
    commit(e, Txn::new().delete("a")).await;
    assert_eq!(get(e, b"a").await, None);
    let absent = commit(e, Txn::new().delete("never")).await;
    assert_eq!(
        absent.revision,
        Revision(3),
        "deleting an absent key still commits"
    );

    let dr = Txn::new().delete_range(b"b", b"d");
    commit(e, dr.clone()).await;
    let left: Vec<Vec<u8>> = range(e, b"", &[0xff], 100)
        .await
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        left,
        [b"d".to_vec(), b"e".to_vec()],
        "DeleteRange deletes [start, end)"
    );

    // Ranges that match nothing, are empty or inverted, delete nothing.
    commit(e, Txn::new().delete_range(b"x", b"z")).await;
    commit(e, Txn::new().delete_range(b"d", b"d")).await;
    commit(e, Txn::new().delete_range(b"e", b"d")).await;
    assert_eq!(range(e, b"", &[0xff], 100).await.len(), 2);

    // Mutations apply in order within a transaction.
    let c = commit(
        e,
        Txn::new()
            .put("k", "1")
            .put("k", "2")
            .delete("d")
            .put("d", "again"),
    )
    .await;
    assert_eq!(get(e, b"k").await, Some(kv(b"k", b"2", c.revision.0)));
    assert_eq!(get(e, b"d").await, Some(kv(b"d", b"again", c.revision.0)));
    let c = commit(e, Txn::new().put("m", "1").delete_range(b"k", b"n")).await;
    assert_eq!(get(e, b"m").await, None);
    assert_eq!(get(e, b"k").await, None);
    let _ = c;

    let log = changelog(e, 0).await;
    assert_eq!(
        log[3].mutations,
        vec![Mutation::DeleteRange {
            start: b"b".to_vec(),
            end: b"d".to_vec()
        }],
        "DeleteRange is recorded verbatim, not as the deletes it caused"
    );
    assert_eq!(
        log[6].mutations,
        vec![Mutation::DeleteRange {
            start: b"e".to_vec(),
            end: b"d".to_vec()
        }]
    );
    assert_eq!(
        log[2].mutations,
        vec![Mutation::Delete {
            key: b"never".to_vec()
        }]
    );
}

/// Watch from 0, from the middle, and from the future; live commits arrive in order, as do
/// the mutations and times that were committed.
pub async fn watch_replays_then_follows<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    let mut from_empty = watch(e, 0).await;
    let mut commits = Vec::new();
    for i in 1..=5u64 {
        commits.push(
            commit(
                e,
                Txn::new().put(format!("k{i}"), format!("{i}")).delete("x"),
            )
            .await,
        );
    }
    let got = expect_entries(&mut from_empty, 1, 5, "watch(0) started on an empty engine").await;
    for (entry, c) in got.iter().zip(&commits) {
        assert_eq!(entry.time, c.time, "the changelog keeps the commit time");
    }
    assert_eq!(
        got[2].mutations,
        vec![
            Mutation::Put {
                key: b"k3".to_vec(),
                value: b"3".to_vec()
            },
            Mutation::Delete { key: b"x".to_vec() }
        ]
    );

    let mut from_zero = watch(e, 0).await;
    let mut from_one = watch(e, 1).await;
    let mut from_middle = watch(e, 3).await;
    let mut from_next = watch(e, 6).await;
    expect_entries(&mut from_zero, 1, 5, "watch(0)").await;
    expect_entries(&mut from_one, 1, 5, "watch(1)").await;
    expect_entries(&mut from_middle, 3, 3, "watch(3)").await;
    expect_quiet(&mut from_next, "watch(head + 1) before any new commit").await;
    expect_quiet(&mut from_zero, "watch(0) after catching up").await;

    for i in 6..=8u64 {
        commit(e, Txn::new().put(format!("k{i}"), format!("{i}"))).await;
    }
    for (stream, what) in [
        (&mut from_empty, "watch(0) early"),
        (&mut from_zero, "watch(0)"),
        (&mut from_one, "watch(1)"),
        (&mut from_middle, "watch(3)"),
        (&mut from_next, "watch(head + 1)"),
    ] {
        let live = expect_entries(stream, 6, 3, what).await;
        assert_eq!(
            live[0].mutations,
            vec![Mutation::Put {
                key: b"k6".to_vec(),
                value: b"6".to_vec()
            }]
        );
    }
    // Dropping a watcher does not disturb the others or the engine.
    drop(from_zero);
    commit(e, Txn::new().put("k9", "9")).await;
    expect_entries(&mut from_one, 9, 1, "watch(1) after another watcher left").await;
}

/// Many tasks committing at once: a watcher sees every revision exactly once, in order.
pub async fn watch_has_no_gap_under_concurrent_commits<E: Engine>(engine: Arc<E>) {
    const TASKS: u64 = 16;
    const EACH: u64 = 25;
    let mut stream = watch(&*engine, 0).await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                commit(&*engine, Txn::new().put(format!("t{t}/{i}"), "v")).await;
            }
        }));
    }
    let entries = expect_entries(
        &mut stream,
        1,
        TASKS * EACH,
        "watch(0) during concurrent commits",
    )
    .await;
    for t in tasks {
        t.await.expect("a writer task panicked");
    }
    let mut seen = std::collections::HashSet::new();
    for entry in &entries {
        let [Mutation::Put { key, .. }] = entry.mutations.as_slice() else {
            panic!(
                "unexpected mutations at revision {}: {:?}",
                entry.revision, entry.mutations
            );
        };
        assert!(
            seen.insert(key.clone()),
            "key {key:?} appeared twice in the changelog"
        );
    }
    assert_eq!(head(&*engine).await.revision, Revision(TASKS * EACH));
}

/// 64 tasks × 50 compare-and-swap increments of one counter: the final value is exact, every
/// commit is one increment, and the changelog is gapless.
pub async fn concurrent_compare_and_swap<E: Engine>(engine: Arc<E>) {
    const TASKS: u64 = 64;
    const EACH: u64 = 50;
    commit(&*engine, Txn::new().put("counter", "0")).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let cur = get(&*engine, b"counter").await.expect("the counter exists");
                    let n: u64 = std::str::from_utf8(&cur.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("the counter holds a number");
                    let txn = Txn::new()
                        .when(Compare::unchanged(&cur))
                        .put("counter", (n + 1).to_string());
                    match engine.txn(txn).await {
                        Ok(TxnOutcome::Committed(_)) => break,
                        Ok(TxnOutcome::Conflict) => conflicts += 1,
                        Err(e) => panic!("{}: increment failed: {e}", engine.kind()),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("an increment task panicked");
    }
    let total = TASKS * EACH;
    let counter = get(&*engine, b"counter").await.expect("the counter exists");
    assert_eq!(
        counter.value,
        total.to_string().into_bytes(),
        "lost or doubled increments"
    );
    assert_eq!(counter.mod_revision, Revision(total + 1));
    assert_eq!(
        head(&*engine).await.revision,
        Revision(total + 1),
        "every commit is exactly one increment"
    );
    let log = changelog(&*engine, 0).await;
    for (i, entry) in log.iter().enumerate() {
        assert_eq!(
            entry.mutations,
            vec![Mutation::Put {
                key: b"counter".to_vec(),
                value: i.to_string().into_bytes()
            }],
            "revision {} must set the counter to {i}",
            entry.revision
        );
    }
}

/// Compaction drops history up to a point (capped at the head, never moving back); watching
/// below it fails with `Compacted`, above it works, and keys are kept.
pub async fn compaction<E: Engine>(engine: Arc<E>) {
    let e = &*engine;
    assert_eq!(
        e.compact(Revision(5))
            .await
            .expect("compact on an empty engine"),
        Revision(0),
        "compaction is capped at the head"
    );
    for i in 1..=10u64 {
        commit(e, Txn::new().put(format!("k{i:02}"), format!("{i}"))).await;
    }
    let mut live = watch(e, 8).await;
    assert_eq!(
        e.compact(Revision(4)).await.expect("compact(4)"),
        Revision(4)
    );
    let h = head(e).await;
    assert_eq!((h.revision, h.compacted), (Revision(10), Revision(4)));
    for from in [1u64, 3, 4] {
        match e.watch(Revision(from)).await {
            Err(EngineError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!(
                    (requested, compacted),
                    (Revision(from), Revision(4)),
                    "watch({from})"
                );
            }
            Err(other) => {
                panic!("watch({from}) below the compaction point: expected Compacted, got {other}")
            }
            Ok(_) => panic!("watch({from}) below the compaction point must fail with Compacted"),
        }
    }
    let mut from_five = watch(e, 5).await;
    expect_entries(&mut from_five, 5, 6, "watch(compacted + 1)").await;
    let mut from_zero = watch(e, 0).await;
    expect_entries(
        &mut from_zero,
        5,
        6,
        "watch(0) starts at the retained history",
    )
    .await;
    expect_entries(&mut live, 8, 3, "a watcher above the compaction point").await;

    assert_eq!(
        e.compact(Revision(2)).await.expect("compact(2)"),
        Revision(4),
        "compaction never moves back"
    );
    assert_eq!(
        range(e, b"k", b"l", 100).await.len(),
        10,
        "compaction keeps keys"
    );
    assert_eq!(
        get(e, b"k01").await,
        Some(kv(b"k01", b"1", 1)),
        "compaction keeps mod revisions"
    );

    let c = commit(e, Txn::new().put("k11", "11")).await;
    assert_eq!(c.revision, Revision(11));
    expect_entries(&mut from_five, 11, 1, "watch(5) after compaction").await;
    expect_entries(&mut live, 11, 1, "watch(8) after compaction").await;

    assert_eq!(
        e.compact(Revision(1_000)).await.expect("compact(1000)"),
        Revision(11),
        "compaction is capped at the head"
    );
    assert_eq!(head(e).await.compacted, Revision(11));
    let mut at_head = watch(e, 12).await;
    assert!(matches!(
        e.watch(Revision(11)).await,
        Err(EngineError::Compacted { .. })
    ));
    let mut zero = watch(e, 0).await;
    expect_quiet(&mut zero, "watch(0) with all history compacted").await;
    commit(e, Txn::new().put("k12", "12")).await;
    expect_entries(
        &mut at_head,
        12,
        1,
        "watch(compacted + 1) with all history compacted",
    )
    .await;
    expect_entries(&mut zero, 12, 1, "watch(0) with all history compacted").await;
}

/// Snapshots taken while writers run are each the exact keyspace at their revision (a replay of
/// the changelog up to it), in sorted chunks.
pub async fn snapshot_is_consistent_while_writers_run<E: Engine>(engine: Arc<E>) {
    const KEYS: usize = 3000;
    let key = |i: usize| format!("snap/{i:05}").into_bytes();
    let empty = engine
        .snapshot()
        .await
        .expect("snapshot of an empty engine");
    assert_eq!((empty.revision, empty.time), (Revision(0), CommitTime(0)));
    let chunks: Vec<_> = empty.chunks.collect().await;
    assert!(
        chunks.iter().all(|c| matches!(c, Ok(c) if c.is_empty())),
        "an empty engine has no pairs"
    );

    for part in 0..5 {
        let mut txn = Txn::new();
        for i in (part * KEYS / 5)..((part + 1) * KEYS / 5) {
            txn = txn.put(key(i), format!("initial {i}"));
        }
        commit(&*engine, txn).await;
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4u64 {
        let engine = engine.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(t);
            let mut n = 0;
            while n < 100 || (!stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2_000) {
                n += 1;
                let i = rng.random_range(0..KEYS);
                let txn = match rng.random_range(0..10) {
                    0 => Txn::new().delete(key(i)),
                    1 => Txn::new().delete_range(&key(i), &key((i + 5).min(KEYS))),
                    _ => Txn::new()
                        .put(key(i), format!("t{t} n{n}"))
                        .put(key(rng.random_range(0..KEYS)), vec![0xffu8, 0x00]),
                };
                commit(&*engine, txn).await;
            }
        }));
    }

    let mut snapshots = Vec::new();
    for _ in 0..4 {
        let snap = engine.snapshot().await.expect("snapshot while writers run");
        let mut pairs: Vec<KeyValue> = Vec::new();
        let mut chunks = snap.chunks;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.expect("snapshot chunk");
            assert!(!chunk.is_empty(), "snapshot chunks are not empty");
            pairs.extend(chunk);
        }
        assert!(
            pairs.windows(2).all(|w| w[0].key < w[1].key),
            "snapshot pairs must be sorted and unique across chunks"
        );
        assert!(
            pairs.iter().all(|p| p.mod_revision <= snap.revision),
            "a snapshot at revision {} holds a key written later",
            snap.revision
        );
        snapshots.push((snap.revision, snap.time, pairs));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("a writer task panicked");
    }
    let last = engine.snapshot().await.expect("final snapshot");
    let mut last_pairs = Vec::new();
    let mut chunks = last.chunks;
    while let Some(chunk) = chunks.next().await {
        last_pairs.extend(chunk.expect("final snapshot chunk"));
    }
    assert_eq!(
        last.revision,
        head(&*engine).await.revision,
        "an idle snapshot is at the head"
    );
    assert!(
        last_pairs.len() > 1024,
        "the final snapshot should span several chunks"
    );
    snapshots.push((last.revision, last.time, last_pairs));

    let log = changelog(&*engine, 0).await;
    let mut model = Model::new();
    let mut applied = 0u64;
    snapshots.sort_by_key(|(r, _, _)| *r);
    for (revision, time, pairs) in &snapshots {
        while applied < revision.0 {
            replay(&mut model, &log[applied as usize]);
            applied += 1;
        }
        assert_eq!(
            *time,
            log[revision.0 as usize - 1].time,
            "snapshot time is the commit time of its revision"
        );
        let expected = model_pairs(&model);
        if *pairs != expected {
            let diff = expected
                .iter()
                .zip(pairs.iter())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("first difference: replay has {a:?}, snapshot has {b:?}"))
                .unwrap_or_else(|| {
                    format!(
                        "replay has {} pairs, snapshot {}",
                        expected.len(),
                        pairs.len()
                    )
                });
            panic!(
                "snapshot at revision {revision} differs from the changelog replayed to it; {diff}"
            );
        }
    }
}

// A small convenience for DeleteRange in the checks above.
trait TxnExt {
    fn delete_range(self, start: &[u8], end: &[u8]) -> Self;
}

impl TxnExt for Txn {
    fn delete_range(mut self, start: &[u8], end: &[u8]) -> Self {
        self.mutations.push(Mutation::DeleteRange {
            start: start.to_vec(),
            end: end.to_vec(),
        });
        self
    }
}
