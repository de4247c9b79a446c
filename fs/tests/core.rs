//! The file-system core without FUSE, over in-process meta services and local-directory (and
//! S3) buckets: read-your-writes, durability across clients, large files, open-unlinked files,
//! mirrors (identical bytes, coherent caches, read-only refusals), an unreachable meta service.
//! The reference-model property test lives in `core_model.rs`.

#![allow(clippy::unwrap_used)]

mod core_env;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use core_env::{Backend, Env, eventually, pattern};
use mirrorfs_fs::meta::Hooked;
use mirrorfs_fs::{FsConfig, FsCore, FsError, Invalidator, SetAttr};

const RW: i32 = libc::O_RDWR;

async fn write_file(core: &FsCore, parent: u64, name: &str, data: &[u8], piece: usize) -> u64 {
    let (attr, fh) = core
        .create(parent, name.as_bytes(), 0o644, 0, 0, RW | libc::O_CREAT)
        .await
        .unwrap();
    let mut off = 0;
    for p in data.chunks(piece.max(1)) {
        assert_eq!(
            core.write(attr.ino, fh, off, p).await.unwrap() as usize,
            p.len()
        );
        off += p.len() as u64;
    }
    core.release(attr.ino, fh).await.unwrap();
    attr.ino
}

async fn read_all(core: &FsCore, ino: u64) -> Vec<u8> {
    let fh = core.open(ino, libc::O_RDONLY).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = core.read(ino, fh, out.len() as u64, 1 << 20).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    core.release(ino, fh).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_unflushed_writes_sequential_and_random() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let core = env
        .core(
            &env.source.url.clone(),
            "v",
            &token,
            FsConfig {
                block_size: 64 << 10,
                ..Default::default()
            },
        )
        .await;
    let root = core.root();
    let (attr, fh) = core
        .create(root, b"f", 0o644, 1, 2, RW | libc::O_CREAT)
        .await
        .unwrap();
    let mut model = vec![0u8; 0];
    let writes: [(u64, usize, u64); 6] = [
        (0, 100_000, 1),
        (50_000, 10, 2),
        (300_000, 5000, 3),
        (65_536, 65_536, 4),
        (1, 1, 5),
        (200_000, 70_000, 6),
    ];
    for (off, len, seed) in writes {
        let data = pattern(len, seed);
        core.write(attr.ino, fh, off, &data).await.unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        // Before any flush: reads and getattr see the writes.
        assert_eq!(
            core.getattr(attr.ino).await.unwrap().size,
            model.len() as u64
        );
        let got = core
            .read(attr.ino, fh, 0, model.len() as u32 + 10)
            .await
            .unwrap();
        assert_eq!(&got[..], &model[..], "after write at {off}");
    }
    core.flush(attr.ino, fh).await.unwrap();
    assert_eq!(core.dirty_bytes(), 0);
    let got = core
        .read(attr.ino, fh, 0, model.len() as u32)
        .await
        .unwrap();
    assert_eq!(&got[..], &model[..]);
    // Rewrite part of a committed block, read before and after the flush.
    core.write(attr.ino, fh, 70_000, b"hello").await.unwrap();
    model[70_000..70_005].copy_from_slice(b"hello");
    let got = core.read(attr.ino, fh, 69_998, 10).await.unwrap();
    assert_eq!(&got[..], &model[69_998..70_008]);
    core.release(attr.ino, fh).await.unwrap();
    assert_eq!(read_all(&core, attr.ino).await, model);
    let a = core.getattr(attr.ino).await.unwrap();
    assert_eq!((a.size, a.uid, a.gid), (model.len() as u64, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_makes_data_visible_to_a_second_client() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let a = env.source_core("v", &token).await;
    let b = env.source_core("v", &token).await;
    let (attr, fh) = a
        .create(a.root(), b"f", 0o644, 0, 0, RW | libc::O_CREAT)
        .await
        .unwrap();
    let data = pattern(5 << 20, 7);
    a.write(attr.ino, fh, 0, &data).await.unwrap();
    a.fsync(attr.ino, fh).await.unwrap();
    // The handle is still open: durability came from fsync alone.
    let ino = b.lookup(b.root(), b"f").await.unwrap().ino;
    assert_eq!(b.getattr(ino).await.unwrap().size, data.len() as u64);
    assert_eq!(read_all(&b, ino).await, data);
    // A rewrite through `a` reaches `b` once b's change stream reported it.
    a.write(attr.ino, fh, 10, b"XYZ").await.unwrap();
    a.fsync(attr.ino, fh).await.unwrap();
    let mut want = data.clone();
    want[10..13].copy_from_slice(b"XYZ");
    eventually("b sees the rewrite", || {
        let (b, want) = (b.clone(), want.clone());
        async move { read_all(&b, ino).await == want }
    })
    .await;
    a.release(attr.ino, fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_file_reads_back_at_random_offsets() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let core = env.source_core("v", &token).await;
    let data = pattern(3 * mirrorfs_objstore::BLOCK_SIZE + 1_234_567, 11);
    let ino = write_file(&core, core.root(), "big", &data, 128 << 10).await;
    // A fresh client: nothing cached.
    let other = env.source_core("v", &token).await;
    let fh = other.open(ino, libc::O_RDONLY).await.unwrap();
    let mut rng = 12345u64;
    for _ in 0..64 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (rng >> 11) % data.len() as u64;
        let len = ((rng >> 40) % (300 << 10)) as u32;
        let got = other.read(ino, fh, off, len).await.unwrap();
        let end = (off as usize + len as usize).min(data.len());
        assert_eq!(&got[..], &data[off as usize..end], "read at {off}+{len}");
    }
    // Sequential reads across block boundaries, with readahead.
    let mut off = 0usize;
    while off < data.len() {
        let got = other.read(ino, fh, off as u64, 128 << 10).await.unwrap();
        assert_eq!(&got[..], &data[off..(off + (128 << 10)).min(data.len())]);
        off += got.len();
    }
    other.release(ino, fh).await.unwrap();
    let (hits, _) = other.block_cache_stats();
    assert!(hits > 0, "the block cache served nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_file_stays_readable_after_it_is_unlinked() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let a = env.source_core("v", &token).await;
    let b = env.source_core("v", &token).await;
    let data = pattern(300_000, 3);
    let ino = write_file(&a, a.root(), "f", &data, 65536).await;
    let fh = a.open(ino, libc::O_RDWR).await.unwrap();
    // Unlinked by another client: the inode and its extents are gone from the metadata.
    b.unlink(b.root(), b"f").await.unwrap();
    eventually("a's cache drops the entry", || {
        let a = a.clone();
        async move { matches!(a.lookup(a.root(), b"f").await, Err(FsError::NotFound(_))) }
    })
    .await;
    let got = a.read(ino, fh, 0, 400_000).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    // Writes to it stay readable too, and closing works.
    a.write(ino, fh, 10, b"abc").await.unwrap();
    a.flush(ino, fh).await.unwrap();
    let got = a.read(ino, fh, 8, 7).await.unwrap();
    assert_eq!(
        &got[..],
        &[data[8], data[9], b'a', b'b', b'c', data[13], data[14]]
    );
    assert_eq!(a.getattr(ino).await.unwrap().size, data.len() as u64);
    a.release(ino, fh).await.unwrap();
    assert!(matches!(a.getattr(ino).await, Err(FsError::NotFound(_))));

    // Unlinked by the same client while open.
    let ino = write_file(&a, a.root(), "g", &data, 1 << 20).await;
    let fh = a.open(ino, libc::O_RDONLY).await.unwrap();
    a.unlink(a.root(), b"g").await.unwrap();
    assert_eq!(&a.read(ino, fh, 0, 1 << 20).await.unwrap()[..], &data[..]);
    a.release(ino, fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncate_clips_and_extends_with_buffered_writes() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let core = env.source_core("v", &token).await;
    let (attr, fh) = core
        .create(core.root(), b"t", 0o600, 0, 0, RW | libc::O_CREAT)
        .await
        .unwrap();
    core.write(attr.ino, fh, 0, &pattern(10_000, 1))
        .await
        .unwrap();
    let set = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    let a = core.setattr(attr.ino, set(100), Some(fh)).await.unwrap();
    assert_eq!(a.size, 100);
    core.write(attr.ino, fh, 200, b"z").await.unwrap();
    let got = core.read(attr.ino, fh, 0, 1000).await.unwrap();
    let mut want = pattern(10_000, 1)[..100].to_vec();
    want.resize(200, 0);
    want.push(b'z');
    assert_eq!(&got[..], &want[..]);
    let a = core.setattr(attr.ino, set(5000), Some(fh)).await.unwrap();
    assert_eq!(a.size, 5000);
    core.release(attr.ino, fh).await.unwrap();
    want.resize(5000, 0);
    assert_eq!(read_all(&core, attr.ino).await, want);
    // O_TRUNC at open.
    let fh = core
        .open(attr.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    assert_eq!(core.getattr(attr.ino).await.unwrap().size, 0);
    core.release(attr.ino, fh).await.unwrap();
}

/// Records what the core tells the kernel.
#[derive(Default)]
struct Recorder {
    inodes: Mutex<Vec<u64>>,
    entries: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl Invalidator for Recorder {
    fn inode(&self, ino: u64) {
        self.inodes.lock().unwrap().push(ino);
    }
    fn entry(&self, parent: u64, name: &[u8]) {
        self.entries.lock().unwrap().push((parent, name.to_vec()));
    }
}

async fn mirror_reads_source_bytes_and_follows_rewrites(backend: Backend) {
    let env = Env::start(backend, true).await;
    let token = env.volume("data").await;
    let src = env.source_core("data", &token).await;
    let mtoken = env.mirror_volume("data-b", "data", true).await;
    let mirror_url = env.mirror_url().to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let counting = Arc::new(Hooked::new(
        Arc::new(env.meta(&mirror_url, "data-b", &mtoken).await),
        Arc::new(move |op| {
            if op != "watch_volume" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }),
    ));
    let mirror = env.core_over(counting, FsConfig::default()).await;
    assert!(mirror.read_only());
    let recorder = Arc::new(Recorder::default());
    mirror.set_invalidator(recorder.clone());

    let dir = src.mkdir(src.root(), b"d", 0o755, 0, 0).await.unwrap();
    let v1 = pattern(2 * mirrorfs_objstore::BLOCK_SIZE + 1000, 1);
    let ino = write_file(&src, dir.ino, "f", &v1, 1 << 20).await;

    // Once the mirror has applied it, the mirror client reads identical bytes (from the
    // source bucket: nothing has been replicated into the mirror bucket).
    eventually("the mirror has the file", || {
        let (m, v1) = (mirror.clone(), v1.clone());
        async move {
            match m.lookup(m.root(), b"d").await {
                Ok(d) => match m.lookup(d.ino, b"f").await {
                    Ok(a) => a.size == v1.len() as u64,
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }
    })
    .await;
    assert_eq!(read_all(&mirror, ino).await, v1);

    // A rewrite in the source becomes visible in the mirror client after the change stream
    // reports it; once the new bytes are seen, the old ones never come back.
    let fh = mirror.open(ino, libc::O_RDONLY).await.unwrap();
    let (_, sfh) = (0, src.open(ino, RW).await.unwrap());
    src.write(ino, sfh, 100, b"version two").await.unwrap();
    src.release(ino, sfh).await.unwrap();
    let mut v2 = v1.clone();
    v2[100..111].copy_from_slice(b"version two");
    eventually("the mirror sees the rewrite", || {
        let m = mirror.clone();
        async move { &m.read(ino, fh, 100, 11).await.unwrap()[..] == b"version two" }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            &mirror.read(ino, fh, 100, 11).await.unwrap()[..],
            b"version two"
        );
    }
    mirror.release(ino, fh).await.unwrap();
    assert_eq!(read_all(&mirror, ino).await, v2);
    assert!(recorder.inodes.lock().unwrap().contains(&ino));
    assert!(
        recorder
            .entries
            .lock()
            .unwrap()
            .contains(&(dir.ino, b"f".to_vec()))
    );

    // Every mutation is refused by the core itself, without a call to the meta service.
    let before = calls.load(Ordering::SeqCst);
    let root = mirror.root();
    let ro = |r: Result<(), FsError>, what: &str| match r {
        Err(e @ FsError::ReadOnly { .. }) => assert_eq!(e.errno(), libc::EROFS, "{what}"),
        other => panic!("{what} on a mirror: {other:?}"),
    };
    ro(
        mirror.mkdir(root, b"x", 0o755, 0, 0).await.map(drop),
        "mkdir",
    );
    ro(
        mirror.create(root, b"x", 0o644, 0, 0, RW).await.map(drop),
        "create",
    );
    ro(
        mirror.open(ino, libc::O_WRONLY).await.map(drop),
        "open for write",
    );
    ro(
        mirror
            .open(ino, libc::O_RDONLY | libc::O_TRUNC)
            .await
            .map(drop),
        "open O_TRUNC",
    );
    let fh = mirror.open(ino, libc::O_RDONLY).await.unwrap();
    let calls_open = calls.load(Ordering::SeqCst);
    ro(mirror.write(ino, fh, 0, b"x").await.map(drop), "write");
    ro(mirror.unlink(dir.ino, b"f").await, "unlink");
    ro(mirror.rmdir(root, b"d").await, "rmdir");
    ro(mirror.rename(dir.ino, b"f", root, b"g", 0).await, "rename");
    ro(mirror.link(ino, root, b"h").await.map(drop), "link");
    ro(
        mirror.symlink(root, b"s", b"t", 0, 0).await.map(drop),
        "symlink",
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    ro(mirror.setattr(ino, chmod, None).await.map(drop), "setattr");
    assert_eq!(calls.load(Ordering::SeqCst), calls_open);
    mirror.release(ino, fh).await.unwrap();
    let _ = before;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_reads_source_bytes_and_follows_rewrites_local() {
    mirror_reads_source_bytes_and_follows_rewrites(Backend::Local).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_reads_source_bytes_and_follows_rewrites_s3() {
    mirror_reads_source_bytes_and_follows_rewrites(Backend::S3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_meta_service_is_unavailable_not_a_hang() {
    let mut env = Env::source().await;
    let token = env.volume("v").await;
    let core = env.source_core("v", &token).await;
    let ino = write_file(&core, core.root(), "f", b"data", 4).await;
    env.source.stop().await;
    let started = Instant::now();
    // Not cached (a fresh name): the call must reach the service.
    let e = core.lookup(core.root(), b"missing").await.unwrap_err();
    assert!(matches!(e, FsError::Unavailable(_)), "{e:?}");
    assert_eq!(e.errno(), libc::EIO);
    let e = core
        .create(core.root(), b"n", 0o644, 0, 0, RW)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // Cached attributes still answer.
    assert_eq!(core.getattr(ino).await.unwrap().size, 4);
    // Connecting to it fails fast too.
    let started = Instant::now();
    let r =
        mirrorfs_fs::GrpcMeta::connect(&env.source.url, &token, "v", Duration::from_secs(2)).await;
    assert!(matches!(r, Err(FsError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_list_with_stable_offsets_and_names_resolve() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let core = env.source_core("v", &token).await;
    let root = core.root();
    let d = core.mkdir(root, b"d", 0o755, 0, 0).await.unwrap();
    let n = 1500;
    for i in 0..n {
        let (a, fh) = core
            .create(d.ino, format!("f{i:05}").as_bytes(), 0o644, 0, 0, RW)
            .await
            .unwrap();
        core.release(a.ino, fh).await.unwrap();
    }
    core.symlink(d.ino, b"s", b"../target", 0, 0).await.unwrap();
    let fh = core.opendir(d.ino).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let page = core.readdir(d.ino, fh, offset).await.unwrap();
        if page.is_empty() {
            break;
        }
        // The kernel may stop part-way through a page and resume from any returned offset.
        let take = page.len().min(300);
        for e in &page[..take] {
            names.push(String::from_utf8(e.name.clone()).unwrap());
        }
        offset = page[take - 1].offset;
    }
    core.releasedir(fh).await;
    assert_eq!(names.len(), n + 3);
    assert_eq!(&names[..2], &[".", ".."]);
    assert!(names.contains(&"s".to_string()));
    let s = core.lookup(d.ino, b"s").await.unwrap();
    assert_eq!(core.readlink(s.ino).await.unwrap(), b"../target");
    assert_eq!(
        core.resolve("/d/f00007").await.unwrap().ino,
        core.lookup(d.ino, b"f00007").await.unwrap().ino
    );
    let fh = core.opendir(d.ino).await.unwrap();
    let plus = core.readdirplus(d.ino, fh, 0).await.unwrap();
    assert!(plus.iter().all(|(e, a)| e.ino == a.ino));
    core.releasedir(fh).await;
    let st = core.statfs().await.unwrap();
    assert!(st.files - st.ffree >= n as u64);
}

/// Every `readdirplus` of a directory, through to the end.
async fn list_plus(
    core: &FsCore,
    dir: u64,
) -> Vec<(mirrorfs_fs::DirEntry, mirrorfs_api::meta::Attr)> {
    let fh = core.opendir(dir).await.unwrap();
    let (mut all, mut offset) = (Vec::new(), 0);
    loop {
        let page = core.readdirplus(dir, fh, offset).await.unwrap();
        let Some(last) = page.last() else { break };
        offset = last.0.offset;
        all.extend(page);
    }
    core.releasedir(fh).await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readdirplus_takes_attributes_from_the_listing_and_stays_coherent() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let writer = env.source_core("v", &token).await;
    let d = writer
        .mkdir(writer.root(), b"d", 0o755, 0, 0)
        .await
        .unwrap();
    let n = 1500;
    for i in 0..n {
        let data = vec![b'x'; i % 7];
        write_file(&writer, d.ino, &format!("f{i:05}"), &data, 4096).await;
    }

    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let counting = Arc::new(Hooked::new(
        Arc::new(env.meta(&env.source.url, "v", &token).await),
        Arc::new(move |op| {
            log.lock().unwrap().push(op);
            Ok(())
        }),
    ));
    let reader = env.core_over(counting, FsConfig::default()).await;
    let dir = reader.lookup(reader.root(), b"d").await.unwrap();
    reader.getattr(reader.root()).await.unwrap(); // "..", as the kernel would have it
    calls.lock().unwrap().clear();
    let listed = list_plus(&reader, dir.ino).await;
    let ops = std::mem::take(&mut *calls.lock().unwrap());
    assert_eq!(listed.len(), n + 2, "every entry, with . and ..");
    for (e, a) in &listed[2..] {
        let i: usize = std::str::from_utf8(&e.name).unwrap()[1..].parse().unwrap();
        assert_eq!((a.ino, a.size, a.mode), (e.ino, (i % 7) as u64, 0o644));
    }
    // One ReadDir per page of 1000 and nothing per entry.
    let count = |op| ops.iter().filter(|o| **o == op).count();
    assert_eq!(count("readdir"), 2, "{ops:?}");
    assert_eq!(count("getattr") + count("lookup"), 0, "{ops:?}");
    // The attributes are cached: a stat of a listed file costs nothing.
    let f7 = reader.lookup(dir.ino, b"f00007").await.unwrap();
    assert_eq!(f7.size, 0);
    assert!(calls.lock().unwrap().is_empty());

    // A change by another client reaches the next listing through the volume watch.
    let w7 = writer.lookup(d.ino, b"f00007").await.unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let changed = writer.setattr(w7.ino, set, None).await.unwrap();
    assert!(
        reader
            .wait_watched(changed.revision, Duration::from_secs(10))
            .await
    );
    let again = list_plus(&reader, dir.ino).await;
    let (_, a7) = again.iter().find(|(e, _)| e.name == b"f00007").unwrap();
    assert_eq!(a7.mode, 0o600);
}
