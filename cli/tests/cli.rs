//! The `mirrorfs` commands as an operator runs them against a real `mirrorfs meta serve`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Service, fails_with, mirrorfs, text};

/// A minimal HTTP/1.0 GET, enough for /healthz and /metrics.
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn operator_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let svc = Service::start::<&str>(&data, &[]);

    // The admin token is generated on first start, readable only by its owner.
    let admin_file = data.join("admin.token");
    let mode = std::fs::metadata(&admin_file)
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    let admin = admin_file.to_str().expect("utf-8 path");
    let env = [
        ("MIRRORFS_META", svc.url.as_str()),
        ("MIRRORFS_ADMIN_TOKEN_FILE", admin),
    ];

    let token_file = dir.path().join("datasets.token");
    let o = mirrorfs(
        &[
            "volume",
            "create",
            "datasets",
            "--token-file",
            token_file.to_str().expect("path"),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("created volume datasets"));
    assert!(
        !text(&o).contains(std::fs::read_to_string(&token_file).expect("token").trim()),
        "token must not be printed when written to a file"
    );
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The token file is never overwritten.
    fails_with(
        &[
            "volume",
            "create",
            "other",
            "--token-file",
            token_file.to_str().expect("path"),
        ],
        &env,
        "already exists",
    );

    fails_with(&["volume", "create", "datasets"], &env, "already exists");
    fails_with(&["volume", "create", "Not/Valid"], &env, "Not/Valid");

    let o = mirrorfs(&["volume", "list", "--json"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(list[0]["name"], "datasets");

    let o = mirrorfs(&["status", "--json"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(st["engine"], "embedded");
    assert_eq!(st["volumes"], 1);
    assert!(st["revision"].as_u64().expect("revision") >= 1);

    let o = mirrorfs(&["volume", "delete", "datasets"], &env);
    assert!(o.status.success(), "{}", text(&o));
    fails_with(&["volume", "delete", "datasets"], &env, "does not exist");

    // Wrong token, no token, unreachable service: clear errors, non-zero exit.
    fails_with(
        &["status"],
        &[
            ("MIRRORFS_META", &svc.url),
            ("MIRRORFS_ADMIN_TOKEN", "wrong"),
        ],
        "invalid token",
    );
    fails_with(
        &["status"],
        &[("MIRRORFS_META", &svc.url)],
        "no admin token",
    );
    fails_with(
        &["status", "--meta", "http://127.0.0.1:1"],
        &[("MIRRORFS_ADMIN_TOKEN", "x")],
        "cannot reach the meta service",
    );

    assert!(http_get(&svc.metrics, "/healthz").contains("ok"));
    let metrics = http_get(&svc.metrics, "/metrics");
    assert!(metrics.contains("mirrorfs_meta_rpc_total"), "{metrics}");
}

#[test]
fn bad_serve_flags_fail_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path");
    fails_with(
        &[
            "meta",
            "serve",
            "--data-dir",
            d,
            "--engine",
            "nosuch",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "unknown engine",
    );
    fails_with(
        &[
            "meta",
            "serve",
            "--data-dir",
            d,
            "--listen",
            "not-an-address",
        ],
        &[],
        "invalid value",
    );
    fails_with(
        &["meta", "serve", "--listen", "127.0.0.1:0"],
        &[],
        "--data-dir",
    );
    // A corrupt database names its file.
    std::fs::write(dir.path().join("meta.redb"), b"this is not a database").expect("write");
    fails_with(
        &[
            "meta",
            "serve",
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        "meta.redb",
    );
}

#[test]
fn the_demo_shows_paths_refused_writes_data_fallback_replication_and_the_csi_node_path() {
    let o = mirrorfs(&["demo"], &[("MIRRORFS_LOG", "warn")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // Everything it mounted is gone, and so is its directory.
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("done; removed "))
        .unwrap_or_else(|| panic!("the demo did not say what it removed:\n{out}"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir), "{mounts}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left");
    for needle in [
        "/teams/vision/imagenet/train: exists",
        "/teams/vision/coco/train: MISSING",
        "a write on the mirror is refused",
        "0 blocks from the mirror bucket, 16 from the source bucket",
        "reading again: 16 blocks from the mirror bucket, 0 from the source bucket",
        "claim default/resnet50 (ReadOnlyMany, subdir models/resnet50) -> volume ",
        "claim default/coco (subdir teams/vision/coco/train) fails fast with NotFound",
        "has no entry \"coco\"",
        "mounted read-only, per /proc/self/mountinfo",
        "pod reads weights-03.bin: 4.2 MB, identical to what the source wrote",
        "pod writes scratch.txt: Read-only file system",
        "metadata freshness",
        "lag 0 revisions",
    ] {
        assert!(
            out.contains(needle),
            "the demo should say {needle:?}:\n{out}"
        );
    }
}

/// `mirrorfs demo --keep-running` keeps the published mount until Ctrl-C, then unmounts and
/// removes everything.
#[test]
fn the_demo_cleans_up_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_mirrorfs"))
            .args(["demo", "--keep-running"])
            .env("MIRRORFS_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut out = String::new();
    let mut published = None;
    while published.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo never said it was serving:\n{out}"));
        out.push_str(&line);
        out.push('\n');
        if let Some(path) = line.trim().strip_prefix("ls -l ") {
            published = Some(std::path::PathBuf::from(path));
        }
    }
    let published = published.expect("published path");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mounts.contains(published.to_str().expect("utf-8")),
        "the published path is not mounted while the demo runs:\n{out}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        out.push_str(&line);
        out.push('\n');
    }
    assert!(status.success(), "{status}\n{out}");
    assert!(out.contains("interrupted: unmounting"), "{out}");
    // The demo's directory is the first component under the temporary directory (another demo
    // may run at the same time: only this one's paths count).
    let tmp = std::env::temp_dir();
    let rel = published
        .strip_prefix(&tmp)
        .expect("under the temporary directory");
    let dir = tmp.join(rel.components().next().expect("demo dir"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(dir.to_str().expect("utf-8")),
        "mounts left after Ctrl-C:\n{mounts}"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
