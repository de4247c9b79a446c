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
fn the_demo_shows_paths_refused_writes_data_fallback_and_replication() {
    let o = mirrorfs(&["demo"], &[("MIRRORFS_LOG", "warn")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for needle in [
        "/teams/vision/imagenet/train: exists",
        "/teams/vision/coco/train: MISSING",
        "a write on the mirror is refused",
        "0 blocks from the mirror bucket, 16 from the source bucket",
        "reading again: 16 blocks from the mirror bucket, 0 from the source bucket",
        "metadata freshness",
    ] {
        assert!(
            out.contains(needle),
            "the demo should say {needle:?}:\n{out}"
        );
    }
}
