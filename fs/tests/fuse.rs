//! FUSE tests against real mounts (root and /dev/fuse, as in CI): source volumes behave like a
//! local directory for the calls tools make; mirror volumes refuse every write-type system call
//! with EROFS (kernel flag and adapter both) and show what the source wrote once the mirror has
//! applied it; open-unlinked files, large files, unmount and remount, a meta service restart
//! while mounted, `cp -a` and `tar x` into a mount, and clear mount-time errors.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod fuse {
    pub mod harness;
    pub mod model;
}

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse::harness::{Regions, errno_of, eventually, pattern, require_fuse};
use mirrorfs_fs::meta::GrpcMeta;
use mirrorfs_fs::mount::{self, FuseOptions, Mount, MountError};
use mirrorfs_fs::{BlockOptions, Blocks, FsConfig, FsCore, MetaClient};
use rand::{Rng, SeedableRng};

#[test]
fn fuse_is_available() {
    require_fuse();
}

#[test]
fn random_operations_match_a_local_directory() {
    let r = Regions::source();
    let token = r.volume("model");
    let m = r.mount_source("model", &token, "model");
    let local = tempfile::tempdir().unwrap();
    fuse::model::run(&m.path, local.path(), 24, 40);
    m.unmount();
}

/// Every write-type system call on `root` (a mirror mount holding file `f` and directory `d`)
/// fails with EROFS, even for root.
fn assert_every_write_is_erofs(root: &Path) {
    use nix::fcntl::{FallocateFlags, fallocate};
    use nix::sys::stat::{Mode, SFlag, mknod};
    assert!(nix::unistd::geteuid().is_root(), "these checks run as root");
    let f = root.join("f");
    let d = root.join("d");
    let erofs = |what: &str, r: std::io::Result<()>| match r {
        Err(e) => assert_eq!(errno_of(&e), libc::EROFS, "{what}: {e}"),
        Ok(()) => panic!("{what} succeeded on a read-only mirror mount"),
    };
    let nix_erofs = |what: &str, r: nix::Result<()>| {
        erofs(
            what,
            r.map_err(|e| std::io::Error::from_raw_os_error(e as i32)),
        )
    };
    erofs(
        "open for writing",
        OpenOptions::new().write(true).open(&f).map(drop),
    );
    erofs(
        "open read-write",
        OpenOptions::new().read(true).write(true).open(&f).map(drop),
    );
    erofs(
        "open with O_TRUNC",
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&f)
            .map(drop),
    );
    erofs("append", OpenOptions::new().append(true).open(&f).map(drop));
    erofs("create", File::create(root.join("new")).map(drop));
    erofs(
        "create exclusive",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(root.join("new"))
            .map(drop),
    );
    nix_erofs(
        "mknod",
        mknod(
            &root.join("node"),
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        ),
    );
    nix_erofs(
        "mkfifo",
        mknod(
            &root.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o644),
            0,
        ),
    );
    erofs("mkdir", fs::create_dir(root.join("newdir")));
    erofs("unlink", fs::remove_file(&f));
    erofs("rmdir", fs::remove_dir(&d));
    erofs("rename", fs::rename(&f, root.join("g")));
    erofs("rename a directory", fs::rename(&d, root.join("e")));
    erofs("link", fs::hard_link(&f, root.join("h")));
    erofs("symlink", std::os::unix::fs::symlink("f", root.join("s")));
    erofs(
        "chmod",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
    );
    erofs("chown", std::os::unix::fs::chown(&f, Some(1), Some(1)));
    erofs("truncate", nix_to_io(nix::unistd::truncate(&f, 0)));
    erofs(
        "utimes",
        File::open(&f).and_then(|h| h.set_modified(std::time::SystemTime::UNIX_EPOCH)),
    );
    erofs("setxattr", xattr::set(&f, "user.test", b"v"));
    erofs("removexattr", xattr::remove(&f, "user.test"));
    // fallocate and copy_file_range need a descriptor open for writing, which cannot be had:
    // both fail before reaching the file system (EROFS at open, or EBADF on a read-only fd).
    let ro = File::open(&f).unwrap();
    let e = fallocate(&ro, FallocateFlags::empty(), 0, 4096).unwrap_err();
    assert!(
        matches!(e as i32, libc::EBADF | libc::EROFS),
        "fallocate on a read-only descriptor: {e}"
    );
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"0123456789").unwrap();
    let src = File::open(src.path()).unwrap();
    let e = nix::fcntl::copy_file_range(&src, None, &ro, None, 10).unwrap_err();
    assert!(
        matches!(e as i32, libc::EBADF | libc::EROFS),
        "copy_file_range into a read-only descriptor: {e}"
    );
    // Nothing changed.
    assert_eq!(fs::read(&f).unwrap(), b"mirror me");
    assert!(!root.join("new").exists());
}

fn nix_to_io(r: nix::Result<()>) -> std::io::Result<()> {
    r.map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

/// Writes `f` = "mirror me" and directory `d` in the source and waits for the mirror mount to
/// show them.
fn seed_and_wait(r: &Regions, source_volume: &str, source_token: &str, mirror_root: &Path) {
    let src = r.mount_source(source_volume, source_token, "seed");
    fs::write(src.p("f"), b"mirror me").unwrap();
    fs::create_dir(src.p("d")).unwrap();
    src.unmount();
    eventually("the mirror mount to show f and d", || {
        fs::read(mirror_root.join("f")).is_ok_and(|b| b == b"mirror me")
            && mirror_root.join("d").is_dir()
    });
}

#[test]
fn every_write_type_syscall_on_a_mirror_mount_fails_with_erofs() {
    let r = Regions::with_mirror();
    let token = r.volume("data");
    let mtoken = r.mirror_volume("data-b", "data", true);
    let m = r.mount_mirror("data-b", &mtoken, "mirror");
    let info = mount::find_mount(&m.path).expect("in mountinfo");
    assert!(info.read_only(), "kernel read-only flag: {info:?}");
    assert_eq!(info.source, "mirrorfs:data-b");
    assert!(
        info.super_options
            .iter()
            .any(|o| o == "default_permissions")
    );
    assert!(m.mount().read_only());
    assert!(
        m.mount().replicating(),
        "a mirror mount replicates by default"
    );
    seed_and_wait(&r, "data", &token, &m.path);
    assert_every_write_is_erofs(&m.path);
    // access(2) asks the kernel, which knows the mount is read-only.
    let e = nix_to_io(nix::unistd::access(
        &m.path.join("f"),
        nix::unistd::AccessFlags::W_OK,
    ))
    .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "access(W_OK): {e}");
}

#[test]
fn the_adapter_itself_answers_erofs_on_a_mirror_without_the_kernel_flag() {
    let r = Regions::with_mirror();
    let token = r.volume("data");
    let mtoken = r.mirror_volume("data-b", "data", false);
    let core = r.rt.block_on(async {
        let meta = GrpcMeta::connect(&r.mirror_url(), &mtoken, "data-b", Duration::from_secs(5))
            .await
            .unwrap();
        let v = meta.open_volume().await.unwrap();
        let blocks = Blocks::for_volume(&v, BlockOptions::default()).unwrap();
        FsCore::open_volume(Arc::new(meta), blocks, FsConfig::default())
            .await
            .unwrap()
    });
    let opts = FuseOptions {
        kernel_read_only: false,
        ..FuseOptions::new("data-b")
    };
    let m = r.mount_core(core, "adapter", opts);
    let info = mount::find_mount(&m.path).expect("in mountinfo");
    assert!(!info.read_only(), "this mount has no kernel flag: {info:?}");
    seed_and_wait(&r, "data", &token, &m.path);
    assert_every_write_is_erofs(&m.path);
}

#[test]
fn a_file_written_in_the_source_mount_appears_with_identical_bytes_in_the_mirror_mount() {
    let r = Regions::with_mirror();
    let token = r.volume("data");
    let mtoken = r.mirror_volume("data-b", "data", true);
    let src = r.mount_source("data", &token, "src");
    let mir = r.mount_mirror("data-b", &mtoken, "mir");
    // Looked up (and missed) in the mirror first: the negative entry must not hide it later.
    assert!(!mir.p("model.bin").exists());
    let data = pattern(9 << 20 | 12345, 1);
    fs::write(src.p("model.bin"), &data).unwrap();
    eventually("the file in the mirror mount", || {
        fs::read(mir.p("model.bin")).is_ok_and(|b| b == data)
    });
    // Rewritten in the source: the mirror's cached attributes and pages are invalidated.
    let data2 = pattern(3 << 20, 2);
    fs::write(src.p("model.bin"), &data2).unwrap();
    eventually("the rewritten file in the mirror mount", || {
        fs::read(mir.p("model.bin")).is_ok_and(|b| b == data2)
    });
    fs::remove_file(src.p("model.bin")).unwrap();
    eventually("the removal in the mirror mount", || {
        !mir.p("model.bin").exists()
    });
    // The mount's replication workers copied the blocks into the mirror bucket.
    eventually("blocks in the mirror bucket", || {
        fs::read_dir(r.dir.path().join("mirror")).is_ok_and(|mut d| d.next().is_some())
    });
}

#[test]
fn an_unlinked_open_file_stays_readable_until_closed() {
    let r = Regions::source();
    let token = r.volume("data");
    let m = r.mount_source("data", &token, "m");
    let data = pattern(6 << 20, 3);
    fs::write(m.p("f"), &data).unwrap();
    let mut f = File::open(m.p("f")).unwrap();
    let mut w = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    fs::remove_file(m.p("f")).unwrap();
    assert!(!m.p("f").exists());
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, data, "read after unlink");
    // Still writable and readable through the other descriptor.
    w.seek(SeekFrom::Start(10)).unwrap();
    w.write_all(b"after unlink").unwrap();
    w.seek(SeekFrom::Start(10)).unwrap();
    let mut buf = [0u8; 12];
    w.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after unlink");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop((f, w));
    assert!(fs::read_dir(&m.path).unwrap().next().is_none());
    m.unmount();
}

#[test]
fn a_large_file_reads_back_at_random_offsets() {
    let r = Regions::source();
    let token = r.volume("data");
    let m = r.mount_source("data", &token, "m");
    let len = (37 << 20) + 4321; // ten blocks and a piece
    let data = pattern(len, 4);
    {
        let mut f = File::create(m.p("big")).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(m.p("big")).unwrap().len(), len as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut f = File::open(m.p("big")).unwrap();
    for _ in 0..200 {
        let off = rng.random_range(0..len);
        let n = rng.random_range(1..=(256 << 10)).min(len - off);
        let mut buf = vec![0u8; n];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert!(buf == data[off..off + n], "bytes at {off}+{n}");
    }
    // Past the end: nothing.
    f.seek(SeekFrom::Start(len as u64 + 10)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(f.read_to_end(&mut rest).unwrap(), 0);
    // Random writes into it, then a full comparison.
    let mut expect = data;
    let mut w = OpenOptions::new().write(true).open(m.p("big")).unwrap();
    for i in 0..20 {
        let off = rng.random_range(0..len);
        let patch = pattern(rng.random_range(1..100_000), 100 + i);
        let end = (off + patch.len()).min(len);
        w.seek(SeekFrom::Start(off as u64)).unwrap();
        w.write_all(&patch[..end - off]).unwrap();
        expect[off..end].copy_from_slice(&patch[..end - off]);
    }
    drop((w, f));
    assert!(
        fs::read(m.p("big")).unwrap() == expect,
        "after random writes"
    );
    m.unmount();
}

#[test]
fn unmount_and_remount_keep_everything() {
    let r = Regions::source();
    let token = r.volume("data");
    let m = r.mount_source("data", &token, "m");
    fs::create_dir_all(m.p("a/b")).unwrap();
    fs::write(m.p("a/b/c.txt"), b"kept").unwrap();
    std::os::unix::fs::symlink("b/c.txt", m.p("a/link")).unwrap();
    fs::set_permissions(m.p("a/b/c.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    // Written but not closed when the unmount starts: flushed by the unmount.
    let path = m.path.clone();
    m.unmount();
    assert!(mount::find_mount(&path).is_none());
    assert!(
        fs::read_dir(&path).unwrap().next().is_none(),
        "the mount point is empty again"
    );
    let m = r.mount_with(r.config(&r.source.url.clone(), "data", &token, &path));
    assert_eq!(fs::read(m.p("a/b/c.txt")).unwrap(), b"kept");
    assert_eq!(fs::read_link(m.p("a/link")).unwrap(), Path::new("b/c.txt"));
    assert_eq!(fs::read(m.p("a/link")).unwrap(), b"kept");
    assert_eq!(
        fs::metadata(m.p("a/b/c.txt")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // A second mount of the same path while mounted is refused with a clear message.
    let again = r.rt.block_on(Mount::open(r.config(
        &r.source.url.clone(),
        "data",
        &token,
        &path,
    )));
    let e = again.err().expect("already mounted");
    assert!(e.to_string().contains("already mounted"), "{e}");
    m.unmount();
}

#[test]
fn a_meta_service_restart_gives_eio_then_the_mount_works_again() {
    let mut r = Regions::source();
    let token = r.volume("data");
    let m = r.mount_source("data", &token, "m");
    fs::write(m.p("before"), b"1").unwrap();
    r.rt.block_on(r.source.stop());
    let started = Instant::now();
    let e = fs::metadata(m.p("not-cached")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO, "while the service is down: {e}");
    let e = File::create(m.p("new")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO, "create while down: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "errors come after bounded retries, not a hang ({:?})",
        started.elapsed()
    );
    r.rt.block_on(r.source.restart());
    eventually("the mount to work again", || {
        fs::write(m.p("after"), b"2").is_ok()
    });
    assert_eq!(fs::read(m.p("before")).unwrap(), b"1");
    assert_eq!(fs::read(m.p("after")).unwrap(), b"2");
    let mut names: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["after", "before"]);
    m.unmount();
}

/// A small tree with the things archives carry: nested directories, modes, symlinks, hard
/// links, an empty file, a file of several blocks, mtimes.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("a/one.txt"), b"one\n").unwrap();
    fs::write(root.join("a/b/empty"), b"").unwrap();
    fs::write(root.join("a/b/c/big.bin"), pattern((9 << 20) + 7, 9)).unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("a/one.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("a/one.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", root.join("a/dangling")).unwrap();
    fs::hard_link(root.join("a/one.txt"), root.join("a/b/hard")).unwrap();
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::open(root.join("a/one.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cp_a_and_tar_x_into_the_mount_reproduce_the_tree() {
    let r = Regions::source();
    let token = r.volume("data");
    let m = r.mount_source("data", &token, "m");
    let src = tempfile::tempdir().unwrap();
    make_tree(&src.path().join("tree"));
    run(Command::new("cp")
        .arg("-a")
        .arg(src.path().join("tree"))
        .arg(m.p("copied")));
    fuse::model::assert_same_tree(&src.path().join("tree"), &m.p("copied"), true);
    let tarball = src.path().join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(src.path())
        // pax headers keep sub-second mtimes (the default format has whole seconds).
        .arg("--format=posix")
        .arg("-cf")
        .arg(&tarball)
        .arg("tree"));
    fs::create_dir(m.p("untarred")).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(m.p("untarred"))
        .arg("-xpf")
        .arg(&tarball));
    fuse::model::assert_same_tree(&src.path().join("tree"), &m.p("untarred/tree"), true);
    // Hard links survive as hard links.
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&m.p("untarred/tree/a/one.txt")),
        ino(&m.p("untarred/tree/a/b/hard"))
    );
    // And back out again: tar of the mount equals the original.
    let out = src.path().join("out");
    fs::create_dir(&out).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(m.p("untarred/tree"))
        .arg(&out));
    fuse::model::assert_same_tree(&src.path().join("tree"), &out.join("tree"), true);
    m.unmount();
}

#[test]
fn mount_time_errors_are_clear_and_quick() {
    let r = Regions::source();
    let token = r.volume("data");
    let at = r.mountpoint("m");
    // Nothing listens on this port any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let open = |url: &str, token: &str, path: &Path| -> MountError {
        let started = Instant::now();
        let mut c = r.config(url, "data", token, path);
        c.connect_timeout = Duration::from_secs(2);
        let e = r.rt.block_on(Mount::open(c)).err().expect("mount fails");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failed after {:?}",
            started.elapsed()
        );
        e
    };
    let e = open(&dead_url, &token, &at);
    let msg = e.to_string();
    assert!(
        msg.contains("data") && msg.contains(&dead_url),
        "names the volume and the service: {msg}"
    );
    // A server that accepts connections and never answers: bounded by the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let e = open(&silent_url, &token, &at);
    assert!(
        matches!(e, MountError::MetaTimeout { .. }),
        "a silent service times out: {e}"
    );
    assert!(e.to_string().contains("did not answer"), "{e}");
    drop(silent);
    let e = open(&r.source.url.clone(), "wrong-token", &at).to_string();
    assert!(e.contains("token"), "says to check the token: {e}");
    let e = open(&r.source.url.clone(), &token, &at.join("missing")).to_string();
    assert!(e.contains("does not exist"), "{e}");
    assert!(mount::find_mount(&at).is_none(), "nothing was mounted");
}
