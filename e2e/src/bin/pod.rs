//! `mirrorfs-e2e-pod`: what a pod's container does with a published volume, run by the tests
//! as a separate process (as root, or as another user). It prints one JSON document.
//!
//! - `read DIR`: every directory and regular file under DIR (symlinks not followed), files with
//!   their bytes in hex, and every error met;
//! - `write-probe DIR FILE SUBDIR`: each kind of write a program can attempt (create, open for
//!   writing, truncate, mkdir, rmdir, unlink, rename, symlink, link, mkfifo, chmod, chown,
//!   utimes, setxattr) against DIR, an existing FILE and an existing SUBDIR in it, with the
//!   errno each got (0: it succeeded).

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;

use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = match args.get(1).map(String::as_str) {
        Some("read") if args.len() == 3 => read(Path::new(&args[2])),
        Some("write-probe") if args.len() == 5 => write_probe(
            Path::new(&args[2]),
            Path::new(&args[3]),
            Path::new(&args[4]),
        ),
        _ => {
            eprintln!("usage: mirrorfs-e2e-pod read DIR | write-probe DIR FILE SUBDIR");
            std::process::exit(2);
        }
    };
    println!("{out}");
}

fn read(root: &Path) -> Value {
    let mut files = serde_json::Map::new();
    let mut dirs = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let here = rel(root, &dir);
        dirs.push(Value::String(here.clone()));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push(json!({"path": here, "op": "readdir", "errno": errno(&e)}));
                continue;
            }
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    errors.push(json!({"path": here, "op": "readdir", "errno": errno(&err)}));
                    continue;
                }
            };
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let mut bytes = Vec::new();
                    match std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut bytes)) {
                        Ok(_) => {
                            files.insert(rel(root, &p), Value::String(hex::encode(&bytes)));
                        }
                        Err(err) => errors.push(
                            json!({"path": rel(root, &p), "op": "read", "errno": errno(&err)}),
                        ),
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    errors.push(json!({"path": rel(root, &p), "op": "stat", "errno": errno(&err)}))
                }
            }
        }
    }
    json!({"files": files, "dirs": dirs, "errors": errors})
}

fn rel(root: &Path, p: &Path) -> String {
    let r = p.strip_prefix(root).unwrap_or(p).to_string_lossy();
    format!("/{r}").replace("//", "/")
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn nix_errno<T>(r: nix::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e as i32,
    }
}

fn io_errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

fn write_probe(dir: &Path, file: &Path, subdir: &Path) -> Value {
    let now = TimeSpec::new(1_000_000, 0);
    let ops: Vec<(&str, i32)> = vec![
        (
            "create",
            io_errno(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dir.join("e2e-new-file")),
            ),
        ),
        (
            "open-write",
            io_errno(OpenOptions::new().write(true).open(file)),
        ),
        (
            "open-read-write",
            io_errno(OpenOptions::new().read(true).write(true).open(file)),
        ),
        (
            "open-truncate",
            io_errno(OpenOptions::new().write(true).truncate(true).open(file)),
        ),
        (
            "open-append",
            io_errno(OpenOptions::new().append(true).open(file)),
        ),
        ("truncate", nix_errno(nix::unistd::truncate(file, 0))),
        (
            "mkdir",
            io_errno(std::fs::create_dir(dir.join("e2e-new-dir"))),
        ),
        ("rmdir", io_errno(std::fs::remove_dir(subdir))),
        ("unlink", io_errno(std::fs::remove_file(file))),
        (
            "rename",
            io_errno(std::fs::rename(file, dir.join("e2e-renamed"))),
        ),
        (
            "symlink",
            io_errno(std::os::unix::fs::symlink(
                "target",
                dir.join("e2e-symlink"),
            )),
        ),
        (
            "link",
            io_errno(std::fs::hard_link(file, dir.join("e2e-hard-link"))),
        ),
        (
            "mkfifo",
            nix_errno(nix::unistd::mkfifo(
                &dir.join("e2e-fifo"),
                Mode::from_bits_truncate(0o644),
            )),
        ),
        (
            "chmod",
            io_errno(std::fs::set_permissions(
                file,
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )),
        ),
        (
            "chown",
            io_errno(std::os::unix::fs::chown(file, Some(0), Some(0))),
        ),
        (
            "utimes",
            nix_errno(utimensat(
                nix::fcntl::AT_FDCWD,
                file,
                &now,
                &now,
                UtimensatFlags::FollowSymlink,
            )),
        ),
        (
            "setxattr",
            io_errno(xattr::set(file, "user.mirrorfs-e2e", b"1")),
        ),
    ];
    Value::Array(
        ops.into_iter()
            .map(|(op, errno)| json!({"op": op, "errno": errno}))
            .collect(),
    )
}
