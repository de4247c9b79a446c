//! Reference-model property test: random histories of file-system operations applied both to
//! `FsMeta` and to a plain in-memory tree. After every operation the outcomes must agree
//! (success, or the same error kind); at the end the whole trees must agree (names, kinds, inode
//! identity across hard links, sizes, modes, link counts, symlink targets, which block byte backs
//! every file byte) and so must the volume's usage.
//!
//! One test body, run over every engine: memory, embedded (redb in a temporary directory) and
//! etcd (one real etcd for the whole test, a fresh key prefix per case; fewer cases, as each
//! operation is a network round trip). Without an etcd binary the etcd test fails, saying how to
//! install it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mirrorfs_api::meta::{Extent, FileKind};
use mirrorfs_api::{FsErrorKind, Ino};
use mirrorfs_meta::Engine;
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Removed, SetAttr, Volume};
use mirrorfs_testkit::etcd::{EtcdCluster, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

type Id = u64;
const ROOT: Id = 1;

/// Names the operations pick from: a few valid ones, often, and every kind of invalid one.
fn name(i: u8) -> Vec<u8> {
    match i % 32 {
        0..=7 => b"a".to_vec(),
        8..=14 => b"b".to_vec(),
        15..=21 => b"c".to_vec(),
        22..=27 => b"d\xff".to_vec(),
        28 => b"".to_vec(),
        29 if i & 32 == 0 => b".".to_vec(),
        29 => b"..".to_vec(),
        30 if i & 32 == 0 => b"x/y".to_vec(),
        30 => b"n\0".to_vec(),
        _ => vec![b'n'; 256],
    }
}

const TARGETS: [&[u8]; 3] = [b"t", b"../x", b"a/b\xff"];

#[derive(Clone, Debug)]
enum Op {
    Mkdir {
        dir: u8,
        name: u8,
    },
    Create {
        dir: u8,
        name: u8,
        exclusive: bool,
    },
    Symlink {
        dir: u8,
        name: u8,
        target: u8,
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
        flags: u8,
    },
    Link {
        node: u8,
        dir: u8,
        name: u8,
    },
    SetSize {
        node: u8,
        size: u64,
    },
    SetMode {
        node: u8,
        mode: u32,
    },
    Write {
        node: u8,
        offset: u64,
        len: u64,
        block_offset: u64,
        pad: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let i = any::<u8>;
    prop_oneof![
        3 => (i(), i()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        4 => (i(), i(), any::<bool>()).prop_map(|(dir, name, exclusive)| Op::Create { dir, name, exclusive }),
        1 => (i(), i(), i()).prop_map(|(dir, name, target)| Op::Symlink { dir, name, target }),
        2 => (i(), i()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        2 => (i(), i()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        4 => (i(), i(), i(), i(), i()).prop_map(|(dir, name, to_dir, to_name, flags)| Op::Rename {
            dir, name, to_dir, to_name, flags
        }),
        2 => (i(), i(), i()).prop_map(|(node, dir, name)| Op::Link { node, dir, name }),
        2 => (i(), 0u64..3000).prop_map(|(node, size)| Op::SetSize { node, size }),
        1 => (i(), any::<u32>()).prop_map(|(node, mode)| Op::SetMode { node, mode }),
        3 => (i(), 0u64..2000, 1u64..600, 0u64..100, 0u64..50).prop_map(
            |(node, offset, len, block_offset, pad)| Op::Write { node, offset, len, block_offset, pad }
        ),
    ]
}

// --- the model -----------------------------------------------------------------------------------

/// Which (block, offset in block) backs each byte of a file; `None` is a hole.
type Content = Vec<Option<(u64, u64)>>;

#[derive(Clone, Debug)]
enum Kind {
    File {
        content: Content,
    },
    Dir {
        children: BTreeMap<Vec<u8>, Id>,
        parent: Id,
    },
    Symlink {
        target: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct Node {
    mode: u32,
    /// Links of files and symlinks (directories compute theirs).
    links: u32,
    kind: Kind,
}

impl Node {
    fn file_kind(&self) -> FileKind {
        match self.kind {
            Kind::File { .. } => FileKind::File,
            Kind::Dir { .. } => FileKind::Directory,
            Kind::Symlink { .. } => FileKind::Symlink,
        }
    }
}

/// What an operation did, in model ids.
#[derive(Debug, PartialEq)]
enum Out {
    Created(Id),
    Existing(Id),
    Removed(Id, u32),
    Renamed(Option<(Id, u32)>),
}

type R = Result<Out, FsErrorKind>;

struct Model {
    nodes: BTreeMap<Id, Node>,
    /// Every id ever created, so operations also name removed inodes.
    all: Vec<Id>,
    next: Id,
    blocks: u64,
}

fn check_name(n: &[u8]) -> Result<(), FsErrorKind> {
    if n.is_empty() {
        return Err(FsErrorKind::InvalidArgument);
    }
    if n.len() > 255 {
        return Err(FsErrorKind::NameTooLong);
    }
    if n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(FsErrorKind::InvalidArgument);
    }
    Ok(())
}

impl Model {
    fn new() -> Self {
        let root = Node {
            mode: 0o755,
            links: 0,
            kind: Kind::Dir {
                children: BTreeMap::new(),
                parent: ROOT,
            },
        };
        Self {
            nodes: [(ROOT, root)].into(),
            all: vec![ROOT],
            next: ROOT + 1,
            blocks: 0,
        }
    }

    /// Mostly one of the live inodes that `want` accepts; sometimes any inode ever created
    /// (removed ones included).
    fn pick_where(&self, i: u8, want: impl Fn(&Node) -> bool) -> Id {
        let fit: Vec<Id> = self
            .nodes
            .iter()
            .filter(|(_, n)| want(n))
            .map(|(id, _)| *id)
            .collect();
        if i.is_multiple_of(8) || fit.is_empty() {
            return self.all[usize::from(i / 8) % self.all.len()];
        }
        fit[usize::from(i) % fit.len()]
    }

    fn pick(&self, i: u8) -> Id {
        self.pick_where(i, |_| true)
    }

    fn pick_dir(&self, i: u8) -> Id {
        self.pick_where(i, |n| matches!(n.kind, Kind::Dir { .. }))
    }

    fn pick_file(&self, i: u8) -> Id {
        self.pick_where(i, |n| matches!(n.kind, Kind::File { .. }))
    }

    fn pick_non_dir(&self, i: u8) -> Id {
        self.pick_where(i, |n| !matches!(n.kind, Kind::Dir { .. }))
    }

    /// Mostly an existing entry whose inode `want` accepts; sometimes any directory and name
    /// from the pool.
    fn pick_entry(&self, dir: u8, name_: u8, want: impl Fn(&Node) -> bool) -> (Id, Vec<u8>) {
        let fit: Vec<(Id, &Vec<u8>)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| match &n.kind {
                Kind::Dir { children, .. } => Some((*id, children)),
                _ => None,
            })
            .flat_map(|(id, children)| {
                children
                    .iter()
                    .filter(|(_, c)| want(&self.nodes[*c]))
                    .map(move |(n, _)| (id, n))
            })
            .collect();
        if dir.is_multiple_of(4) || fit.is_empty() {
            return (self.pick_dir(dir / 4), name(name_));
        }
        let (d, n) = fit[usize::from(name_) % fit.len()];
        (d, n.clone())
    }

    fn node(&self, id: Id) -> Result<&Node, FsErrorKind> {
        self.nodes.get(&id).ok_or(FsErrorKind::NotFound)
    }

    fn children(&self, id: Id) -> Result<&BTreeMap<Vec<u8>, Id>, FsErrorKind> {
        match &self.node(id)?.kind {
            Kind::Dir { children, .. } => Ok(children),
            _ => Err(FsErrorKind::NotDirectory),
        }
    }

    fn children_mut(&mut self, id: Id) -> &mut BTreeMap<Vec<u8>, Id> {
        match &mut self.nodes.get_mut(&id).unwrap().kind {
            Kind::Dir { children, .. } => children,
            _ => unreachable!("checked to be a directory"),
        }
    }

    fn parent(&self, id: Id) -> Id {
        match self.nodes[&id].kind {
            Kind::Dir { parent, .. } => parent,
            _ => unreachable!(),
        }
    }

    fn set_parent(&mut self, id: Id, to: Id) {
        if let Kind::Dir { parent, .. } = &mut self.nodes.get_mut(&id).unwrap().kind {
            *parent = to;
        }
    }

    fn is_dir(&self, id: Id) -> bool {
        matches!(self.nodes[&id].kind, Kind::Dir { .. })
    }

    /// Whether `a` is `of` or one of its ancestors.
    fn contains(&self, a: Id, of: Id) -> bool {
        let mut cur = of;
        loop {
            if cur == a {
                return true;
            }
            if cur == ROOT {
                return false;
            }
            cur = self.parent(cur);
        }
    }

    fn new_node(&mut self, node: Node) -> Id {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, node);
        self.all.push(id);
        id
    }

    /// Drops one link of a non-directory; returns the links left.
    fn drop_link(&mut self, id: Id) -> u32 {
        let n = self.nodes.get_mut(&id).unwrap();
        n.links -= 1;
        let left = n.links;
        if left == 0 {
            self.nodes.remove(&id);
        }
        left
    }

    fn make(&mut self, dir: Id, name: &[u8], kind: FileKind, exclusive: bool, target: &[u8]) -> R {
        check_name(name)?;
        let existing = self.children(dir)?.get(name).copied();
        if let Some(e) = existing {
            if kind == FileKind::File && !exclusive && self.nodes[&e].file_kind() == FileKind::File
            {
                return Ok(Out::Existing(e));
            }
            return Err(FsErrorKind::Exists);
        }
        let node = match kind {
            FileKind::Directory => Node {
                mode: 0o755,
                links: 0,
                kind: Kind::Dir {
                    children: BTreeMap::new(),
                    parent: dir,
                },
            },
            FileKind::Symlink => Node {
                mode: 0o777,
                links: 1,
                kind: Kind::Symlink {
                    target: target.to_vec(),
                },
            },
            _ => Node {
                mode: 0o644,
                links: 1,
                kind: Kind::File {
                    content: Vec::new(),
                },
            },
        };
        let id = self.new_node(node);
        self.children_mut(dir).insert(name.to_vec(), id);
        Ok(Out::Created(id))
    }

    fn remove(&mut self, dir: Id, name: &[u8], rmdir: bool) -> R {
        check_name(name)?;
        let child = *self.children(dir)?.get(name).ok_or(FsErrorKind::NotFound)?;
        let is_dir = self.is_dir(child);
        if rmdir && !is_dir {
            return Err(FsErrorKind::NotDirectory);
        }
        if !rmdir && is_dir {
            return Err(FsErrorKind::IsDirectory);
        }
        if rmdir && !self.children(child)?.is_empty() {
            return Err(FsErrorKind::NotEmpty);
        }
        self.children_mut(dir).remove(name);
        let left = if rmdir {
            self.nodes.remove(&child);
            0
        } else {
            self.drop_link(child)
        };
        Ok(Out::Removed(child, left))
    }

    fn rename(&mut self, dir: Id, name: &[u8], to: Id, to_name: &[u8], flags: u8) -> R {
        check_name(name)?;
        check_name(to_name)?;
        let (no_replace, exchange) = (flags % 3 == 1, flags % 3 == 2);
        self.children(dir)?;
        self.children(to)?;
        let src = *self.children(dir)?.get(name).ok_or(FsErrorKind::NotFound)?;
        let dst = self.children(to)?.get(to_name).copied();
        if exchange && dst.is_none() {
            return Err(FsErrorKind::NotFound);
        }
        if dst == Some(src) {
            return Ok(Out::Renamed(None));
        }
        if no_replace && dst.is_some() {
            return Err(FsErrorKind::Exists);
        }
        let moved = dir != to;
        let src_dir = self.is_dir(src);
        if src_dir && moved && self.contains(src, to) {
            return Err(FsErrorKind::InvalidArgument);
        }
        let mut replaced = None;
        match dst {
            Some(d) if exchange => {
                let dst_dir = self.is_dir(d);
                if dst_dir && moved && self.contains(d, dir) {
                    return Err(FsErrorKind::InvalidArgument);
                }
                self.children_mut(dir).insert(name.to_vec(), d);
                self.children_mut(to).insert(to_name.to_vec(), src);
                if dst_dir {
                    self.set_parent(d, dir);
                }
            }
            Some(d) => {
                match (src_dir, self.is_dir(d)) {
                    (true, false) => return Err(FsErrorKind::NotDirectory),
                    (false, true) => return Err(FsErrorKind::IsDirectory),
                    (true, true) => {
                        if !self.children(d)?.is_empty() {
                            return Err(FsErrorKind::NotEmpty);
                        }
                        self.nodes.remove(&d);
                        replaced = Some((d, 0));
                    }
                    (false, false) => replaced = Some((d, self.drop_link(d))),
                }
                self.children_mut(dir).remove(name);
                self.children_mut(to).insert(to_name.to_vec(), src);
            }
            None => {
                self.children_mut(dir).remove(name);
                self.children_mut(to).insert(to_name.to_vec(), src);
            }
        }
        if src_dir {
            self.set_parent(src, to);
        }
        Ok(Out::Renamed(replaced))
    }

    fn link(&mut self, node: Id, dir: Id, name: &[u8]) -> R {
        check_name(name)?;
        if self.node(node)?.file_kind() == FileKind::Directory {
            return Err(FsErrorKind::PermissionDenied);
        }
        if self.children(dir)?.contains_key(name) {
            return Err(FsErrorKind::Exists);
        }
        self.children_mut(dir).insert(name.to_vec(), node);
        self.nodes.get_mut(&node).unwrap().links += 1;
        Ok(Out::Existing(node))
    }

    fn content_mut(&mut self, node: Id) -> Result<&mut Content, FsErrorKind> {
        match &mut self.nodes.get_mut(&node).ok_or(FsErrorKind::NotFound)?.kind {
            Kind::File { content } => Ok(content),
            Kind::Dir { .. } => Err(FsErrorKind::IsDirectory),
            Kind::Symlink { .. } => Err(FsErrorKind::InvalidArgument),
        }
    }

    fn set_size(&mut self, node: Id, size: u64) -> R {
        let c = self.content_mut(node)?;
        c.resize(size as usize, None);
        Ok(Out::Existing(node))
    }

    fn set_mode(&mut self, node: Id, mode: u32) -> R {
        self.nodes.get_mut(&node).ok_or(FsErrorKind::NotFound)?.mode = mode & 0o7777;
        Ok(Out::Existing(node))
    }

    fn write(&mut self, node: Id, e: &Extent, new_size: u64, block: u64) -> R {
        let c = self.content_mut(node)?;
        if c.len() < new_size as usize {
            c.resize(new_size as usize, None);
        }
        for i in 0..e.length {
            c[(e.offset + i) as usize] = Some((block, e.block_offset + i));
        }
        Ok(Out::Existing(node))
    }

    fn usage(&self) -> (u64, u64) {
        let bytes = self
            .nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File { content } => content.len() as u64,
                _ => 0,
            })
            .sum();
        (bytes, self.nodes.len() as u64)
    }
}

// --- the harness ---------------------------------------------------------------------------------

struct Real {
    fs: FsMeta,
    vol: Volume,
    /// Model id → inode number.
    ino: HashMap<Id, Ino>,
}

const OWNER_FILE: Owner = Owner {
    mode: 0o644,
    uid: 1,
    gid: 2,
};
const OWNER_DIR: Owner = Owner {
    mode: 0o755,
    uid: 1,
    gid: 2,
};

impl Real {
    /// The inode of a model id; ids of removed nodes keep their number (never reused).
    fn i(&self, id: Id) -> Ino {
        self.ino[&id]
    }

    /// Checks the real outcome against the model's, learning the numbers of new inodes.
    fn agree(&mut self, step: usize, op: &Op, model: &R, real: Result<Option<Ino>, FsErrorKind>) {
        match (model, real) {
            (Err(m), Err(r)) => assert_eq!(*m, r, "step {step} {op:?}"),
            (Ok(Out::Created(id)), Ok(Some(ino))) => {
                assert!(
                    !self.ino.values().any(|i| *i == ino),
                    "step {step} {op:?}: inode {ino} reused"
                );
                self.ino.insert(*id, ino);
            }
            (Ok(Out::Existing(id)), Ok(Some(ino))) => {
                assert_eq!(self.i(*id), ino, "step {step} {op:?}")
            }
            (m, r) => panic!("step {step} {op:?}: model {m:?}, real {r:?}"),
        }
    }
}

fn removed(model: &R, real: &mirrorfs_meta::Result<Removed>, h: &Real, step: usize, op: &Op) {
    match (model, real) {
        (Ok(Out::Removed(id, left)), Ok(r)) => {
            assert_eq!(
                (h.i(*id), *left),
                (r.ino, r.remaining_nlink),
                "step {step} {op:?}"
            )
        }
        (Err(m), Err(e)) => assert_eq!(*m, e.kind(), "step {step} {op:?}: {e}"),
        (m, r) => panic!("step {step} {op:?}: model {m:?}, real {r:?}"),
    }
}

async fn run(engine: Arc<dyn Engine>, ops: Vec<Op>) {
    let fs = FsMeta::open(engine).await.unwrap();
    let (_, token) = fs
        .create_volume(NewVolume {
            name: "model".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let vol = fs.authenticate("model", &token).await.unwrap();
    let mut h = Real {
        fs,
        vol,
        ino: [(ROOT, Ino::ROOT)].into(),
    };
    let mut m = Model::new();
    for (step, op) in ops.iter().enumerate() {
        let (fs, v) = (h.fs.clone(), h.vol.clone());
        let attr_ino = |r: mirrorfs_meta::Result<mirrorfs_api::meta::Attr>| {
            r.map(|a| Some(Ino(a.ino))).map_err(|e| e.kind())
        };
        match *op {
            Op::Mkdir { dir, name: n } => {
                let (d, n) = (m.pick_dir(dir), name(n));
                let want = m.make(d, &n, FileKind::Directory, true, b"");
                let got = fs.mkdir(&v, h.i(d), &n, OWNER_DIR).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::Create {
                dir,
                name: n,
                exclusive,
            } => {
                let (d, n) = (m.pick_dir(dir), name(n));
                let want = m.make(d, &n, FileKind::File, exclusive, b"");
                let got = fs.create(&v, h.i(d), &n, OWNER_FILE, exclusive).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::Symlink {
                dir,
                name: n,
                target,
            } => {
                let (d, n) = (m.pick_dir(dir), name(n));
                let t = TARGETS[usize::from(target) % TARGETS.len()];
                let want = m.make(d, &n, FileKind::Symlink, true, t);
                let got = fs.symlink(&v, h.i(d), &n, t, OWNER_FILE).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::Unlink { dir, name: n } => {
                let (d, n) = m.pick_entry(dir, n, |n| !matches!(n.kind, Kind::Dir { .. }));
                let want = m.remove(d, &n, false);
                let got = fs.unlink(&v, h.i(d), &n).await;
                removed(&want, &got, &h, step, op);
            }
            Op::Rmdir { dir, name: n } => {
                let (d, n) = m.pick_entry(dir, n, |n| matches!(n.kind, Kind::Dir { .. }));
                let want = m.remove(d, &n, true);
                let got = fs.rmdir(&v, h.i(d), &n).await;
                removed(&want, &got, &h, step, op);
            }
            Op::Rename {
                dir,
                name: n,
                to_dir,
                to_name,
                flags,
            } => {
                let (d, n) = m.pick_entry(dir, n, |_| true);
                let (t, tn) = if to_dir.is_multiple_of(2) {
                    m.pick_entry(to_dir / 2, to_name, |_| true)
                } else {
                    (m.pick_dir(to_dir / 2), name(to_name))
                };
                let want = m.rename(d, &n, t, &tn, flags);
                let (nr, ex) = (flags % 3 == 1, flags % 3 == 2);
                let got = fs.rename(&v, h.i(d), &n, h.i(t), &tn, nr, ex).await;
                match (&want, &got) {
                    (Ok(Out::Renamed(w)), Ok(g)) => {
                        let w = w.map(|(id, left)| (h.i(id), left));
                        let g = g.map(|r| (r.ino, r.remaining_nlink));
                        assert_eq!(w, g, "step {step} {op:?}");
                    }
                    (Err(w), Err(e)) => assert_eq!(*w, e.kind(), "step {step} {op:?}: {e}"),
                    (w, g) => panic!("step {step} {op:?}: model {w:?}, real {g:?}"),
                }
            }
            Op::Link { node, dir, name: n } => {
                let (x, d, n) = (m.pick_non_dir(node), m.pick_dir(dir), name(n));
                let want = m.link(x, d, &n);
                let got = fs.link(&v, h.i(x), h.i(d), &n).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::SetSize { node, size } => {
                let x = m.pick_file(node);
                let want = m.set_size(x, size);
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let got = fs.setattr(&v, h.i(x), set).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::SetMode { node, mode } => {
                let x = m.pick(node);
                let want = m.set_mode(x, mode);
                let set = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                let got = fs.setattr(&v, h.i(x), set).await;
                h.agree(step, op, &want, attr_ino(got));
            }
            Op::Write {
                node,
                offset,
                len,
                block_offset,
                pad,
            } => {
                let x = m.pick_file(node);
                m.blocks += 1;
                let block = m.blocks;
                let e = Extent {
                    offset,
                    length: len,
                    block_id: format!("blk/{block}"),
                    block_offset,
                    block_size: block_offset + len + 7,
                    checksum: vec![7; 32],
                };
                let new_size = offset + len + pad;
                let want = m.write(x, &e, new_size, block);
                let got = fs.commit_extents(&v, h.i(x), vec![e], new_size, None).await;
                h.agree(step, op, &want, attr_ino(got));
            }
        }
    }
    compare_trees(&m, &h).await;
}

/// Walks both trees from the root and compares everything they hold.
async fn compare_trees(m: &Model, h: &Real) {
    let (fs, v) = (&h.fs, &h.vol);
    let mut seen = HashSet::new();
    let mut stack = vec![(ROOT, "/".to_owned())];
    while let Some((id, path)) = stack.pop() {
        let node = &m.nodes[&id];
        let attr = fs.getattr(v, h.i(id)).await.unwrap();
        assert_eq!(attr.kind(), node.file_kind(), "{path}");
        assert_eq!(attr.mode, node.mode, "{path}");
        match &node.kind {
            Kind::Dir { children, .. } => {
                let subdirs = children.values().filter(|c| m.is_dir(**c)).count() as u32;
                assert_eq!(attr.nlink, 2 + subdirs, "{path}");
                let page = fs.readdir(v, h.i(id), b"", 0).await.unwrap();
                assert!(!page.more);
                let real: Vec<_> = page
                    .entries
                    .iter()
                    .map(|e| (e.name.clone(), e.ino))
                    .collect();
                let want: Vec<_> = children
                    .iter()
                    .map(|(n, c)| (n.clone(), h.i(*c).0))
                    .collect();
                assert_eq!(real, want, "{path}");
                for (e, (n, c)) in page.entries.iter().zip(children) {
                    assert_eq!(e.kind(), m.nodes[c].file_kind(), "{path}");
                    let looked = fs.lookup(v, h.i(id), n).await.unwrap();
                    assert_eq!(looked.ino, e.ino);
                    if seen.insert(*c) {
                        stack.push((*c, format!("{path}{}/", String::from_utf8_lossy(n))));
                    }
                }
            }
            Kind::File { content } => {
                assert_eq!(attr.nlink, node.links, "{path}");
                assert_eq!(attr.size, content.len() as u64, "{path}");
                let (extents, size) = fs.read_extents(v, h.i(id), 0, u64::MAX).await.unwrap();
                assert_eq!(size, attr.size);
                let mut real: Content = vec![None; content.len()];
                let mut last_end = 0;
                for e in extents {
                    assert!(
                        e.offset >= last_end,
                        "{path}: extents overlap or are out of order"
                    );
                    last_end = e.offset + e.length;
                    assert!(last_end <= size, "{path}: extent past the end");
                    let block: u64 = e.block_id.strip_prefix("blk/").unwrap().parse().unwrap();
                    for i in 0..e.length {
                        real[(e.offset + i) as usize] = Some((block, e.block_offset + i));
                    }
                }
                assert!(real == *content, "{path}: contents differ");
            }
            Kind::Symlink { target } => {
                assert_eq!(attr.nlink, node.links, "{path}");
                assert_eq!(&fs.readlink(v, h.i(id)).await.unwrap(), target, "{path}");
            }
        }
    }
    // Everything alive in the model is reachable, and removed inodes are gone.
    assert_eq!(seen.len() + 1, m.nodes.len());
    for id in &m.all {
        let exists = fs.getattr(v, h.i(*id)).await.is_ok();
        assert_eq!(exists, m.nodes.contains_key(id), "inode of model node {id}");
    }
    let u = fs.statfs(v).await.unwrap();
    assert_eq!((u.used_bytes, u.used_inodes), m.usage());
}

// --- the engines ---------------------------------------------------------------------------------

/// A fresh, empty engine for one case, and whatever must live as long as it.
type Fresh = Pin<Box<dyn Future<Output = (Arc<dyn Engine>, Box<dyn Send>)>>>;

/// Runs `cases` random histories, each on a fresh engine from `make`, on one multi-threaded
/// runtime; a failure is shrunk and reported with its smallest history.
fn check(cases: u32, make: impl Fn() -> Fresh) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        rt.block_on(async {
            let (engine, _keep) = make().await;
            run(engine, ops).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn fs_meta_behaves_like_the_model_on_memory() {
    check(256, || {
        Box::pin(async {
            let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
            (engine, Box::new(()) as Box<dyn Send>)
        })
    });
}

#[test]
fn fs_meta_behaves_like_the_model_on_embedded() {
    check(64, || {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let engine: Arc<dyn Engine> =
                Arc::new(EmbeddedEngine::open(&dir.path().join("meta.redb")).unwrap());
            (engine, Box::new(dir) as Box<dyn Send>)
        })
    });
}

#[test]
fn fs_meta_behaves_like_the_model_on_etcd() {
    let cluster = EtcdCluster::start(1).unwrap_or_else(|e| panic!("{e}"));
    let endpoints = cluster.endpoints();
    // Each case (and each shrinking step) gets its own prefix: a fresh engine in one cluster.
    let case = AtomicUsize::new(0);
    check(48, || {
        let options = EtcdOptions {
            prefix: format!("fs-model/{}/", case.fetch_add(1, Ordering::Relaxed)).into_bytes(),
            max_txn_ops: MAX_TXN_OPS,
            max_request_bytes: MAX_REQUEST_BYTES,
            ..EtcdOptions::default()
        };
        let endpoints = endpoints.clone();
        Box::pin(async move {
            let engine: Arc<dyn Engine> =
                Arc::new(EtcdEngine::connect(&endpoints, options).await.unwrap());
            (engine, Box::new(()) as Box<dyn Send>)
        })
    });
}

#[test]
fn the_name_pool_covers_every_kind_of_name() {
    let all: HashSet<Vec<u8>> = (0..=255u8).map(name).collect();
    for n in [&b"a"[..], b"", b".", b"..", b"x/y", b"n\0", &[b'n'; 256]] {
        assert!(all.contains(n), "{n:?}");
    }
}
