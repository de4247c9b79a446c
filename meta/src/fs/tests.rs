//! Tests of `FsMeta` that need its internals: usage folding, inode batches across processes,
//! and retries under injected conflicts.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mirrorfs_api::Revision;

use super::*;
use crate::engine::memory::MemoryEngine;
use crate::engine::{ChangeStream, Head, Snapshot};

const FILE: Owner = Owner {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

async fn setup(engine: Arc<dyn Engine>) -> (FsMeta, Volume, String) {
    let fs = FsMeta::open(engine).await.unwrap();
    let (_, token) = fs
        .create_volume(NewVolume {
            name: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let vol = fs.authenticate("v", &token).await.unwrap();
    (fs, vol, token)
}

/// Waits for `cond` with a deadline.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn usage_deltas_are_folded_in_the_background_and_on_demand() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (fs, vol, _) = setup(engine.clone()).await;
    let n = usage::FOLD_EVERY as usize + 300;
    for i in 0..n {
        fs.create(&vol, Ino::ROOT, format!("f{i}").as_bytes(), FILE, true)
            .await
            .unwrap();
    }
    // The fold started after FOLD_EVERY deltas leaves fewer than were written.
    eventually("a background fold", || async {
        usage::totals(engine.as_ref(), vol.id)
            .await
            .unwrap()
            .pending
            < n
    })
    .await;
    eventually("the fold to finish", || async {
        let st = fs.vol_state(vol.id);
        let idle = st.usage.start_fold();
        if idle {
            st.usage.fold_done();
        }
        idle
    })
    .await;
    let t = usage::totals(engine.as_ref(), vol.id).await.unwrap();
    assert_eq!(t.inodes, 1 + n as i128);
    assert!(t.pending > 0 && t.pending < 400, "{}", t.pending);
    assert_eq!(fs.fold_usage(&vol).await.unwrap(), t.pending);
    let t = usage::totals(engine.as_ref(), vol.id).await.unwrap();
    assert_eq!((t.inodes, t.pending), (1 + n as i128, 0));
    assert_eq!(fs.statfs(&vol).await.unwrap().used_inodes, 1 + n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn folding_while_writing_loses_nothing() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (fs, vol, _) = setup(engine.clone()).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (fs, vol) = (fs.clone(), vol.clone());
            tokio::spawn(async move {
                let d = fs
                    .mkdir(&vol, Ino::ROOT, format!("d{w}").as_bytes(), FILE)
                    .await
                    .unwrap();
                for i in 0..300 {
                    let name = format!("f{i}");
                    let a = fs
                        .create(&vol, Ino(d.ino), name.as_bytes(), FILE, true)
                        .await
                        .unwrap();
                    let size = SetAttr {
                        size: Some(10),
                        ..Default::default()
                    };
                    fs.setattr(&vol, Ino(a.ino), size).await.unwrap();
                    if i % 3 == 0 {
                        fs.unlink(&vol, Ino(d.ino), name.as_bytes()).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let folder = {
        let (engine, vol) = (engine.clone(), vol.clone());
        tokio::spawn(async move {
            for _ in 0..100 {
                usage::fold(engine.as_ref(), vol.id, &vol.name)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    folder.await.unwrap();
    let u = fs.statfs(&vol).await.unwrap();
    assert_eq!(u.used_inodes, 1 + 4 + 4 * 200);
    assert_eq!(u.used_bytes, 4 * 200 * 10);
    fs.fold_usage(&vol).await.unwrap();
    let u2 = fs.statfs(&vol).await.unwrap();
    assert_eq!(u, u2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inode_batches_of_several_processes_never_overlap() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (fs, vol, token) = setup(engine.clone()).await;
    let other = FsMeta::open(engine.clone()).await.unwrap();
    let vol2 = other.authenticate("v", &token).await.unwrap();
    let a = fs.create(&vol, Ino::ROOT, b"a", FILE, true).await.unwrap();
    let b = other
        .create(&vol2, Ino::ROOT, b"b", FILE, true)
        .await
        .unwrap();
    assert_eq!(a.ino, alloc::FIRST_FREE);
    assert_eq!(b.ino, alloc::FIRST_FREE + alloc::BATCH);

    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (engine, vol) = (engine.clone(), vol.clone());
            tokio::spawn(async move { alloc::reserve(engine.as_ref(), &vol, 10).await.unwrap() })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        let (start, end) = t.await.unwrap();
        assert_eq!(end - start, 10);
        for i in start..end {
            assert!(seen.insert(i), "{i} reserved twice");
            assert!(i >= alloc::FIRST_FREE + 2 * alloc::BATCH);
        }
    }
}

/// An engine that refuses the next `conflicts` transactions as if a compare had failed.
struct Flaky {
    inner: MemoryEngine,
    conflicts: AtomicU32,
}

#[async_trait]
impl Engine for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &[u8]) -> crate::engine::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> crate::engine::Result<Vec<KeyValue>> {
        self.inner.range(start, end, limit).await
    }
    async fn txn(&self, txn: Txn) -> crate::engine::Result<TxnOutcome> {
        let refuse = self
            .conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Ok(TxnOutcome::Conflict);
        }
        self.inner.txn(txn).await
    }
    async fn head(&self) -> crate::engine::Result<Head> {
        self.inner.head().await
    }
    async fn watch(&self, from: Revision) -> crate::engine::Result<ChangeStream> {
        self.inner.watch(from).await
    }
    async fn compact(&self, up_to: Revision) -> crate::engine::Result<Revision> {
        self.inner.compact(up_to).await
    }
    async fn snapshot(&self) -> crate::engine::Result<Snapshot> {
        self.inner.snapshot().await
    }
}

#[tokio::test]
async fn conflicts_are_retried_then_reported_as_contention() {
    let flaky = Arc::new(Flaky {
        inner: MemoryEngine::new(),
        conflicts: AtomicU32::new(0),
    });
    let (fs, vol, _) = setup(flaky.clone()).await;
    // A few conflicts: every operation still succeeds, exactly once.
    flaky.conflicts.store(5, Ordering::SeqCst);
    let d = fs.mkdir(&vol, Ino::ROOT, b"d", FILE).await.unwrap();
    flaky.conflicts.store(5, Ordering::SeqCst);
    fs.rename(&vol, Ino::ROOT, b"d", Ino::ROOT, b"e", false, false)
        .await
        .unwrap();
    assert_eq!(fs.getattr(&vol, Ino::ROOT).await.unwrap().nlink, 3);
    assert_eq!(fs.lookup(&vol, Ino::ROOT, b"e").await.unwrap().ino, d.ino);
    // Conflicts that never stop: a bounded number of attempts, then Contention.
    flaky.conflicts.store(u32::MAX, Ordering::SeqCst);
    let e = fs
        .create(&vol, Ino::ROOT, b"f", FILE, true)
        .await
        .unwrap_err();
    match &e {
        MetaError::Contention { volume, attempts } => {
            assert_eq!((volume.as_str(), *attempts), ("v", txn::MAX_ATTEMPTS));
        }
        other => panic!("expected contention, got {other:?}"),
    }
    assert_eq!(e.kind(), mirrorfs_api::FsErrorKind::Busy);
    flaky.conflicts.store(0, Ordering::SeqCst);
    assert!(fs.lookup(&vol, Ino::ROOT, b"f").await.is_err());
    // Usage counted each operation once.
    assert_eq!(fs.statfs(&vol).await.unwrap().used_inodes, 2);
}

/// Commits random writes over files with many small extents (so that both ways of finding
/// the overlapped extents run) and checks the stored extents against `extents::overlay`.
#[tokio::test]
async fn large_overwrites_match_the_extent_arithmetic() {
    use mirrorfs_api::meta::Extent;
    use rand::{Rng, SeedableRng};

    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let (fs, vol, _) = setup(engine).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut block = 0u64;
    let mut ext = |offset: u64, length: u64| {
        block += 1;
        Extent {
            offset,
            length,
            block_id: format!("b/{block}"),
            block_offset: 3,
            block_size: length + 10,
            checksum: vec![1; 32],
        }
    };
    for round in 0..20 {
        let name = format!("f{round}");
        let f = fs
            .create(&vol, Ino::ROOT, name.as_bytes(), FILE, true)
            .await
            .unwrap();
        let ino = Ino(f.ino);
        // 100..300 adjacent small extents.
        let n = rng.random_range(100..300u64);
        let small: Vec<Extent> = (0..n).map(|k| ext(k * 10, 10)).collect();
        let mut want = extents::overlay(Vec::new(), &small);
        fs.commit_extents(&vol, ino, small, n * 10, None)
            .await
            .unwrap();
        for _ in 0..5 {
            let writes: Vec<Extent> = (0..rng.random_range(1..6))
                .map(|_| {
                    let off = rng.random_range(0..n * 10 + 50);
                    let len = rng.random_range(1..n * 10);
                    ext(off, len)
                })
                .collect();
            let new_size = writes.iter().map(extents::end).max().unwrap();
            want = extents::overlay(want, &writes);
            fs.commit_extents(&vol, ino, writes, new_size, None)
                .await
                .unwrap();
            let (got, _) = fs.read_extents(&vol, ino, 0, u64::MAX).await.unwrap();
            assert_eq!(got, want, "round {round}");
        }
    }
}
