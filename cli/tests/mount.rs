//! `mirrorfs mount`, `mirrorfs umount` and `mirrorfs cp` as real processes over real
//! `mirrorfs meta serve` processes: a foreground mount unmounts cleanly on SIGTERM, a background
//! mount returns once live and leaves a daemon in its own session, mount-time errors (no meta
//! service, a silent one, a wrong token or volume, no /dev/fuse) are quick and clear, `cp` then
//! a mount reads the tree back, and a file written through a source mount shows up with the same
//! bytes in a mirror mount (which refuses writes with EROFS), and `--cache-dir` fills its
//! directory with checksum-named blocks (and refuses a directory in use or a regular file).
//!
//! Needs root and /dev/fuse (as CI runs): without them the tests fail saying so. Every mount is
//! unmounted (lazily) and every daemon killed by its pid when its guard drops, panics included.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Service, text};
use mirrorfs_fs::mount::{self, find_mount};

const WAIT: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_mirrorfs");

fn require_fuse() {
    if let Err(e) = mount::check_fuse_device() {
        panic!("these tests need root and /dev/fuse (as CI runs them): {e}");
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (FUSE mounts and mount namespaces)"
    );
}

/// Polls `check` until it holds; panics with `what` at the deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted(path: &Path) -> bool {
    find_mount(path).is_some_and(|m| m.source.starts_with("mirrorfs:"))
}

/// Whether process `pid` is still running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn session_of(pid: i32) -> i32 {
    nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
        .unwrap()
        .as_raw()
}

/// Cleans up whatever a test mounted or started: lazy unmount by path, SIGKILL by pid.
#[derive(Default)]
struct Guard {
    paths: Vec<PathBuf>,
    pids: Vec<i32>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for p in &self.paths {
            if mounted(p) {
                let _ = mount::unmount(p, true);
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &self.pids {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A source region (and optionally a mirror region following it) as `mirrorfs meta serve`
/// processes, with local-directory buckets, in one temporary directory.
struct Regions {
    dir: tempfile::TempDir,
    source: Service,
    source_admin: String,
    mirror: Option<(Service, String)>,
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

impl Regions {
    fn start(with_mirror: bool) -> Regions {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("mirrorfs-cli-mount-")
            .tempdir()
            .unwrap();
        for d in ["bucket-a", "bucket-b", "mnt"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let source = Service::start(&dir.path().join("source"), &[] as &[&str]);
        let admin_file = dir.path().join("source/admin.token");
        let source_admin = read_trimmed(&admin_file);
        let mirror = with_mirror.then(|| {
            let m = Service::start(
                &dir.path().join("mirror"),
                &[
                    "--mirror-of".as_ref(),
                    source.url.as_ref(),
                    "--mirror-token-file".as_ref(),
                    admin_file.as_os_str(),
                ],
            );
            let admin = read_trimmed(&dir.path().join("mirror/admin.token"));
            (m, admin)
        });
        Regions {
            dir,
            source,
            source_admin,
            mirror,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bucket(&self, name: &str) -> String {
        format!("file://{}", self.p(name).display())
    }

    /// Creates source volume `name`; returns its token file.
    fn volume(&self, name: &str) -> PathBuf {
        let token = self.p(&format!("{name}.token"));
        let o = run(
            &[
                "volume",
                "create",
                name,
                "--bucket",
                &self.bucket("bucket-a"),
                "--token-file",
                token.to_str().unwrap(),
            ],
            &[
                ("MIRRORFS_META", &self.source.url),
                ("MIRRORFS_ADMIN_TOKEN", &self.source_admin),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        token
    }

    /// Creates mirror volume `name` of `source` with its own bucket, once the mirror has the
    /// source volume; returns its token file.
    fn mirror_volume(&self, name: &str, source: &str) -> PathBuf {
        let (m, admin) = self.mirror.as_ref().expect("a mirror region");
        let token = self.p(&format!("{name}.token"));
        eventually("the mirror to know the source volume", || {
            let o = run(
                &[
                    "volume",
                    "create",
                    name,
                    "--source-volume",
                    source,
                    "--bucket",
                    &self.bucket("bucket-b"),
                    "--token-file",
                    token.to_str().unwrap(),
                ],
                &[("MIRRORFS_META", &m.url), ("MIRRORFS_ADMIN_TOKEN", admin)],
            );
            o.status.success()
        });
        token
    }

    fn mirror_url(&self) -> String {
        self.mirror.as_ref().expect("a mirror region").0.url.clone()
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.p("mnt").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Runs `mirrorfs` with `env` (no token or admin token inherited from the caller).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MIRRORFS_ADMIN_TOKEN")
        .env_remove("MIRRORFS_ADMIN_TOKEN_FILE")
        .env_remove("MIRRORFS_TOKEN")
        .env_remove("MIRRORFS_TOKEN_FILE")
        .env("MIRRORFS_LOG", "info")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `mirrorfs mount --background`; returns the daemon's pid (from its message).
fn mount_background(
    g: &mut Guard,
    volume: &str,
    at: &Path,
    url: &str,
    token: &Path,
    extra: &[&str],
) -> i32 {
    g.paths.push(at.to_owned());
    let mut args = vec![
        "mount",
        volume,
        at.to_str().unwrap(),
        "--meta",
        url,
        "--token-file",
        token.to_str().unwrap(),
        "--background",
    ];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(o.status.success(), "background mount: {}", text(&o));
    assert!(
        mounted(at),
        "mounted once the command returned: {}",
        text(&o)
    );
    let msg = text(&o);
    let pid = msg
        .split("daemon pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the daemon's pid in {msg:?}"));
    g.pids.push(pid);
    pid
}

fn umount(at: &Path) {
    let o = run(&["umount", at.to_str().unwrap()], &[]);
    assert!(o.status.success(), "umount: {}", text(&o));
    assert!(!mounted(at));
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A minimal HTTP/1.0 GET of `url` (`http://host:port/path`): the whole response.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn a_foreground_mount_unmounts_cleanly_on_sigterm() {
    let r = Regions::start(false);
    let token = r.volume("data");
    let at = r.mountpoint("fg");
    let mut g = Guard::default();
    g.paths.push(at.clone());
    let mut child = command(
        &[
            "mount",
            "data",
            at.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id() as i32;
    let stderr = child.stderr.take().unwrap();
    g.children.push(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut out = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    eventually("the foreground mount", || mounted(&at));
    // The mount's /metrics and /healthz, on the port it was given.
    let metrics = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the mount did not print its metrics address");
        if let Some(url) = line.strip_prefix("mirrorfs: metrics on ") {
            break url.to_owned();
        }
    };
    let body = http_get(&metrics);
    assert!(
        body.contains("mirrorfs_objstore_local_hits_total")
            && body.contains("mirrorfs_objstore_repairs_queued_total"),
        "{body}"
    );
    assert!(http_get(&metrics.replace("/metrics", "/healthz")).contains("ok"));
    let data = pattern(5 << 20, 7);
    std::fs::write(at.join("f"), &data).unwrap();
    // SIGTERM: buffered writes are committed, the mount is removed, the process exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = g.children[0].wait().unwrap();
    let log = lines.join().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
    assert!(!mounted(&at), "unmounted on SIGTERM\n{log}");
    assert!(log.contains("mounted on"), "{log}");
    // Everything is in the volume: a new mount reads it back.
    mount_background(&mut g, "data", &at, &r.source.url, &token, &["--read-only"]);
    assert!(std::fs::read(at.join("f")).unwrap() == data);
    let e = std::fs::write(at.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "--read-only: {e}");
    umount(&at);
}

#[test]
fn a_background_mount_returns_when_live_and_the_daemon_has_its_own_session() {
    let r = Regions::start(false);
    let token = r.volume("data");
    let at = r.mountpoint("bg");
    let log = r.p("mount.log");
    let mut g = Guard::default();
    let pid = mount_background(
        &mut g,
        "data",
        &at,
        &r.source.url,
        &token,
        &["--log-file", log.to_str().unwrap()],
    );
    assert!(alive(pid));
    assert_eq!(session_of(pid), pid, "the daemon leads its own session");
    assert_ne!(session_of(pid), session_of(std::process::id() as i32));
    std::fs::create_dir(at.join("d")).unwrap();
    std::fs::write(at.join("d/f"), b"hello").unwrap();
    assert_eq!(std::fs::read(at.join("d/f")).unwrap(), b"hello");
    let info = find_mount(&at).unwrap();
    assert_eq!(info.source, "mirrorfs:data");
    assert!(!info.read_only());
    // Mounting again on the same place is refused by the command itself.
    let o = run(
        &[
            "mount",
            "data",
            at.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
            "--background",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("already mounted"), "{}", text(&o));
    // umount refuses what is not a mirrorfs mount, and unmounts ours; the daemon then exits.
    let o = run(&["umount", r.p("mnt").to_str().unwrap()], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    umount(&at);
    eventually("the daemon to exit after umount", || !alive(pid));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("mounted"), "the log file: {logged}");
    // The token can come from the environment too (as the CSI node plugin passes it).
    let o = command(
        &[
            "mount",
            "data",
            at.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--background",
        ],
        &[("MIRRORFS_TOKEN", &read_trimmed(&token))],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    g.paths.push(at.clone());
    assert_eq!(std::fs::read(at.join("d/f")).unwrap(), b"hello");
    umount(&at);
}

#[test]
fn mount_errors_are_quick_and_clear() {
    let r = Regions::start(false);
    let token = r.volume("data");
    let at = r.mountpoint("err");
    let mut g = Guard::default();
    g.paths.push(at.clone());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let fails = |args: &[&str], env: &[(&str, &str)], needles: &[&str]| {
        let started = Instant::now();
        let o = run(args, env);
        let took = started.elapsed();
        assert!(!o.status.success(), "should fail: {}", text(&o));
        for n in needles {
            assert!(text(&o).contains(n), "should say {n:?}: {}", text(&o));
        }
        assert!(
            took < Duration::from_secs(15),
            "took {took:?}: {}",
            text(&o)
        );
        assert!(!mounted(&at));
    };
    let t = token.to_str().unwrap();
    let a = at.to_str().unwrap();
    for bg in [&[][..], &["--background"][..]] {
        let mut args = vec!["mount", "data", a, "--meta", &dead_url, "--token-file", t];
        args.extend_from_slice(bg);
        fails(&args, &[], &["data", &dead_url]);
        let mut args = vec![
            "mount",
            "data",
            a,
            "--meta",
            &silent_url,
            "--token-file",
            t,
            "--connect-timeout",
            "2s",
        ];
        args.extend_from_slice(bg);
        fails(&args, &[], &["did not answer"]);
        let mut args = vec!["mount", "data", a, "--meta", &r.source.url];
        args.extend_from_slice(bg);
        fails(&args, &[("MIRRORFS_TOKEN", "wrong")], &["token"]);
        let mut args = vec![
            "mount",
            "nope",
            a,
            "--meta",
            &r.source.url,
            "--token-file",
            t,
        ];
        args.extend_from_slice(bg);
        fails(&args, &[], &["nope"]);
        let mut args = vec!["mount", "data", a, "--meta", &r.source.url];
        args.extend_from_slice(bg);
        fails(&args, &[], &["--token-file", "MIRRORFS_TOKEN"]);
        let missing = r.p("mnt/missing");
        let mut args = vec![
            "mount",
            "data",
            missing.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            t,
        ];
        args.extend_from_slice(bg);
        fails(&args, &[], &["does not exist"]);
    }
    drop(silent);
    // Without /dev/fuse (a mount namespace whose /dev is an empty tmpfs).
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$@""#)
        .arg("sh")
        .arg(BIN)
        .args([
            "mount",
            "data",
            a,
            "--meta",
            &r.source.url,
            "--token-file",
            t,
        ])
        .env_remove("MIRRORFS_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("/dev/fuse does not exist"),
        "names the missing device: {}",
        text(&o)
    );
}

/// A small tree: nested directories, modes, a symlink, a hard link, an empty file, a file of
/// several blocks.
fn make_tree(root: &Path) -> Vec<u8> {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("a/one.txt"), b"one\n").unwrap();
    std::fs::write(root.join("a/b/empty"), b"").unwrap();
    let big = pattern((9 << 20) + 11, 3);
    std::fs::write(root.join("a/b/big.bin"), &big).unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a/one.txt", root.join("link")).unwrap();
    std::fs::hard_link(root.join("a/one.txt"), root.join("a/b/hard")).unwrap();
    big
}

#[test]
fn cp_copies_a_tree_that_a_mount_reads_back() {
    let r = Regions::start(true);
    let token = r.volume("data");
    let src = r.p("tree");
    let big = make_tree(&src);
    let o = run(
        &[
            "cp",
            src.to_str().unwrap(),
            "data:/imported/set1",
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("4 files")
            && summary.contains("1 symlinks")
            && summary.contains("1 hard links"),
        "summary: {summary}"
    );
    let mut g = Guard::default();
    let at = r.mountpoint("cp");
    mount_background(&mut g, "data", &at, &r.source.url, &token, &[]);
    let got = at.join("imported/set1");
    assert!(std::fs::read(got.join("a/b/big.bin")).unwrap() == big);
    assert_eq!(std::fs::read(got.join("a/one.txt")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(got.join("link")).unwrap(), b"one\n");
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("a/one.txt")
    );
    assert!(got.join("empty").is_dir());
    assert_eq!(std::fs::metadata(got.join("a/b/empty")).unwrap().len(), 0);
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(got.join("run.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_eq!(
        md.modified().unwrap(),
        std::fs::metadata(src.join("run.sh"))
            .unwrap()
            .modified()
            .unwrap(),
        "mtime kept"
    );
    assert_eq!(
        std::fs::metadata(got.join("a/one.txt")).unwrap().ino(),
        std::fs::metadata(got.join("a/b/hard")).unwrap().ino(),
        "a hard link stays one"
    );
    umount(&at);
    // Copying again overwrites in place.
    std::fs::write(src.join("a/one.txt"), b"two\n").unwrap();
    let o = run(
        &[
            "cp",
            src.to_str().unwrap(),
            "data:/imported/set1",
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    mount_background(&mut g, "data", &at, &r.source.url, &token, &[]);
    assert_eq!(std::fs::read(got.join("a/b/hard")).unwrap(), b"two\n");
    umount(&at);
    // A mirror volume is refused, saying why.
    let mtoken = r.mirror_volume("data-b", "data");
    let o = run(
        &[
            "cp",
            src.to_str().unwrap(),
            "data-b",
            "--meta",
            &r.mirror_url(),
            "--token-file",
            mtoken.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("mirror volume"), "{}", text(&o));
    // A source that is not a directory.
    let o = run(
        &[
            "cp",
            src.join("run.sh").to_str().unwrap(),
            "data",
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not a directory"), "{}", text(&o));
}

#[test]
fn a_source_write_appears_in_a_mirror_mount_which_refuses_writes() {
    let r = Regions::start(true);
    let token = r.volume("data");
    let mtoken = r.mirror_volume("data-b", "data");
    let mut g = Guard::default();
    let src = r.mountpoint("src");
    let mir = r.mountpoint("mir");
    mount_background(&mut g, "data", &src, &r.source.url, &token, &[]);
    let mpid = mount_background(&mut g, "data-b", &mir, &r.mirror_url(), &mtoken, &[]);
    let info = find_mount(&mir).unwrap();
    assert!(info.read_only(), "a mirror mount is read-only: {info:?}");
    assert!(!mir.join("model.bin").exists());
    let data = pattern((13 << 20) + 5, 11);
    std::fs::write(src.join("model.bin"), &data).unwrap();
    eventually("the file with identical bytes in the mirror mount", || {
        std::fs::read(mir.join("model.bin")).is_ok_and(|b| b == data)
    });
    let e = std::fs::write(mir.join("model.bin"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::create_dir(mir.join("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // The mirror mount's replication workers copy the blocks into the mirror's own bucket.
    eventually("blocks in the mirror bucket", || {
        std::fs::read_dir(r.p("bucket-b")).is_ok_and(|mut d| d.next().is_some())
    });
    // SIGTERM to the daemon unmounts it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mpid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually("the mirror daemon to unmount and exit", || {
        !mounted(&mir) && !alive(mpid)
    });
    umount(&src);
}

/// The regular files under `dir` (recursively), without dot files (the cache's lock).
fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_cache_dir_fills_with_verified_blocks_and_bad_ones_are_refused() {
    let r = Regions::start(false);
    let token = r.volume("data");
    let at = r.mountpoint("cached");
    let cache = r.p("cache");
    let mut g = Guard::default();
    // Written through a mount without a disk cache.
    mount_background(&mut g, "data", &at, &r.source.url, &token, &[]);
    let data = pattern((9 << 20) + 3, 5);
    std::fs::write(at.join("f"), &data).unwrap();
    umount(&at);
    let in_bucket = block_files(&r.p("bucket-a")).len();
    assert!(in_bucket >= 3, "the file's blocks: {in_bucket}");
    assert!(block_files(&cache).is_empty());
    // Read through a mount with a disk cache: the directory fills with the blocks, each named
    // by the BLAKE3 checksum of its content.
    let cache_arg = cache.to_str().unwrap();
    let log = r.p("cached.log");
    let pid = mount_background(
        &mut g,
        "data",
        &at,
        &r.source.url,
        &token,
        &[
            "--cache-dir",
            cache_arg,
            "--cache-size",
            "64MiB",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(at.join("f")).unwrap() == data);
    eventually("every block in the cache directory", || {
        block_files(&cache).len() == in_bucket
    });
    // Its metrics: every block a miss (then cached), the bytes on disk.
    let logged = std::fs::read_to_string(&log).unwrap();
    let metrics = logged
        .lines()
        .find_map(|l| l.strip_prefix("mirrorfs: metrics on "))
        .unwrap_or_else(|| panic!("the metrics address in the log: {logged}"))
        .to_owned();
    let wanted = [
        format!("mirrorfs_block_disk_cache_misses_total {in_bucket}"),
        "mirrorfs_block_disk_cache_hits_total 0".to_owned(),
        format!("mirrorfs_block_disk_cache_bytes {}", data.len()),
        "mirrorfs_block_disk_cache_evictions_total 0".to_owned(),
    ];
    eventually("the disk cache metrics", || {
        let body = http_get(&metrics);
        wanted.iter().all(|w| body.lines().any(|l| l == w))
    });
    let mut total = 0;
    for f in block_files(&cache) {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(mirrorfs_objstore::checksum(&bytes).to_string(), name);
        assert_eq!(f.parent().unwrap().file_name().unwrap(), &name[..2]);
        total += bytes.len();
    }
    assert_eq!(total, data.len());
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    // A second mount of the same directory is refused while the first holds it.
    let other = r.mountpoint("other");
    g.paths.push(other.clone());
    let o = run(
        &[
            "mount",
            "data",
            other.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
            "--cache-dir",
            cache_arg,
        ],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("in use by another mirrorfs mount")
            && text(&o).contains("give each mount its own --cache-dir"),
        "{}",
        text(&o)
    );
    assert!(!mounted(&other));
    umount(&at);
    eventually("the daemon to exit after umount", || !alive(pid));
    // A regular file as --cache-dir fails the mount, naming it; so does a bad size.
    let plain = r.p("plain");
    std::fs::write(&plain, b"x").unwrap();
    for bg in [&[][..], &["--background"][..]] {
        let mut args = vec![
            "mount",
            "data",
            at.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
            "--cache-dir",
            plain.to_str().unwrap(),
        ];
        args.extend_from_slice(bg);
        let o = run(&args, &[]);
        assert!(!o.status.success(), "{}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains(&format!(
                "block cache directory {} is not a directory",
                plain.display()
            )),
            "{msg}"
        );
        assert!(!mounted(&at));
    }
    let o = run(
        &[
            "mount",
            "data",
            at.to_str().unwrap(),
            "--meta",
            &r.source.url,
            "--token-file",
            token.to_str().unwrap(),
            "--cache-dir",
            cache_arg,
            "--cache-size",
            "ten gigs",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not a size"), "{}", text(&o));
}
