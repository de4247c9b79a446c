//! File-system metadata rules through the public `FsMeta` API over the memory engine: volumes
//! and tokens, every operation with its bad inputs, rename corner cases, extents, path
//! resolution, usage and capacity, corrupt records, and concurrent creates.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use mirrorfs_api::meta::{Attr, Extent, FileKind, StorageConfig, Timestamp};
use mirrorfs_api::records;
use mirrorfs_api::{FsErrorKind, Ino, VolumeId};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::engine::{Engine, KeyValue, Txn, TxnOutcome};
use mirrorfs_meta::fs::{DirPage, FsMeta, NewVolume, Owner, Resolved, SetAttr, Volume, keys};
use mirrorfs_meta::{MetaError, Result};
use prost::Message;

const FILE: Owner = Owner {
    mode: 0o644,
    uid: 1000,
    gid: 100,
};
const DIR: Owner = Owner {
    mode: 0o755,
    uid: 1000,
    gid: 100,
};

struct Fx {
    engine: Arc<dyn Engine>,
    fs: FsMeta,
    vol: Volume,
    token: String,
}

async fn fx() -> Fx {
    fx_with(NewVolume {
        name: "data".into(),
        ..Default::default()
    })
    .await
}

async fn fx_with(new: NewVolume) -> Fx {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let fs = FsMeta::open(engine.clone()).await.unwrap();
    let name = new.name.clone();
    let (_, token) = fs.create_volume(new).await.unwrap();
    let vol = fs.authenticate(&name, &token).await.unwrap();
    Fx {
        engine,
        fs,
        vol,
        token,
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> FsErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

fn ino(a: &Attr) -> Ino {
    Ino(a.ino)
}

/// A timestamp as something that orders.
fn tk(t: Option<Timestamp>) -> (i64, u32) {
    let t = t.expect("timestamp set");
    (t.seconds, t.nanos)
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 7 }
}

fn extent(offset: u64, length: u64, block: &str) -> Extent {
    Extent {
        offset,
        length,
        block_id: block.into(),
        block_offset: 0,
        block_size: length,
        checksum: vec![9; 32],
    }
}

async fn all_keys(engine: &Arc<dyn Engine>) -> Vec<KeyValue> {
    let snap = engine.snapshot().await.unwrap();
    let chunks: Vec<_> = snap.chunks.collect().await;
    chunks.into_iter().flat_map(|c| c.unwrap()).collect()
}

async fn inode_record(f: &Fx, i: Ino) -> Option<records::Inode> {
    let kv = f.engine.get(&keys::inode(f.vol.id, i)).await.unwrap()?;
    Some(records::Inode::decode(kv.value.as_slice()).unwrap())
}

async fn names(f: &Fx, dir: Ino) -> Vec<Vec<u8>> {
    let page = f.fs.readdir(&f.vol, dir, b"", 0).await.unwrap();
    page.entries.into_iter().map(|e| e.name).collect()
}

// --- cluster and volumes ---------------------------------------------------------------------

#[tokio::test]
async fn open_initialises_the_cluster_record_once() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            FsMeta::open(e).await.unwrap().cluster_id().await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "concurrent initialisers disagree: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = FsMeta::open(engine.clone()).await.unwrap();
    assert_eq!(again.cluster_id().await.unwrap(), id);
    // The cluster record is local, not mirrored.
    let kv = engine.get(keys::CLUSTER).await.unwrap().unwrap();
    assert!(kv.key.starts_with(b"l/"));
}

#[tokio::test]
async fn volumes_are_created_listed_and_authenticated() {
    let f = fx_with(NewVolume {
        name: "data".into(),
        storage: StorageConfig {
            bucket_url: "file:///tmp/x".into(),
            options: [("region".to_owned(), "eu".to_owned())].into(),
        },
        capacity_bytes: 1 << 30,
        capacity_inodes: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(f.token.len(), 64);
    assert!(f.token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(f.vol.root, Ino::ROOT);
    assert_eq!(f.vol.name, "data");

    let (second, token2) =
        f.fs.create_volume(NewVolume {
            name: "models-v1.2_x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.id, f.vol.id.0 + 1);
    assert_ne!(token2, f.token);

    let list = f.fs.list_volumes().await.unwrap();
    let names: Vec<_> = list.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["data", "models-v1.2_x"]);
    assert_eq!(
        list[0].storage.as_ref().unwrap().bucket_url,
        "file:///tmp/x"
    );
    assert_eq!(list[0].capacity_inodes, 1000);
    assert_eq!(list[0].used_inodes, 1);

    let info = f.fs.volume_info(&f.vol).await.unwrap();
    assert_eq!(info.storage.unwrap().options["region"], "eu");
    assert!(info.created.is_some());

    // Duplicates and bad names.
    let dup =
        f.fs.create_volume(NewVolume {
            name: "data".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(dup, Err(MetaError::VolumeExists { .. })),
        "{dup:?}"
    );
    for bad in ["", "Data", "-x", "a/b", "a b", &"x".repeat(64)] {
        let r =
            f.fs.create_volume(NewVolume {
                name: bad.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(kind(r), FsErrorKind::InvalidArgument, "{bad:?}");
    }

    // Tokens: wrong token, unknown volume, token of another volume.
    let wrong = f.fs.authenticate("data", "nope").await;
    assert!(
        matches!(wrong, Err(MetaError::Unauthenticated { .. })),
        "{wrong:?}"
    );
    let other = f.fs.authenticate("data", &token2).await;
    assert!(matches!(other, Err(MetaError::Unauthenticated { .. })));
    let unknown = f.fs.authenticate("nosuch", &f.token).await;
    assert!(
        matches!(unknown, Err(MetaError::NoVolume { .. })),
        "{unknown:?}"
    );
    let invalid = f.fs.authenticate("../x", &f.token).await;
    assert!(matches!(invalid, Err(MetaError::NoVolume { .. })));

    // Only the BLAKE3 hash of the token is stored, nowhere the token itself.
    let rec = f
        .engine
        .get(&keys::volume(f.vol.id))
        .await
        .unwrap()
        .unwrap();
    let rec = records::Volume::decode(rec.value.as_slice()).unwrap();
    assert_eq!(rec.token_hash, blake3::hash(f.token.as_bytes()).as_bytes());
    for kv in all_keys(&f.engine).await {
        let hay = [kv.key, kv.value].concat();
        assert!(
            !hay.windows(f.token.len()).any(|w| w == f.token.as_bytes()),
            "token stored in the clear"
        );
    }
}

#[tokio::test]
async fn the_root_directory_is_created_with_the_volume() {
    let f = fx().await;
    let root = f.fs.getattr(&f.vol, Ino::ROOT).await.unwrap();
    assert_eq!(root.kind(), FileKind::Directory);
    assert_eq!((root.mode, root.nlink, root.size), (0o755, 2, 0));
    let rec = inode_record(&f, Ino::ROOT).await.unwrap();
    assert_eq!(rec.parent, Ino::ROOT.0);
    assert!(
        f.fs.readdir(&f.vol, Ino::ROOT, b"", 0)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    // Everything a volume stores is in the mirrored keyspace.
    for kv in all_keys(&f.engine).await {
        assert!(
            kv.key.starts_with(b"m/") || kv.key == keys::CLUSTER,
            "{}",
            keys::describe(&kv.key)
        );
    }
}

#[tokio::test]
async fn deleting_a_volume_removes_every_key_of_it_and_nothing_else() {
    let f = fx().await;
    let (_, other_token) =
        f.fs.create_volume(NewVolume {
            name: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = f.fs.authenticate("other", &other_token).await.unwrap();
    for v in [&f.vol, &other] {
        let d = f.fs.mkdir(v, Ino::ROOT, b"d", DIR).await.unwrap();
        let file = f.fs.create(v, ino(&d), b"f", FILE, true).await.unwrap();
        f.fs.commit_extents(v, ino(&file), vec![extent(0, 10, "b/1")], 10, None)
            .await
            .unwrap();
    }
    let before: Vec<_> = all_keys(&f.engine).await;
    let of_other: Vec<_> = before
        .iter()
        .filter(|kv| {
            let s = keys::describe(&kv.key);
            s.contains(&format!("vol={}", other.id)) || s == "m/vn/other"
        })
        .cloned()
        .collect();
    assert!(of_other.len() >= 6);

    let rev = f.fs.delete_volume("data").await.unwrap();
    assert!(rev.0 > 0);
    let after = all_keys(&f.engine).await;
    for kv in &after {
        let s = keys::describe(&kv.key);
        assert!(
            !s.contains(&format!("vol={}", f.vol.id)) && s != "m/vn/data",
            "left behind: {s}"
        );
    }
    for kv in &of_other {
        assert!(after.contains(kv), "lost {}", keys::describe(&kv.key));
    }
    assert!(matches!(
        f.fs.authenticate("data", &f.token).await,
        Err(MetaError::NoVolume { .. })
    ));
    assert_eq!(
        kind(f.fs.getattr(&f.vol, Ino::ROOT).await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(f.fs.create(&f.vol, Ino::ROOT, b"x", FILE, true).await),
        FsErrorKind::NotFound
    );
    assert!(matches!(
        f.fs.delete_volume("data").await,
        Err(MetaError::NoVolume { .. })
    ));
    // The name can be used again, with a new id and an empty tree.
    let (again, _) =
        f.fs.create_volume(NewVolume {
            name: "data".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(again.id > other.id.0);
    assert_eq!(f.fs.list_volumes().await.unwrap().len(), 2);
}

#[tokio::test]
async fn inodes_of_one_volume_are_not_found_in_another() {
    let f = fx().await;
    let (_, t) =
        f.fs.create_volume(NewVolume {
            name: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = f.fs.authenticate("b", &t).await.unwrap();
    let d =
        f.fs.mkdir(&f.vol, Ino::ROOT, b"only-in-a", DIR)
            .await
            .unwrap();
    let file =
        f.fs.create(&f.vol, ino(&d), b"f", FILE, true)
            .await
            .unwrap();
    for i in [ino(&d), ino(&file)] {
        assert!(matches!(
            f.fs.getattr(&b, i).await,
            Err(MetaError::NoInode { .. })
        ));
    }
    assert_eq!(
        kind(f.fs.readdir(&b, ino(&d), b"", 0).await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(f.fs.create(&b, ino(&d), b"x", FILE, true).await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(f.fs.link(&b, ino(&file), Ino::ROOT, b"l").await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(
            f.fs.setattr(
                &b,
                ino(&file),
                SetAttr {
                    mode: Some(0),
                    ..Default::default()
                }
            )
            .await
        ),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(f.fs.read_extents(&b, ino(&file), 0, 10).await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        kind(f.fs.lookup(&b, Ino::ROOT, b"only-in-a").await),
        FsErrorKind::NotFound
    );
}

// --- names -------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_names_are_refused_by_every_operation() {
    let f = fx().await;
    let file =
        f.fs.create(&f.vol, Ino::ROOT, b"f", FILE, true)
            .await
            .unwrap();
    let long = vec![b'x'; 256];
    let cases: [(&[u8], FsErrorKind); 6] = [
        (b"", FsErrorKind::InvalidArgument),
        (b"a/b", FsErrorKind::InvalidArgument),
        (b"a\0b", FsErrorKind::InvalidArgument),
        (b".", FsErrorKind::InvalidArgument),
        (b"..", FsErrorKind::InvalidArgument),
        (&long, FsErrorKind::NameTooLong),
    ];
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    for (name, want) in cases {
        assert_eq!(
            kind(fs.mkdir(v, r, name, DIR).await),
            want,
            "mkdir {name:?}"
        );
        assert_eq!(kind(fs.create(v, r, name, FILE, false).await), want);
        assert_eq!(kind(fs.symlink(v, r, name, b"t", FILE).await), want);
        assert_eq!(kind(fs.link(v, ino(&file), r, name).await), want);
        assert_eq!(kind(fs.lookup(v, r, name).await), want);
        assert_eq!(kind(fs.unlink(v, r, name).await), want);
        assert_eq!(kind(fs.rmdir(v, r, name).await), want);
        assert_eq!(
            kind(fs.rename(v, r, b"f", r, name, false, false).await),
            want
        );
        assert_eq!(
            kind(fs.rename(v, r, name, r, b"g", false, false).await),
            want
        );
    }
    if let Err(e) = fs.mkdir(v, r, b"a/b", DIR).await {
        assert!(e.to_string().contains("'/'"), "{e}");
    }
    // 255 bytes and non-UTF-8 names are fine.
    fs.create(v, r, &[b'y'; 255], FILE, true).await.unwrap();
    let odd = b"caf\xe9 \xff\xfe";
    fs.mkdir(v, r, odd, DIR).await.unwrap();
    assert_eq!(
        fs.lookup(v, r, odd).await.unwrap().kind(),
        FileKind::Directory
    );
    assert!(names(&f, r).await.contains(&odd.to_vec()));
}

// --- create, mkdir, symlink, link ----------------------------------------------------------------

#[tokio::test]
async fn mkdir_create_and_symlink_set_attributes_and_update_the_parent() {
    let f = fx().await;
    let (fs, v) = (&f.fs, &f.vol);
    let root0 = fs.getattr(v, Ino::ROOT).await.unwrap();
    let d = fs
        .mkdir(
            v,
            Ino::ROOT,
            b"d",
            Owner {
                mode: 0o40750,
                uid: 5,
                gid: 6,
            },
        )
        .await
        .unwrap();
    assert_eq!(d.kind(), FileKind::Directory);
    assert_eq!((d.mode, d.uid, d.gid, d.nlink), (0o750, 5, 6, 2));
    assert_eq!(inode_record(&f, ino(&d)).await.unwrap().parent, Ino::ROOT.0);
    let root1 = fs.getattr(v, Ino::ROOT).await.unwrap();
    assert_eq!(root1.nlink, 3);
    assert!(tk(root1.mtime) >= tk(root0.mtime) && root1.revision > root0.revision);

    let file = fs.create(v, ino(&d), b"f", FILE, true).await.unwrap();
    assert_eq!(file.kind(), FileKind::File);
    assert_eq!((file.mode, file.nlink, file.size), (0o644, 1, 0));
    assert!(file.atime.is_some() && file.mtime.is_some() && file.ctime.is_some());
    assert_eq!(
        fs.getattr(v, ino(&d)).await.unwrap().nlink,
        2,
        "files do not count"
    );

    let link = fs
        .symlink(v, ino(&d), b"s", b"../f\xff", FILE)
        .await
        .unwrap();
    assert_eq!(link.kind(), FileKind::Symlink);
    assert_eq!((link.size, link.mode, link.nlink), (5, 0o777, 1));
    assert_eq!(fs.readlink(v, ino(&link)).await.unwrap(), b"../f\xff");
    assert_eq!(
        kind(fs.readlink(v, ino(&file)).await),
        FsErrorKind::InvalidArgument
    );
    assert_eq!(kind(fs.readlink(v, Ino(999)).await), FsErrorKind::NotFound);
    for bad in [&b""[..], b"a\0", &[b'a'; 4097]] {
        assert_eq!(
            kind(fs.symlink(v, ino(&d), b"s2", bad, FILE).await),
            FsErrorKind::InvalidArgument
        );
    }

    // Attr.revision is the inode record's mod_revision.
    for a in [&d, &file, &link] {
        let kv = f
            .engine
            .get(&keys::inode(v.id, ino(a)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            fs.getattr(v, ino(a)).await.unwrap().revision,
            kv.mod_revision.0
        );
    }
    assert_eq!(
        fs.lookup(v, ino(&d), b"f").await.unwrap(),
        fs.getattr(v, ino(&file)).await.unwrap()
    );
    // Inode numbers are unique.
    let all: HashSet<_> = [Ino::ROOT, ino(&d), ino(&file), ino(&link)].into();
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn creating_needs_a_directory_and_a_free_name() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    fs.symlink(v, r, b"s", b"x", FILE).await.unwrap();
    for name in [&b"f"[..], b"d", b"s"] {
        assert!(matches!(
            fs.mkdir(v, r, name, DIR).await,
            Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            fs.create(v, r, name, FILE, true).await,
            Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            fs.symlink(v, r, name, b"x", FILE).await,
            Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            fs.link(v, ino(&file), r, name).await,
            Err(MetaError::Exists { .. })
        ));
    }
    // Non-exclusive create opens an existing file, and only a file.
    let again = fs.create(v, r, b"f", FILE, false).await.unwrap();
    assert_eq!(again, fs.getattr(v, ino(&file)).await.unwrap());
    assert!(matches!(
        fs.create(v, r, b"d", FILE, false).await,
        Err(MetaError::Exists { .. })
    ));
    assert!(matches!(
        fs.create(v, r, b"s", FILE, false).await,
        Err(MetaError::Exists { .. })
    ));
    let fresh = fs.create(v, ino(&d), b"new", FILE, false).await.unwrap();
    assert_eq!(fresh.kind(), FileKind::File);
    // Parent must be a directory, and exist.
    for p in [ino(&file)] {
        assert!(matches!(
            fs.mkdir(v, p, b"x", DIR).await,
            Err(MetaError::NotDirectory { .. })
        ));
        assert!(matches!(
            fs.create(v, p, b"x", FILE, true).await,
            Err(MetaError::NotDirectory { .. })
        ));
        assert!(matches!(
            fs.symlink(v, p, b"x", b"t", FILE).await,
            Err(MetaError::NotDirectory { .. })
        ));
        assert!(matches!(
            fs.link(v, ino(&fresh), p, b"x").await,
            Err(MetaError::NotDirectory { .. })
        ));
        assert!(matches!(
            fs.lookup(v, p, b"x").await,
            Err(MetaError::NotDirectory { .. })
        ));
        assert!(matches!(
            fs.readdir(v, p, b"", 0).await,
            Err(MetaError::NotDirectory { .. })
        ));
    }
    assert!(matches!(
        fs.mkdir(v, Ino(4242), b"x", DIR).await,
        Err(MetaError::NoInode { .. })
    ));
    assert!(matches!(
        fs.create(v, Ino(4242), b"x", FILE, true).await,
        Err(MetaError::NoInode { .. })
    ));
    assert!(matches!(
        fs.lookup(v, Ino(4242), b"x").await,
        Err(MetaError::NoInode { .. })
    ));
    assert!(matches!(
        fs.getattr(v, Ino(4242)).await,
        Err(MetaError::NoInode { .. })
    ));
    assert!(matches!(
        fs.lookup(v, r, b"nope").await,
        Err(MetaError::NoEntry { .. })
    ));
}

#[tokio::test]
async fn hard_links_count_and_directories_cannot_be_linked() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let a = fs.link(v, ino(&file), ino(&d), b"f2").await.unwrap();
    assert_eq!((a.ino, a.nlink), (file.ino, 2));
    assert!(tk(a.ctime) >= tk(file.ctime));
    assert_eq!(fs.lookup(v, ino(&d), b"f2").await.unwrap().ino, file.ino);
    let a = fs.link(v, ino(&file), r, b"f3").await.unwrap();
    assert_eq!(a.nlink, 3);
    let s = fs.symlink(v, r, b"s", b"f", FILE).await.unwrap();
    assert_eq!(fs.link(v, ino(&s), r, b"s2").await.unwrap().nlink, 2);

    let err = fs.link(v, ino(&d), r, b"d2").await;
    assert!(
        matches!(err, Err(MetaError::PermissionDenied(_))),
        "{err:?}"
    );
    assert!(matches!(
        fs.link(v, Ino(999), r, b"x").await,
        Err(MetaError::NoInode { .. })
    ));

    let gone = fs.unlink(v, r, b"f").await.unwrap();
    assert_eq!((gone.ino, gone.remaining_nlink), (ino(&file), 2));
    let gone = fs.unlink(v, ino(&d), b"f2").await.unwrap();
    assert_eq!(gone.remaining_nlink, 1);
    assert_eq!(fs.getattr(v, ino(&file)).await.unwrap().nlink, 1);
    let gone = fs.unlink(v, r, b"f3").await.unwrap();
    assert_eq!(gone.remaining_nlink, 0);
    assert!(matches!(
        fs.getattr(v, ino(&file)).await,
        Err(MetaError::NoInode { .. })
    ));
}

// --- unlink, rmdir -------------------------------------------------------------------------------

#[tokio::test]
async fn unlink_removes_files_and_their_extents() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    fs.commit_extents(
        v,
        ino(&file),
        vec![extent(0, 4, "b/1"), extent(4, 4, "b/2")],
        8,
        None,
    )
    .await
    .unwrap();
    let before = fs.getattr(v, r).await.unwrap();
    let gone = fs.unlink(v, r, b"f").await.unwrap();
    assert_eq!((gone.ino, gone.remaining_nlink), (ino(&file), 0));
    assert!(inode_record(&f, ino(&file)).await.is_none());
    let prefix = keys::extents(v.id, ino(&file));
    assert!(
        all_keys(&f.engine)
            .await
            .iter()
            .all(|kv| !kv.key.starts_with(&prefix))
    );
    let after = fs.getattr(v, r).await.unwrap();
    assert_eq!(after.nlink, before.nlink);
    assert!(tk(after.mtime) >= tk(before.mtime) && tk(after.ctime) >= tk(before.ctime));
    assert!(after.revision > before.revision);

    assert!(matches!(
        fs.unlink(v, r, b"f").await,
        Err(MetaError::NoEntry { .. })
    ));
    assert!(matches!(
        fs.unlink(v, r, b"d").await,
        Err(MetaError::IsDirectory { .. })
    ));
    assert!(matches!(
        fs.unlink(v, Ino(777), b"x").await,
        Err(MetaError::NoInode { .. })
    ));
    let s = fs.symlink(v, ino(&d), b"s", b"t", FILE).await.unwrap();
    assert_eq!(fs.unlink(v, ino(&d), b"s").await.unwrap().ino, ino(&s));
}

#[tokio::test]
async fn rmdir_needs_an_empty_directory() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let sub = fs.mkdir(v, ino(&d), b"sub", DIR).await.unwrap();
    fs.create(v, r, b"f", FILE, true).await.unwrap();
    assert_eq!(fs.getattr(v, r).await.unwrap().nlink, 3);
    assert_eq!(fs.getattr(v, ino(&d)).await.unwrap().nlink, 3);

    assert!(matches!(
        fs.rmdir(v, r, b"d").await,
        Err(MetaError::NotEmpty { .. })
    ));
    assert!(matches!(
        fs.rmdir(v, r, b"f").await,
        Err(MetaError::NotDirectory { .. })
    ));
    assert!(matches!(
        fs.rmdir(v, r, b"x").await,
        Err(MetaError::NoEntry { .. })
    ));
    let gone = fs.rmdir(v, ino(&d), b"sub").await.unwrap();
    assert_eq!((gone.ino, gone.remaining_nlink), (ino(&sub), 0));
    assert_eq!(fs.getattr(v, ino(&d)).await.unwrap().nlink, 2);
    fs.rmdir(v, r, b"d").await.unwrap();
    assert_eq!(fs.getattr(v, r).await.unwrap().nlink, 2);
    assert!(matches!(
        fs.getattr(v, ino(&d)).await,
        Err(MetaError::NoInode { .. })
    ));
    // The root has no name to remove it by.
    for bad in [&b"."[..], b".."] {
        assert_eq!(
            kind(fs.rmdir(v, r, bad).await),
            FsErrorKind::InvalidArgument
        );
    }
    assert!(fs.getattr(v, r).await.is_ok());
}

// --- rename --------------------------------------------------------------------------------------

#[tokio::test]
async fn rename_moves_and_replaces_compatible_targets() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let a = fs.mkdir(v, r, b"a", DIR).await.unwrap();
    let b = fs.mkdir(v, r, b"b", DIR).await.unwrap();
    let x = fs.create(v, ino(&a), b"x", FILE, true).await.unwrap();

    // Plain move of a file between directories.
    assert_eq!(
        fs.rename(v, ino(&a), b"x", ino(&b), b"y", false, false)
            .await
            .unwrap(),
        None
    );
    assert!(names(&f, ino(&a)).await.is_empty());
    assert_eq!(fs.lookup(v, ino(&b), b"y").await.unwrap().ino, x.ino);
    assert!(tk(fs.getattr(v, ino(&x)).await.unwrap().ctime) >= tk(x.ctime));

    // File over file: the target's inode goes.
    let z = fs.create(v, ino(&b), b"z", FILE, true).await.unwrap();
    fs.commit_extents(v, ino(&z), vec![extent(0, 3, "b/z")], 3, None)
        .await
        .unwrap();
    let replaced = fs
        .rename(v, ino(&b), b"y", ino(&b), b"z", false, false)
        .await
        .unwrap();
    assert_eq!(
        replaced.map(|r| (r.ino, r.remaining_nlink)),
        Some((ino(&z), 0))
    );
    assert!(inode_record(&f, ino(&z)).await.is_none());
    assert_eq!(names(&f, ino(&b)).await, vec![b"z".to_vec()]);
    assert_eq!(fs.statfs(v).await.unwrap().used_bytes, 0);

    // File over a file with another link: it keeps one link.
    let w = fs.create(v, r, b"w", FILE, true).await.unwrap();
    fs.link(v, ino(&w), r, b"w2").await.unwrap();
    let replaced = fs
        .rename(v, ino(&b), b"z", r, b"w", false, false)
        .await
        .unwrap();
    assert_eq!(
        replaced.map(|r| (r.ino, r.remaining_nlink)),
        Some((ino(&w), 1))
    );
    assert_eq!(fs.getattr(v, ino(&w)).await.unwrap().nlink, 1);

    // Directory over empty directory, across parents: link counts follow.
    let e = fs.mkdir(v, ino(&b), b"e", DIR).await.unwrap();
    fs.mkdir(v, ino(&a), b"inner", DIR).await.unwrap();
    let nl = |i: Ino| async move { fs.getattr(v, i).await.unwrap().nlink };
    assert_eq!(
        (nl(r).await, nl(ino(&a)).await, nl(ino(&b)).await),
        (4, 3, 3)
    );
    let replaced = fs
        .rename(v, r, b"a", ino(&b), b"e", false, false)
        .await
        .unwrap();
    assert_eq!(replaced.map(|r| r.ino), Some(ino(&e)));
    assert!(inode_record(&f, ino(&e)).await.is_none());
    assert_eq!((nl(r).await, nl(ino(&b)).await), (3, 3));
    assert_eq!(inode_record(&f, ino(&a)).await.unwrap().parent, b.ino);
    assert_eq!(fs.lookup(v, ino(&b), b"e").await.unwrap().ino, a.ino);

    // Directory moved without replacing.
    fs.rename(v, ino(&b), b"e", r, b"top", false, false)
        .await
        .unwrap();
    assert_eq!((nl(r).await, nl(ino(&b)).await), (4, 2));
    assert_eq!(inode_record(&f, ino(&a)).await.unwrap().parent, Ino::ROOT.0);

    // Renaming within a directory keeps link counts.
    fs.rename(v, r, b"top", r, b"top2", false, false)
        .await
        .unwrap();
    assert_eq!(nl(r).await, 4);
    // Directory over empty directory in the same parent: one subdirectory fewer.
    fs.mkdir(v, r, b"empty", DIR).await.unwrap();
    assert_eq!(nl(r).await, 5);
    fs.rename(v, r, b"top2", r, b"empty", false, false)
        .await
        .unwrap();
    assert_eq!(nl(r).await, 4);
}

#[tokio::test]
async fn rename_refuses_incompatible_targets() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    fs.mkdir(v, r, b"full", DIR).await.unwrap();
    let full = fs.lookup(v, r, b"full").await.unwrap();
    fs.create(v, ino(&full), b"x", FILE, true).await.unwrap();
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();

    let rn = |p: Ino, n: &'static [u8], np: Ino, nn: &'static [u8], nr: bool, ex: bool| async move {
        fs.rename(v, p, n, np, nn, nr, ex).await
    };
    assert!(matches!(
        rn(r, b"d", r, b"f", false, false).await,
        Err(MetaError::NotDirectory { .. })
    ));
    assert!(matches!(
        rn(r, b"f", r, b"d", false, false).await,
        Err(MetaError::IsDirectory { .. })
    ));
    assert!(matches!(
        rn(r, b"d", r, b"full", false, false).await,
        Err(MetaError::NotEmpty { .. })
    ));
    assert!(matches!(
        rn(r, b"f", r, b"d", true, false).await,
        Err(MetaError::Exists { .. })
    ));
    assert!(matches!(
        rn(r, b"nope", r, b"x", false, false).await,
        Err(MetaError::NoEntry { .. })
    ));
    assert!(matches!(
        rn(r, b"f", r, b"nope", false, true).await,
        Err(MetaError::NoEntry { .. })
    ));
    assert!(matches!(
        rn(r, b"f", ino(&file), b"x", false, false).await,
        Err(MetaError::NotDirectory { .. })
    ));
    assert!(matches!(
        rn(Ino(999), b"f", r, b"x", false, false).await,
        Err(MetaError::NoInode { .. })
    ));
    assert_eq!(
        kind(rn(r, b"f", r, b"g", true, true).await),
        FsErrorKind::InvalidArgument
    );
    // Nothing changed.
    assert_eq!(
        names(&f, r).await,
        vec![b"d".to_vec(), b"f".to_vec(), b"full".to_vec()]
    );
    assert_eq!(fs.getattr(v, ino(&d)).await.unwrap().nlink, 2);
    // no_replace with a free name works.
    rn(r, b"f", r, b"g", true, false).await.unwrap();
}

#[tokio::test]
async fn rename_onto_itself_is_a_no_op() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    fs.link(v, ino(&file), r, b"g").await.unwrap();
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let head = f.engine.head().await.unwrap().revision;
    assert_eq!(
        fs.rename(v, r, b"f", r, b"f", false, false).await.unwrap(),
        None
    );
    assert_eq!(
        fs.rename(v, r, b"f", r, b"g", false, false).await.unwrap(),
        None
    );
    assert_eq!(
        fs.rename(v, r, b"d", r, b"d", false, true).await.unwrap(),
        None
    );
    assert_eq!(
        fs.rename(v, r, b"d", r, b"d", true, false).await.unwrap(),
        None
    );
    assert_eq!(
        f.engine.head().await.unwrap().revision,
        head,
        "nothing was written"
    );
    assert_eq!(fs.getattr(v, ino(&file)).await.unwrap().nlink, 2);
    assert_eq!(names(&f, r).await.len(), 3);
    let _ = d;
}

#[tokio::test]
async fn rename_never_moves_a_directory_into_its_own_subtree() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let a = fs.mkdir(v, r, b"a", DIR).await.unwrap();
    let b = fs.mkdir(v, ino(&a), b"b", DIR).await.unwrap();
    let c = fs.mkdir(v, ino(&b), b"c", DIR).await.unwrap();
    for (np, why) in [
        (ino(&a), "itself"),
        (ino(&b), "child"),
        (ino(&c), "grandchild"),
    ] {
        let e = fs.rename(v, r, b"a", np, b"x", false, false).await;
        assert!(
            matches!(e, Err(MetaError::RenameIntoSelf { .. })),
            "{why}: {e:?}"
        );
    }
    // Exchange that would put a directory under itself.
    fs.mkdir(v, ino(&c), b"deep", DIR).await.unwrap();
    let e = fs.rename(v, r, b"a", ino(&c), b"deep", false, true).await;
    assert!(matches!(e, Err(MetaError::RenameIntoSelf { .. })), "{e:?}");
    let e = fs.rename(v, ino(&c), b"deep", r, b"a", false, true).await;
    assert!(matches!(e, Err(MetaError::RenameIntoSelf { .. })), "{e:?}");
    // Moving a directory up is fine.
    fs.rename(v, ino(&b), b"c", r, b"c", false, false)
        .await
        .unwrap();
    assert_eq!(inode_record(&f, ino(&c)).await.unwrap().parent, Ino::ROOT.0);
    // And a file into a subtree is fine.
    fs.create(v, r, b"f", FILE, true).await.unwrap();
    fs.rename(v, r, b"f", ino(&c), b"f", false, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn rename_exchange_swaps_two_entries() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let a = fs.mkdir(v, r, b"a", DIR).await.unwrap();
    let b = fs.mkdir(v, r, b"b", DIR).await.unwrap();
    let file = fs.create(v, ino(&a), b"file", FILE, true).await.unwrap();
    let dir = fs.mkdir(v, ino(&b), b"dir", DIR).await.unwrap();
    let nl = |i: Ino| async move { fs.getattr(v, i).await.unwrap().nlink };
    assert_eq!((nl(ino(&a)).await, nl(ino(&b)).await), (2, 3));

    let out = fs
        .rename(v, ino(&a), b"file", ino(&b), b"dir", false, true)
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(fs.lookup(v, ino(&a), b"file").await.unwrap().ino, dir.ino);
    assert_eq!(fs.lookup(v, ino(&b), b"dir").await.unwrap().ino, file.ino);
    assert_eq!(
        fs.lookup(v, ino(&a), b"file").await.unwrap().kind(),
        FileKind::Directory
    );
    let listed = fs.readdir(v, ino(&a), b"", 0).await.unwrap().entries;
    assert_eq!(listed[0].kind(), FileKind::Directory);
    assert_eq!((nl(ino(&a)).await, nl(ino(&b)).await), (3, 2));
    assert_eq!(inode_record(&f, ino(&dir)).await.unwrap().parent, a.ino);

    // Two directories across parents: parents swap, counts stay.
    let d2 = fs.mkdir(v, ino(&b), b"d2", DIR).await.unwrap();
    fs.rename(v, ino(&a), b"file", ino(&b), b"d2", false, true)
        .await
        .unwrap();
    assert_eq!(inode_record(&f, ino(&dir)).await.unwrap().parent, b.ino);
    assert_eq!(inode_record(&f, ino(&d2)).await.unwrap().parent, a.ino);
    assert_eq!((nl(ino(&a)).await, nl(ino(&b)).await), (3, 3));
    // Same directory.
    fs.rename(v, ino(&b), b"dir", ino(&b), b"d2", false, true)
        .await
        .unwrap();
    assert_eq!(fs.lookup(v, ino(&b), b"d2").await.unwrap().ino, file.ino);
}

// --- setattr and extents -------------------------------------------------------------------------

#[tokio::test]
async fn setattr_changes_what_it_is_asked_to() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let a = fs
        .setattr(
            v,
            ino(&file),
            SetAttr {
                mode: Some(0o104755),
                uid: Some(7),
                gid: Some(8),
                atime: Some(ts(100)),
                mtime: Some(ts(200)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((a.mode, a.uid, a.gid), (0o4755, 7, 8));
    assert_eq!((a.atime, a.mtime), (Some(ts(100)), Some(ts(200))));
    assert!(tk(a.ctime) > tk(Some(ts(200))));
    assert!(a.revision > file.revision);
    assert_eq!(fs.getattr(v, ino(&file)).await.unwrap(), a);
    // Nothing to change: nothing written.
    assert_eq!(
        fs.setattr(v, ino(&file), SetAttr::default()).await.unwrap(),
        a
    );

    // Size: extend, then truncate.
    let a = fs
        .setattr(
            v,
            ino(&file),
            SetAttr {
                size: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.size, 100);
    assert!(
        tk(a.mtime) > tk(Some(ts(200))),
        "a size change updates mtime"
    );

    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let s = fs.symlink(v, r, b"s", b"t", FILE).await.unwrap();
    let size = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        fs.setattr(v, ino(&d), size.clone()).await,
        Err(MetaError::IsDirectory { .. })
    ));
    assert_eq!(
        kind(fs.setattr(v, ino(&s), size.clone()).await),
        FsErrorKind::InvalidArgument
    );
    assert!(matches!(
        fs.setattr(v, Ino(999), size).await,
        Err(MetaError::NoInode { .. })
    ));
    let huge = SetAttr {
        size: Some(u64::MAX),
        ..Default::default()
    };
    assert_eq!(
        kind(fs.setattr(v, ino(&file), huge).await),
        FsErrorKind::InvalidArgument
    );
    // Directories take modes.
    let m = fs
        .setattr(
            v,
            ino(&d),
            SetAttr {
                mode: Some(0o700),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(m.unwrap().mode, 0o700);
}

#[tokio::test]
async fn extents_replace_what_they_overlap_and_truncate_drops_them() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let i = ino(&file);
    let a = fs
        .commit_extents(v, i, vec![extent(0, 100, "b/a")], 100, Some(ts(50)))
        .await
        .unwrap();
    assert_eq!((a.size, a.mtime), (100, Some(ts(50))));
    // Overwrite the middle: the old extent is split.
    let a = fs
        .commit_extents(v, i, vec![extent(10, 20, "b/b")], 30, None)
        .await
        .unwrap();
    assert_eq!(a.size, 100, "commit_extents never shrinks");
    assert!(tk(a.mtime) > tk(Some(ts(50))));
    let (list, size) = fs.read_extents(v, i, 0, 1000).await.unwrap();
    assert_eq!(size, 100);
    let shape: Vec<_> = list
        .iter()
        .map(|e| (e.offset, e.length, e.block_id.as_str(), e.block_offset))
        .collect();
    assert_eq!(
        shape,
        [(0, 10, "b/a", 0), (10, 20, "b/b", 0), (30, 70, "b/a", 30)]
    );
    // Overlapping ranges return whole extents, in offset order.
    let (list, _) = fs.read_extents(v, i, 25, 10).await.unwrap();
    let shape: Vec<_> = list.iter().map(|e| (e.offset, e.length)).collect();
    assert_eq!(shape, [(10, 20), (30, 70)]);
    assert!(fs.read_extents(v, i, 100, 10).await.unwrap().0.is_empty());
    assert!(fs.read_extents(v, i, 5, 0).await.unwrap().0.is_empty());
    assert_eq!(
        fs.read_extents(v, i, u64::MAX, u64::MAX)
            .await
            .unwrap()
            .0
            .len(),
        0
    );
    // Extend with a write past the end.
    let a = fs
        .commit_extents(v, i, vec![extent(200, 10, "b/c")], 210, None)
        .await
        .unwrap();
    assert_eq!(a.size, 210);
    // Sparse extension with no extents.
    assert_eq!(
        fs.commit_extents(v, i, vec![], 300, None)
            .await
            .unwrap()
            .size,
        300
    );

    // Truncate into the middle of an extent: it is trimmed, later ones dropped.
    fs.setattr(
        v,
        i,
        SetAttr {
            size: Some(15),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (list, size) = fs.read_extents(v, i, 0, u64::MAX).await.unwrap();
    assert_eq!(size, 15);
    let shape: Vec<_> = list
        .iter()
        .map(|e| (e.offset, e.length, e.block_offset))
        .collect();
    assert_eq!(shape, [(0, 10, 0), (10, 5, 0)]);
    // Truncating on an extent boundary and to zero.
    fs.setattr(
        v,
        i,
        SetAttr {
            size: Some(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fs.read_extents(v, i, 0, 100).await.unwrap().0.len(), 1);
    fs.setattr(
        v,
        i,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(fs.read_extents(v, i, 0, 100).await.unwrap().0.is_empty());
    let prefix = keys::extents(v.id, i);
    assert!(
        all_keys(&f.engine)
            .await
            .iter()
            .all(|kv| !kv.key.starts_with(&prefix))
    );

    // Several extents in one commit; a later one wins over an earlier one.
    fs.commit_extents(
        v,
        i,
        vec![extent(0, 10, "b/x"), extent(5, 10, "b/y")],
        15,
        None,
    )
    .await
    .unwrap();
    let (list, _) = fs.read_extents(v, i, 0, 100).await.unwrap();
    let shape: Vec<_> = list
        .iter()
        .map(|e| (e.offset, e.length, e.block_id.as_str()))
        .collect();
    assert_eq!(shape, [(0, 5, "b/x"), (5, 10, "b/y")]);
}

#[tokio::test]
async fn bad_extents_are_refused() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let i = ino(&file);
    let bad = [
        (
            Extent {
                length: 0,
                ..extent(0, 10, "b")
            },
            10,
        ),
        (
            Extent {
                block_offset: 1,
                ..extent(0, 10, "b")
            },
            10,
        ),
        (
            Extent {
                block_offset: u64::MAX,
                ..extent(0, 10, "b")
            },
            10,
        ),
        (extent(u64::MAX - 5, 10, "b"), u64::MAX),
        (extent(0, 10, "../escape"), 10),
        (extent(0, 10, "/abs"), 10),
        (extent(0, 10, ""), 10),
        (
            Extent {
                checksum: vec![0; 31],
                ..extent(0, 10, "b")
            },
            10,
        ),
        (extent(0, 10, "b"), 5), // new_size below the end of the write
    ];
    for (e, new_size) in bad {
        let r = fs
            .commit_extents(v, i, vec![e.clone()], new_size, None)
            .await;
        assert_eq!(kind(r), FsErrorKind::InvalidArgument, "{e:?}");
    }
    let many = (0..5000).map(|n| extent(n * 10, 10, "b")).collect();
    assert_eq!(
        kind(fs.commit_extents(v, i, many, 50_000, None).await),
        FsErrorKind::InvalidArgument
    );
    assert_eq!(fs.getattr(v, i).await.unwrap().size, 0);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let s = fs.symlink(v, r, b"s", b"t", FILE).await.unwrap();
    let one = || vec![extent(0, 1, "b")];
    assert!(matches!(
        fs.commit_extents(v, ino(&d), one(), 1, None).await,
        Err(MetaError::IsDirectory { .. })
    ));
    assert_eq!(
        kind(fs.commit_extents(v, ino(&s), one(), 1, None).await),
        FsErrorKind::InvalidArgument
    );
    assert!(matches!(
        fs.commit_extents(v, Ino(999), one(), 1, None).await,
        Err(MetaError::NoInode { .. })
    ));
    assert!(matches!(
        fs.read_extents(v, ino(&d), 0, 1).await,
        Err(MetaError::IsDirectory { .. })
    ));
}

// --- readdir -------------------------------------------------------------------------------------

#[tokio::test]
async fn readdir_pages_in_name_order() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let mut want = Vec::new();
    for n in [&b"b"[..], b"a", b"c", b"ab", b"\xff", b"B"] {
        fs.create(v, ino(&d), n, FILE, true).await.unwrap();
        want.push(n.to_vec());
    }
    fs.mkdir(v, ino(&d), b"sub", DIR).await.unwrap();
    want.push(b"sub".to_vec());
    want.sort();
    let all = fs.readdir(v, ino(&d), b"", 0).await.unwrap();
    assert!(!all.more);
    assert_eq!(
        all.entries
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        want
    );
    let sub = all.entries.iter().find(|e| e.name == b"sub").unwrap();
    assert_eq!(sub.kind(), FileKind::Directory);
    assert!(
        all.entries
            .iter()
            .all(|e| e.name != b"." && e.name != b"..")
    );

    let mut got = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = fs.readdir(v, ino(&d), &after, 2).await.unwrap();
        assert!(page.entries.len() <= 2);
        got.extend(page.entries.iter().map(|e| e.name.clone()));
        match page.entries.last() {
            Some(last) if page.more => after = last.name.clone(),
            _ => break,
        }
    }
    assert_eq!(got, want);
    let page = fs.readdir(v, ino(&d), b"b", 0).await.unwrap();
    assert_eq!(page.entries[0].name, b"c");
    assert!(
        fs.readdir(v, ino(&d), b"\xff", 0)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
}

#[tokio::test]
async fn readdir_plus_returns_each_entrys_current_attributes() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let a = fs.create(v, ino(&d), b"a", FILE, true).await.unwrap();
    fs.mkdir(v, ino(&d), b"sub", DIR).await.unwrap();
    fs.symlink(v, ino(&d), b"s", b"a", FILE).await.unwrap();
    fs.link(v, ino(&a), ino(&d), b"b").await.unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(12_345),
        ..Default::default()
    };
    fs.setattr(v, ino(&a), set).await.unwrap();

    let plain = fs.readdir(v, ino(&d), b"", 0).await.unwrap();
    assert!(plain.entries.iter().all(|e| e.attr.is_none()));
    let plus = fs.readdir_plus(v, ino(&d), b"", 0).await.unwrap();
    let names = |p: &DirPage| p.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&plus), names(&plain));
    assert_eq!(plus.entries.len(), 4);
    for e in &plus.entries {
        let got = e.attr.expect("attributes of a live entry");
        assert_eq!(
            got,
            fs.getattr(v, Ino(e.ino)).await.unwrap(),
            "{:?}",
            e.name
        );
    }
    let b = plus
        .entries
        .iter()
        .find(|e| e.name == b"b")
        .unwrap()
        .attr
        .unwrap();
    assert_eq!((b.size, b.mode, b.nlink), (12_345, 0o600, 2));

    // Pages, as readdir's.
    let first = fs.readdir_plus(v, ino(&d), b"", 2).await.unwrap();
    assert_eq!((first.entries.len(), first.more), (2, true));
    let rest = fs.readdir_plus(v, ino(&d), b"b", 0).await.unwrap();
    assert_eq!(names(&rest), vec![b"s".to_vec(), b"sub".to_vec()]);
    assert!(rest.entries.iter().all(|e| e.attr.is_some()));
    // Not a directory: the same error as readdir.
    assert!(matches!(
        fs.readdir_plus(v, ino(&a), b"", 0).await,
        Err(MetaError::NotDirectory { .. })
    ));
}

#[tokio::test]
async fn readdir_limits_pages() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    for n in 0..10_050u32 {
        fs.create(v, r, format!("{n:05}").as_bytes(), FILE, true)
            .await
            .unwrap();
    }
    let page = fs.readdir(v, r, b"", 0).await.unwrap();
    assert_eq!((page.entries.len(), page.more), (1000, true));
    let page = fs.readdir(v, r, b"", usize::MAX).await.unwrap();
    assert_eq!((page.entries.len(), page.more), (10_000, true));
    let page = fs.readdir(v, r, b"10000", 100).await.unwrap();
    assert_eq!((page.entries.len(), page.more), (49, false));
}

// --- resolve -------------------------------------------------------------------------------------

#[tokio::test]
async fn resolve_walks_paths_without_following_symlinks() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let a = fs.mkdir(v, r, b"a", DIR).await.unwrap();
    let b = fs.mkdir(v, ino(&a), b"b", DIR).await.unwrap();
    let file = fs.create(v, ino(&b), b"file", FILE, true).await.unwrap();
    let link = fs.symlink(v, ino(&a), b"link", b"b", FILE).await.unwrap();

    let found = |p: &'static str| async move {
        match fs.resolve(v, p).await.unwrap() {
            Resolved::Found(a) => a.ino,
            other => panic!("{p}: {other:?}"),
        }
    };
    for root in ["", "/", "//", "///"] {
        assert_eq!(found(root).await, Ino::ROOT.0);
    }
    assert_eq!(found("/a/b").await, b.ino);
    assert_eq!(found("a/b/").await, b.ino);
    assert_eq!(found("//a///b//file").await, file.ino);
    assert_eq!(
        found("/a/link").await,
        link.ino,
        "a final symlink is returned as is"
    );

    let missing = |p: &'static str| async move { fs.resolve(v, p).await.unwrap() };
    assert_eq!(
        missing("/a/nope/c").await,
        Resolved::Missing {
            existing_prefix: "/a".into(),
            missing_component: "nope".into(),
            blocking_kind: None,
        }
    );
    assert_eq!(
        missing("/x").await,
        Resolved::Missing {
            existing_prefix: "/".into(),
            missing_component: "x".into(),
            blocking_kind: None,
        }
    );
    assert_eq!(
        missing("/a/link/file").await,
        Resolved::Missing {
            existing_prefix: "/a/link".into(),
            missing_component: "file".into(),
            blocking_kind: Some(FileKind::Symlink),
        }
    );
    assert_eq!(
        missing("a//b/file/x/y").await,
        Resolved::Missing {
            existing_prefix: "/a/b/file".into(),
            missing_component: "x".into(),
            blocking_kind: Some(FileKind::File),
        }
    );
    for bad in ["/a/../b", "/./a", "..", "/a/b/.", "/a\0"] {
        let e = fs.resolve(v, bad).await.unwrap_err();
        assert_eq!(e.kind(), FsErrorKind::InvalidArgument, "{bad:?}");
        assert!(e.to_string().contains("path"), "{e}");
    }
    let long = format!("/a/{}", "x".repeat(256));
    assert_eq!(kind(fs.resolve(v, &long).await), FsErrorKind::NameTooLong);
}

// --- usage and capacity --------------------------------------------------------------------------

#[tokio::test]
async fn statfs_counts_inodes_and_bytes() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let u = fs.statfs(v).await.unwrap();
    assert_eq!((u.used_inodes, u.used_bytes, u.capacity_inodes), (1, 0, 0));
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let a = fs.create(v, ino(&d), b"a", FILE, true).await.unwrap();
    fs.symlink(v, r, b"s", b"target", FILE).await.unwrap();
    fs.commit_extents(v, ino(&a), vec![extent(0, 100, "b/1")], 100, None)
        .await
        .unwrap();
    let b = fs.create(v, r, b"b", FILE, true).await.unwrap();
    fs.setattr(
        v,
        ino(&b),
        SetAttr {
            size: Some(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let u = fs.statfs(v).await.unwrap();
    assert_eq!((u.used_inodes, u.used_bytes), (5, 150));
    fs.link(v, ino(&a), r, b"a2").await.unwrap();
    fs.unlink(v, ino(&d), b"a").await.unwrap();
    assert_eq!(
        fs.statfs(v).await.unwrap().used_bytes,
        150,
        "a still has a link"
    );
    fs.setattr(
        v,
        ino(&b),
        SetAttr {
            size: Some(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    fs.unlink(v, r, b"a2").await.unwrap();
    fs.rmdir(v, r, b"d").await.unwrap();
    let u = fs.statfs(v).await.unwrap();
    assert_eq!((u.used_inodes, u.used_bytes), (3, 20));
    let info = fs.volume_info(v).await.unwrap();
    assert_eq!((info.used_inodes, info.used_bytes), (3, 20));

    // A second process over the same engine sees the same, immediately.
    let other = FsMeta::open(f.engine.clone()).await.unwrap();
    let vol2 = other.authenticate("data", &f.token).await.unwrap();
    other.create(&vol2, r, b"c", FILE, true).await.unwrap();
    assert_eq!(fs.statfs(v).await.unwrap().used_inodes, 4);
    assert_eq!(other.statfs(&vol2).await.unwrap().used_inodes, 4);
}

#[tokio::test]
async fn capacity_limits_creates_and_growth() {
    let f = fx_with(NewVolume {
        name: "small".into(),
        capacity_inodes: 4,
        capacity_bytes: 1000,
        ..Default::default()
    })
    .await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    let a = fs.create(v, ino(&d), b"a", FILE, true).await.unwrap();
    fs.symlink(v, r, b"s", b"t", FILE).await.unwrap();
    for r in [
        fs.create(v, r, b"x", FILE, true).await,
        fs.mkdir(v, r, b"x", DIR).await,
        fs.symlink(v, r, b"x", b"t", FILE).await,
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, MetaError::NoSpace { .. }), "{e}");
        assert!(e.to_string().contains("4 of 4 inodes"), "{e}");
    }
    // Hard links take no inode; existing files open fine.
    fs.link(v, ino(&a), r, b"hard").await.unwrap();
    fs.create(v, r, b"hard", FILE, false).await.unwrap();
    // Freeing an inode makes room again.
    fs.unlink(v, r, b"s").await.unwrap();
    fs.create(v, r, b"x", FILE, true).await.unwrap();
    assert!(matches!(
        fs.create(v, r, b"y", FILE, true).await,
        Err(MetaError::NoSpace { .. })
    ));

    // Bytes.
    fs.commit_extents(v, ino(&a), vec![extent(0, 600, "b/1")], 600, None)
        .await
        .unwrap();
    let e = fs
        .commit_extents(v, ino(&a), vec![extent(600, 500, "b/2")], 1100, None)
        .await;
    assert!(matches!(e, Err(MetaError::NoSpace { .. })), "{e:?}");
    let grow = SetAttr {
        size: Some(1001),
        ..Default::default()
    };
    assert!(matches!(
        fs.setattr(v, ino(&a), grow).await,
        Err(MetaError::NoSpace { .. })
    ));
    // Overwriting inside the file does not grow it.
    fs.commit_extents(v, ino(&a), vec![extent(0, 600, "b/3")], 600, None)
        .await
        .unwrap();
    fs.setattr(
        v,
        ino(&a),
        SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let u = fs.statfs(v).await.unwrap();
    assert_eq!(
        (
            u.used_bytes,
            u.capacity_bytes,
            u.used_inodes,
            u.capacity_inodes
        ),
        (1000, 1000, 4, 4)
    );
}

// --- corrupt records -----------------------------------------------------------------------------

async fn put_raw(engine: &Arc<dyn Engine>, key: Vec<u8>, value: &[u8]) {
    let r = engine
        .txn(Txn::new().put(key, value.to_vec()))
        .await
        .unwrap();
    assert!(matches!(r, TxnOutcome::Committed(_)));
}

#[tokio::test]
async fn corrupt_records_are_reported_with_their_key() {
    let f = fx().await;
    let (fs, v, r) = (&f.fs, &f.vol, Ino::ROOT);
    let file = fs.create(v, r, b"f", FILE, true).await.unwrap();
    let d = fs.mkdir(v, r, b"d", DIR).await.unwrap();
    put_raw(
        &f.engine,
        keys::inode(v.id, ino(&file)),
        b"\xff\xff\xff garbage",
    )
    .await;
    let want_key = format!("m/i/vol={}/ino={}", v.id, file.ino);
    for e in [
        fs.getattr(v, ino(&file)).await.unwrap_err(),
        fs.lookup(v, r, b"f").await.unwrap_err(),
        fs.unlink(v, r, b"f").await.unwrap_err(),
        fs.setattr(
            v,
            ino(&file),
            SetAttr {
                mode: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
        fs.read_extents(v, ino(&file), 0, 1).await.unwrap_err(),
    ] {
        match &e {
            MetaError::CorruptRecord { key, .. } => assert_eq!(key, &want_key),
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        assert_eq!(e.kind(), FsErrorKind::Corrupt);
        assert!(e.to_string().contains(&want_key), "{e}");
    }
    // A record that decodes but has no kind is damaged too.
    let empty = records::Inode::default().encode_to_vec();
    put_raw(&f.engine, keys::inode(v.id, ino(&d)), &empty).await;
    assert_eq!(kind(fs.getattr(v, ino(&d)).await), FsErrorKind::Corrupt);
    // Directory entries, volume records, usage records.
    put_raw(&f.engine, keys::dentry(v.id, r, b"bad"), b"\xff").await;
    let e = fs.readdir(v, r, b"", 0).await.unwrap_err();
    assert!(e.to_string().contains("m/d/vol=1/parent=1/bad"), "{e}");
    assert_eq!(kind(fs.lookup(v, r, b"bad").await), FsErrorKind::Corrupt);
    put_raw(&f.engine, keys::usage_base(v.id), b"\xff").await;
    assert_eq!(kind(fs.statfs(v).await), FsErrorKind::Corrupt);
    put_raw(&f.engine, keys::volume(v.id), b"\xff").await;
    let e = f.fs.authenticate("data", &f.token).await.unwrap_err();
    assert!(e.to_string().contains("m/v/vol=1"), "{e}");
    // Garbage in the keyspace of another volume id does not disturb anyone.
    put_raw(&f.engine, keys::inode(VolumeId(99), Ino(1)), b"\xff").await;
}

// --- concurrency ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_creates_in_own_and_shared_directories() {
    const OWN: usize = 64;
    const SHARED: usize = 16;
    const FILES: usize = 40;
    let f = fx().await;
    // Two processes over one engine, to also exercise inode batches of both.
    let second = FsMeta::open(f.engine.clone()).await.unwrap();
    let vol2 = second.authenticate("data", &f.token).await.unwrap();
    let shared = f.fs.mkdir(&f.vol, Ino::ROOT, b"shared", DIR).await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..OWN + SHARED {
        let (fs, vol) = if t % 2 == 0 {
            (f.fs.clone(), f.vol.clone())
        } else {
            (second.clone(), vol2.clone())
        };
        let shared = ino(&shared);
        tasks.push(tokio::spawn(async move {
            let dir = if t < OWN {
                let name = format!("own-{t}");
                ino(&fs
                    .mkdir(&vol, Ino::ROOT, name.as_bytes(), DIR)
                    .await
                    .unwrap())
            } else {
                shared
            };
            let mut inos = Vec::new();
            for n in 0..FILES {
                let name = format!("t{t}-f{n}");
                let a = fs
                    .create(&vol, dir, name.as_bytes(), FILE, true)
                    .await
                    .unwrap();
                inos.push(a.ino);
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
    assert_eq!(all.len(), (OWN + SHARED) * FILES);

    let (fs, v) = (&f.fs, &f.vol);
    let root = fs.readdir(v, Ino::ROOT, b"", 0).await.unwrap();
    assert_eq!(root.entries.len(), OWN + 1);
    assert_eq!(
        fs.getattr(v, Ino::ROOT).await.unwrap().nlink,
        2 + OWN as u32 + 1
    );
    for e in &root.entries {
        let listed = fs.readdir(v, Ino(e.ino), b"", 0).await.unwrap().entries;
        let want = if e.ino == shared.ino {
            SHARED * FILES
        } else {
            FILES
        };
        assert_eq!(listed.len(), want, "{:?}", String::from_utf8_lossy(&e.name));
        assert_eq!(fs.getattr(v, Ino(e.ino)).await.unwrap().nlink, 2);
        for l in listed {
            assert!(all.contains(&l.ino));
            assert_eq!(fs.getattr(v, Ino(l.ino)).await.unwrap().nlink, 1);
        }
    }
    let want = 1 + 1 + OWN + (OWN + SHARED) * FILES;
    assert_eq!(fs.statfs(v).await.unwrap().used_inodes, want as u64);
    assert_eq!(second.statfs(&vol2).await.unwrap().used_inodes, want as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_renames_never_create_cycles() {
    let f = fx().await;
    let (fs, v) = (&f.fs, &f.vol);
    let a = fs.mkdir(v, Ino::ROOT, b"a", DIR).await.unwrap();
    let b = fs.mkdir(v, Ino::ROOT, b"b", DIR).await.unwrap();
    let second = FsMeta::open(f.engine.clone()).await.unwrap();
    // mv /a /b/a and mv /b /a/b at once, many times: at most one wins each round.
    for round in 0..50 {
        let (fs1, v1, fs2, v2) = (fs.clone(), v.clone(), second.clone(), v.clone());
        let (pa, pb) = (
            inode_record(&f, ino(&a)).await.unwrap().parent,
            inode_record(&f, ino(&b)).await.unwrap().parent,
        );
        let (a_parent, b_parent) = (Ino(pa), Ino(pb));
        let t1 = tokio::spawn(async move {
            fs1.rename(&v1, a_parent, b"a", ino(&b), b"a", false, false)
                .await
        });
        let t2 = tokio::spawn(async move {
            fs2.rename(&v2, b_parent, b"b", ino(&a), b"b", false, false)
                .await
        });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        assert!(
            r1.is_err() || r2.is_err(),
            "round {round}: both moves succeeded"
        );
        // Walk both up to the root: no cycle.
        for start in [ino(&a), ino(&b)] {
            let mut cur = start;
            for _ in 0..4 {
                if cur == Ino::ROOT {
                    break;
                }
                cur = Ino(inode_record(&f, cur).await.unwrap().parent);
            }
            assert_eq!(
                cur,
                Ino::ROOT,
                "round {round}: {start} does not reach the root"
            );
        }
        // Put both back at the top.
        for (d, name) in [(ino(&a), b"a"), (ino(&b), b"b")] {
            let p = Ino(inode_record(&f, d).await.unwrap().parent);
            if p != Ino::ROOT {
                fs.rename(v, p, name, Ino::ROOT, name, false, false)
                    .await
                    .unwrap();
            }
        }
    }
}
