//! The local disk cache of blocks behind a file-system core, without FUSE, over an in-process
//! meta service and a local-directory bucket: a file read once through a core with a disk
//! cache is read again by a new core (new process state, same cache directory) from the disk
//! alone, even with the bucket's blocks gone; a corrupted cached block falls back to the
//! bucket and is cached again.

#![allow(clippy::unwrap_used)]

mod core_env;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use core_env::{Env, pattern};
use mirrorfs_fs::{
    BlockOptions, Blocks, DiskCache, DiskCacheMetrics, FsConfig, FsCore, MetaClient,
};

const BLOCK: u64 = 64 << 10;

async fn core_with(env: &Env, token: &str, disk: Option<Arc<DiskCache>>) -> Arc<FsCore> {
    let meta: Arc<dyn MetaClient> = Arc::new(env.meta(&env.source.url, "v", token).await);
    let v = meta.open_volume().await.unwrap();
    let blocks = Blocks::for_volume(
        &v,
        BlockOptions {
            disk_cache: disk,
            ..Default::default()
        },
    )
    .unwrap();
    let config = FsConfig {
        block_size: BLOCK as usize,
        ..Default::default()
    };
    FsCore::open_volume(meta, blocks, config).await.unwrap()
}

/// Opens the cache directory, waiting for the previous core's last references to go.
fn reopen(dir: &Path) -> Arc<DiskCache> {
    Arc::new(
        DiskCache::open_waiting(
            dir,
            64 << 20,
            DiskCacheMetrics::default(),
            Duration::from_secs(10),
        )
        .unwrap(),
    )
}

async fn read_file(core: &FsCore, name: &str) -> Result<Vec<u8>, mirrorfs_fs::FsError> {
    let ino = core.lookup(core.root(), name.as_bytes()).await?.ino;
    let fh = core.open(ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    let r = loop {
        match core.read(ino, fh, out.len() as u64, 1 << 20).await {
            Ok(b) if b.is_empty() => break Ok(()),
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => break Err(e),
        }
    };
    core.release(ino, fh).await?;
    r.map(|()| out)
}

/// The block files of a directory tree (the cache's, or a bucket's), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else if !name.to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_read_once_are_served_from_disk_after_a_restart_and_bad_copies_fall_back() {
    let env = Env::source().await;
    let token = env.volume("v").await;
    let data = pattern((5 * BLOCK + 1234) as usize, 7);
    let blocks = 6;

    // Written by a core without a disk cache.
    let writer = core_with(&env, &token, None).await;
    let (attr, fh) = writer
        .create(
            writer.root(),
            b"f",
            0o644,
            0,
            0,
            libc::O_RDWR | libc::O_CREAT,
        )
        .await
        .unwrap();
    assert_eq!(
        writer.write(attr.ino, fh, 0, &data).await.unwrap() as usize,
        data.len()
    );
    writer.release(attr.ino, fh).await.unwrap();
    writer.close();
    let bucket = env.dir.path().join("source");
    assert_eq!(files(&bucket).len(), blocks);

    // Read once through a core with a disk cache: every block ends up on disk.
    let cache_dir = env.dir.path().join("cache");
    let disk = reopen(&cache_dir);
    let core = core_with(&env, &token, Some(disk.clone())).await;
    assert!(read_file(&core, "f").await.unwrap() == data);
    disk.flushed().await;
    assert_eq!(disk.metrics().misses.get(), blocks as u64);
    assert_eq!(disk.len(), blocks);
    assert_eq!(files(&cache_dir).len(), blocks);
    core.close();
    drop((core, disk));

    // A new core over the reopened directory, one cached block corrupted: that block comes
    // from the bucket (and is cached again), the others from the disk.
    let disk = reopen(&cache_dir);
    assert_eq!(
        disk.len(),
        blocks,
        "the index is rebuilt from the directory"
    );
    let victim = files(&cache_dir)[2].clone();
    let mut bad = std::fs::read(&victim).unwrap();
    bad[17] ^= 0xff;
    std::fs::write(&victim, &bad).unwrap();
    let core = core_with(&env, &token, Some(disk.clone())).await;
    assert!(read_file(&core, "f").await.unwrap() == data);
    disk.flushed().await;
    assert_eq!(disk.metrics().hits.get(), blocks as u64 - 1);
    assert_eq!(disk.metrics().misses.get(), 1);
    assert_ne!(
        std::fs::read(&victim).unwrap(),
        bad,
        "the bad copy is replaced by the verified block"
    );
    core.close();
    drop((core, disk));

    // The bucket's blocks deleted: a core without the disk cache cannot read the file, a core
    // with it reads every byte from the disk.
    for f in files(&bucket) {
        std::fs::remove_file(f).unwrap();
    }
    let bare = core_with(&env, &token, None).await;
    assert!(
        read_file(&bare, "f").await.is_err(),
        "the bucket really is empty"
    );
    bare.close();
    let disk = reopen(&cache_dir);
    let core = core_with(&env, &token, Some(disk.clone())).await;
    assert!(read_file(&core, "f").await.unwrap() == data);
    assert_eq!(disk.metrics().hits.get(), blocks as u64);
    assert_eq!(disk.metrics().misses.get(), 0);
    core.close();
}
