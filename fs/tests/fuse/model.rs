//! The reference-model test of a mount: random histories of file operations (std::fs calls,
//! as programs make them) applied to a directory in the mount and to a directory on the local
//! disk, comparing every result (values and errno) and then the two trees (kinds, contents,
//! sizes, modes, symlink targets, listings). Paths collide often on purpose (four names, three
//! directory levels), and writes cross block boundaries (the mount under test uses small
//! blocks).

#![allow(dead_code, clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::harness::{errno_of, pattern};

#[derive(Clone, Debug)]
pub enum Op {
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: String,
        size: u64,
    },
    CreateNew {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    HardLink {
        from: String,
        to: String,
    },
    Read {
        path: String,
    },
    ReadAt {
        path: String,
        offset: u64,
        len: usize,
    },
    Stat {
        path: String,
    },
    List {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
}

/// What an operation returned, comparable across the two file systems.
#[derive(Debug, PartialEq, Eq)]
pub enum Value {
    Unit,
    Bytes(Vec<u8>),
    Stat {
        kind: &'static str,
        size: Option<u64>,
        perm: u32,
        nlink: Option<u64>,
    },
    Names(Vec<String>),
    Link(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("d".to_owned()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (0..3usize, name(), name(), name()).prop_map(|(depth, a, b, c)| match depth {
        0 => a,
        1 => format!("{a}/{b}"),
        _ => format!("{a}/{b}/{c}"),
    })
}

/// Offsets around the 64 KiB blocks of the mount under test.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(100),
        Just(65_530),
        Just(65_543),
        Just(131_072),
        Just(300_001),
        0..400_000u64,
    ]
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1..200usize, 60_000..140_000usize]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), offset(), len(), any::<u64>()).prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (path(), len(), any::<u64>()).prop_map(|(path, len, seed)| Op::Append { path, len, seed }),
        2 => (path(), offset()).prop_map(|(path, size)| Op::Truncate { path, size }),
        1 => path().prop_map(|path| Op::CreateNew { path }),
        3 => path().prop_map(|path| Op::Mkdir { path }),
        1 => path().prop_map(|path| Op::Rmdir { path }),
        2 => path().prop_map(|path| Op::Unlink { path }),
        3 => (path(), path()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (prop_oneof![Just("a"), Just("b/c"), Just("../a"), Just("d")], path())
            .prop_map(|(t, path)| Op::Symlink { target: t.to_owned(), path }),
        1 => (path(), path()).prop_map(|(from, to)| Op::HardLink { from, to }),
        3 => path().prop_map(|path| Op::Read { path }),
        2 => (path(), offset(), len()).prop_map(|(path, offset, len)| Op::ReadAt { path, offset, len }),
        2 => path().prop_map(|path| Op::Stat { path }),
        2 => prop_oneof![Just(String::new()), path()].prop_map(|path| Op::List { path }),
        1 => (path(), prop_oneof![Just(0o600u32), Just(0o644), Just(0o755), Just(0o400)])
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
    ]
}

fn kind(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// Applies `op` under `root`.
pub fn apply(root: &Path, op: &Op) -> Result<Value, i32> {
    let p = |s: &str| root.join(s);
    let r: std::io::Result<Value> = (|| match op {
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(p(path))?;
            f.write_all_at(&pattern(*len, *seed), *offset)?;
            Ok(Value::Unit)
        }
        Op::Append { path, len, seed } => {
            use std::io::Write;
            let mut f = OpenOptions::new().append(true).create(true).open(p(path))?;
            f.write_all(&pattern(*len, *seed))?;
            Ok(Value::Unit)
        }
        Op::Truncate { path, size } => {
            let f = OpenOptions::new().write(true).open(p(path))?;
            f.set_len(*size)?;
            Ok(Value::Unit)
        }
        Op::CreateNew { path } => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p(path))?;
            Ok(Value::Unit)
        }
        Op::Mkdir { path } => fs::create_dir(p(path)).map(|()| Value::Unit),
        Op::Rmdir { path } => fs::remove_dir(p(path)).map(|()| Value::Unit),
        Op::Unlink { path } => fs::remove_file(p(path)).map(|()| Value::Unit),
        Op::Rename { from, to } => fs::rename(p(from), p(to)).map(|()| Value::Unit),
        Op::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, p(path)).map(|()| Value::Unit)
        }
        Op::HardLink { from, to } => fs::hard_link(p(from), p(to)).map(|()| Value::Unit),
        Op::Read { path } => fs::read(p(path)).map(Value::Bytes),
        Op::ReadAt { path, offset, len } => {
            let f = fs::File::open(p(path))?;
            let mut buf = vec![0u8; *len];
            let mut got = 0;
            loop {
                let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                got += n;
                if n == 0 || got == buf.len() {
                    break;
                }
            }
            buf.truncate(got);
            Ok(Value::Bytes(buf))
        }
        Op::Stat { path } => {
            let m = fs::symlink_metadata(p(path))?;
            let k = kind(m.file_type());
            Ok(match k {
                "symlink" => Value::Link(fs::read_link(p(path))?.display().to_string()),
                "dir" => Value::Stat {
                    kind: k,
                    size: None,
                    perm: m.mode() & 0o7777,
                    nlink: None,
                },
                _ => Value::Stat {
                    kind: k,
                    size: Some(m.len()),
                    perm: m.mode() & 0o7777,
                    nlink: Some(m.nlink()),
                },
            })
        }
        Op::List { path } => {
            let mut names: Vec<String> = fs::read_dir(p(path))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            Ok(Value::Names(names))
        }
        Op::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).map(|()| Value::Unit)
        }
    })();
    r.map_err(|e| errno_of(&e))
}

/// Asserts that trees `a` and `b` hold the same names, kinds, file contents, symlink targets
/// and permission bits (and with `times`, the same file mtimes).
pub fn assert_same_tree(a: &Path, b: &Path, times: bool) {
    let list = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap_or_else(|e| panic!("list {}: {e}", d.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "listings of {} and {}", a.display(), b.display());
    for n in la {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        let k = kind(ma.file_type());
        assert_eq!(k, kind(mb.file_type()), "kind of {}", pb.display());
        if k != "symlink" {
            assert_eq!(
                ma.mode() & 0o7777,
                mb.mode() & 0o7777,
                "mode of {}",
                pb.display()
            );
        }
        match k {
            "dir" => assert_same_tree(&pa, &pb, times),
            "symlink" => assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "target of {}",
                pb.display()
            ),
            _ => {
                assert_eq!(ma.len(), mb.len(), "size of {}", pb.display());
                assert!(
                    fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                    "contents of {}",
                    pb.display()
                );
                if times {
                    assert_eq!(
                        ma.modified().unwrap(),
                        mb.modified().unwrap(),
                        "mtime of {}",
                        pb.display()
                    );
                }
            }
        }
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// Runs `cases` random histories of up to `max_ops` operations in fresh directories under
/// `mount` and `local`.
pub fn run(mount: &Path, local: &Path, cases: u32, max_ops: usize) {
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..max_ops), |ops| {
        let n = CASE.fetch_add(1, Ordering::Relaxed);
        let (m, l) = (
            mount.join(format!("case-{n}")),
            local.join(format!("case-{n}")),
        );
        fs::create_dir(&m).unwrap();
        fs::create_dir(&l).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let want = apply(&l, op);
            let got = apply(&m, op);
            prop_assert!(
                want == got,
                "op {i} {op:?}: local {} but mount {}",
                show(&want),
                show(&got)
            );
        }
        assert_same_tree(&l, &m, false);
        Ok(())
    });
    if let Err(e) = result {
        panic!("the mount differs from a local directory: {e}");
    }
}

fn show(r: &Result<Value, i32>) -> String {
    match r {
        Ok(Value::Bytes(b)) => format!("Ok({} bytes)", b.len()),
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}
