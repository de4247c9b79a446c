//! Reference-model property test (after mountpoint-s3's `reftests`): random histories of file
//! operations applied to the file-system core and to a local directory, comparing after every
//! operation the result (errno), and the trees (kinds, sizes, contents, symlink targets, link
//! counts); at the end the tree is compared again through a fresh client with empty caches.
//!
//! The core is driven as the kernel would drive it: names are resolved component by component
//! with `lookup`, `open(O_CREAT)` of an existing name opens it, and symlinks (all of which
//! dangle here, like `/nonexistent/...`) resolve to ENOENT when followed.

#![allow(clippy::unwrap_used)]

mod core_env;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use core_env::{Env, pattern};
use mirrorfs_api::meta::FileKind;
use mirrorfs_fs::{FsConfig, FsCore, FsError, SetAttr};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const DIRS: [&str; 3] = ["", "x", "y"];
const NAMES: [&str; 4] = ["a", "b", "x", "y"];

#[derive(Clone, Copy, Debug)]
struct P(u8, u8);

impl P {
    fn path(self) -> String {
        let (d, n) = (DIRS[self.0 as usize], NAMES[self.1 as usize]);
        if d.is_empty() {
            n.to_owned()
        } else {
            format!("{d}/{n}")
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(P),
    Write(P, u64, usize, u8),
    Truncate(P, u64),
    Read(P, u64, usize),
    Rename(P, P),
    Unlink(P),
    Mkdir(P),
    Rmdir(P),
    Link(P, P),
    Symlink(P, u8),
}

fn path() -> impl Strategy<Value = P> {
    (0u8..3, 0u8..4).prop_map(|(d, n)| P(d, n))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => path().prop_map(Op::Create),
        4 => (path(), 0u64..20_000, 1usize..10_000, any::<u8>())
            .prop_map(|(p, o, l, s)| Op::Write(p, o, l, s)),
        1 => (path(), 0u64..25_000).prop_map(|(p, s)| Op::Truncate(p, s)),
        2 => (path(), 0u64..25_000, 1usize..12_000).prop_map(|(p, o, l)| Op::Read(p, o, l)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => path().prop_map(Op::Unlink),
        3 => path().prop_map(Op::Mkdir),
        1 => path().prop_map(Op::Rmdir),
        1 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (path(), any::<u8>()).prop_map(|(p, t)| Op::Symlink(p, t)),
    ]
}

type Res<T> = Result<T, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn fe(e: FsError) -> i32 {
    e.errno()
}

// ---- the local directory ----

fn local(root: &Path, op: &Op) -> Res<Option<Vec<u8>>> {
    let p = |x: &P| root.join(x.path());
    match op {
        Op::Create(a) => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(a))
            .map(|_| None)
            .map_err(errno),
        Op::Write(a, off, len, seed) => {
            let f = OpenOptions::new().write(true).open(p(a)).map_err(errno)?;
            f.write_all_at(&pattern(*len, *seed as u64), *off)
                .map_err(errno)?;
            Ok(None)
        }
        Op::Truncate(a, size) => {
            let f = OpenOptions::new().write(true).open(p(a)).map_err(errno)?;
            f.set_len(*size).map_err(errno).map(|_| None)
        }
        Op::Read(a, off, len) => {
            let f = std::fs::File::open(p(a)).map_err(errno)?;
            let mut buf = vec![0; *len];
            let mut got = 0;
            while got < *len {
                let n = f
                    .read_at(&mut buf[got..], off + got as u64)
                    .map_err(errno)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(Some(buf))
        }
        Op::Rename(a, b) => std::fs::rename(p(a), p(b)).map(|_| None).map_err(errno),
        Op::Unlink(a) => std::fs::remove_file(p(a)).map(|_| None).map_err(errno),
        Op::Mkdir(a) => std::fs::create_dir(p(a)).map(|_| None).map_err(errno),
        Op::Rmdir(a) => std::fs::remove_dir(p(a)).map(|_| None).map_err(errno),
        Op::Link(a, b) => std::fs::hard_link(p(a), p(b)).map(|_| None).map_err(errno),
        Op::Symlink(a, t) => std::os::unix::fs::symlink(target(*t), p(a))
            .map(|_| None)
            .map_err(errno),
    }
}

fn target(t: u8) -> String {
    format!("/nonexistent/t{t}")
}

// ---- the core, driven as the kernel drives it ----

fn kind(a: &mirrorfs_api::meta::Attr) -> FileKind {
    FileKind::try_from(a.kind).unwrap_or(FileKind::Unspecified)
}

/// The parent directory of `p` and its last name.
async fn parent(core: &FsCore, p: &P) -> Res<(u64, Vec<u8>)> {
    let mut ino = core.root();
    let d = DIRS[p.0 as usize];
    if !d.is_empty() {
        let a = core.lookup(ino, d.as_bytes()).await.map_err(fe)?;
        match kind(&a) {
            FileKind::Directory => ino = a.ino,
            // Every symlink dangles: following one finds nothing.
            FileKind::Symlink => return Err(libc::ENOENT),
            _ => return Err(libc::ENOTDIR),
        }
    }
    Ok((ino, NAMES[p.1 as usize].as_bytes().to_vec()))
}

/// The inode `p` names, following a final symlink (which dangles).
async fn follow(core: &FsCore, p: &P) -> Res<mirrorfs_api::meta::Attr> {
    let (dir, name) = parent(core, p).await?;
    let a = core.lookup(dir, &name).await.map_err(fe)?;
    if kind(&a) == FileKind::Symlink {
        return Err(libc::ENOENT);
    }
    Ok(a)
}

async fn fs(core: &FsCore, op: &Op) -> Res<Option<Vec<u8>>> {
    match op {
        Op::Create(a) => {
            let (dir, name) = parent(core, a).await?;
            match core.lookup(dir, &name).await {
                Ok(attr) => {
                    if kind(&attr) == FileKind::Symlink {
                        return Err(libc::ENOENT);
                    }
                    let fh = core.open(attr.ino, libc::O_WRONLY).await.map_err(fe)?;
                    core.release(attr.ino, fh).await.map_err(fe)?;
                }
                Err(FsError::NotFound(_)) => {
                    let flags = libc::O_WRONLY | libc::O_CREAT;
                    let (attr, fh) = core
                        .create(dir, &name, 0o644, 0, 0, flags)
                        .await
                        .map_err(fe)?;
                    core.release(attr.ino, fh).await.map_err(fe)?;
                }
                Err(e) => return Err(fe(e)),
            }
            Ok(None)
        }
        Op::Write(a, off, len, seed) => {
            let attr = follow(core, a).await?;
            let fh = core.open(attr.ino, libc::O_WRONLY).await.map_err(fe)?;
            let r = core
                .write(attr.ino, fh, *off, &pattern(*len, *seed as u64))
                .await;
            let closed = core.release(attr.ino, fh).await;
            r.map_err(fe)?;
            closed.map_err(fe)?;
            Ok(None)
        }
        Op::Truncate(a, size) => {
            let attr = follow(core, a).await?;
            let set = SetAttr {
                size: Some(*size),
                ..Default::default()
            };
            core.setattr(attr.ino, set, None).await.map_err(fe)?;
            Ok(None)
        }
        Op::Read(a, off, len) => {
            let attr = follow(core, a).await?;
            let fh = core.open(attr.ino, libc::O_RDONLY).await.map_err(fe)?;
            let r = core.read(attr.ino, fh, *off, *len as u32).await;
            core.release(attr.ino, fh).await.map_err(fe)?;
            Ok(Some(r.map_err(fe)?.to_vec()))
        }
        Op::Rename(a, b) => {
            let (d1, n1) = parent(core, a).await?;
            let (d2, n2) = parent(core, b).await?;
            core.rename(d1, &n1, d2, &n2, 0).await.map_err(fe)?;
            Ok(None)
        }
        Op::Unlink(a) => {
            let (d, n) = parent(core, a).await?;
            core.unlink(d, &n).await.map_err(fe).map(|_| None)
        }
        Op::Mkdir(a) => {
            let (d, n) = parent(core, a).await?;
            core.mkdir(d, &n, 0o755, 0, 0)
                .await
                .map_err(fe)
                .map(|_| None)
        }
        Op::Rmdir(a) => {
            let (d, n) = parent(core, a).await?;
            core.rmdir(d, &n).await.map_err(fe).map(|_| None)
        }
        Op::Link(a, b) => {
            let (d1, n1) = parent(core, a).await?;
            let src = core.lookup(d1, &n1).await.map_err(fe)?;
            let (d2, n2) = parent(core, b).await?;
            // The VFS looks the new name up before asking the file system.
            match core.lookup(d2, &n2).await {
                Ok(_) => return Err(libc::EEXIST),
                Err(FsError::NotFound(_)) => {}
                Err(e) => return Err(fe(e)),
            }
            core.link(src.ino, d2, &n2).await.map_err(fe).map(|_| None)
        }
        Op::Symlink(a, t) => {
            let (d, n) = parent(core, a).await?;
            core.symlink(d, &n, target(*t).as_bytes(), 0, 0)
                .await
                .map_err(fe)
                .map(|_| None)
        }
    }
}

// ---- trees ----

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { data: Vec<u8>, nlink: u64 },
    Link(Vec<u8>),
}

fn local_tree(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let md = e.path().symlink_metadata().unwrap();
        if md.is_dir() {
            out.insert(name.clone(), Node::Dir);
            local_tree(&e.path(), &format!("{name}/"), out);
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(e.path()).unwrap();
            out.insert(name, Node::Link(t.to_string_lossy().as_bytes().to_vec()));
        } else {
            let data = std::fs::read(e.path()).unwrap();
            out.insert(
                name,
                Node::File {
                    data,
                    nlink: md.nlink(),
                },
            );
        }
    }
}

async fn fs_tree(core: &FsCore, dir: u64, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let fh = core.opendir(dir).await.unwrap();
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        let page = core.readdir(dir, fh, offset).await.unwrap();
        let Some(last) = page.last() else { break };
        offset = last.offset;
        entries.extend(page);
    }
    core.releasedir(fh).await;
    for e in entries {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let name = format!("{prefix}{}", String::from_utf8_lossy(&e.name));
        let attr = core.lookup(dir, &e.name).await.unwrap();
        assert_eq!(attr.ino, e.ino, "{name}: listing and lookup disagree");
        match kind(&attr) {
            FileKind::Directory => {
                out.insert(name.clone(), Node::Dir);
                Box::pin(fs_tree(core, attr.ino, &format!("{name}/"), out)).await;
            }
            FileKind::Symlink => {
                out.insert(name, Node::Link(core.readlink(attr.ino).await.unwrap()));
            }
            _ => {
                let fh = core.open(attr.ino, libc::O_RDONLY).await.unwrap();
                let data = core
                    .read(attr.ino, fh, 0, attr.size as u32 + 1)
                    .await
                    .unwrap()
                    .to_vec();
                core.release(attr.ino, fh).await.unwrap();
                assert_eq!(
                    data.len() as u64,
                    attr.size,
                    "{name}: size and contents disagree"
                );
                out.insert(
                    name,
                    Node::File {
                        data,
                        nlink: attr.nlink as u64,
                    },
                );
            }
        }
    }
}

fn config() -> FsConfig {
    FsConfig {
        block_size: 4096,
        readahead_blocks: 2,
        ..Default::default()
    }
}

async fn run_case(env: &Env, case: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let volume = format!("v{case}");
    let token = env.volume(&volume).await;
    let url = env.source.url.clone();
    let core = env.core(&url, &volume, &token, config()).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, op) in ops.iter().enumerate() {
        let want = local(dir.path(), op);
        let got = fs(&core, op).await;
        prop_assert_eq!(&got, &want, "op {} {:?}", i, op);
        let mut lt = BTreeMap::new();
        local_tree(dir.path(), "", &mut lt);
        let mut ft = BTreeMap::new();
        fs_tree(&core, core.root(), "", &mut ft).await;
        prop_assert_eq!(&ft, &lt, "trees differ after op {} {:?}", i, op);
    }
    // Everything was committed: a client with empty caches sees the same tree.
    let fresh = env.core(&url, &volume, &token, config()).await;
    let mut lt = BTreeMap::new();
    local_tree(dir.path(), "", &mut lt);
    let mut ft = BTreeMap::new();
    fs_tree(&fresh, fresh.root(), "", &mut ft).await;
    prop_assert_eq!(&ft, &lt, "a fresh client sees another tree");
    Ok(())
}

#[test]
fn random_histories_match_a_local_directory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let env = Arc::new(rt.block_on(Env::source()));
    let cases = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        let case = cases.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_case(&env, case, &ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
