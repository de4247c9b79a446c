//! A source region and a mirror region as real `mirrorfs meta serve` processes: the mirror
//! follows the source, serves its own volumes read-only, survives kill -9 in the middle of
//! applying, and `mirrorfs mirror check` finds it equal to the source.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use mirrorfs_api::FsErrorKind;
use mirrorfs_api::meta as pb;
use mirrorfs_meta::client;

use common::{Service, fails_with, mirrorfs, text};

fn vref(v: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef { volume: v.into() })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read token")
        .trim()
        .to_owned()
}

async fn status(url: &str, admin: &str) -> pb::StatusReply {
    let ch = client::connect(url, Duration::from_secs(5))
        .await
        .expect("connect");
    client::admin(ch, admin)
        .expect("admin client")
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Waits until the mirror has applied the source's latest revision.
async fn caught_up(
    source: &Service,
    source_admin: &str,
    mirror: &Service,
    mirror_admin: &str,
) -> u64 {
    let target = status(&source.url, source_admin).await.revision;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = status(&mirror.url, mirror_admin)
            .await
            .mirror
            .expect("mirror status");
        if m.applied_revision >= target {
            assert!(m.lag_seconds >= 0.0);
            return m.applied_revision;
        }
        assert!(
            Instant::now() < deadline,
            "mirror stuck at {} of {target}: {m:?}",
            m.applied_revision
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_region_follows_serves_read_only_and_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_data, mir_data) = (dir.path().join("source"), dir.path().join("mirror"));
    let repl_file = dir.path().join("replication.token");
    std::fs::write(&repl_file, "replication-secret\n").expect("write token");

    let source = Service::start(
        &src_data,
        &["--replication-token-file".as_ref(), repl_file.as_os_str()],
    );
    let src_admin = read(&src_data.join("admin.token"));
    let src_env = [
        ("MIRRORFS_META", source.url.as_str()),
        ("MIRRORFS_ADMIN_TOKEN", src_admin.as_str()),
    ];
    let src_token_file = dir.path().join("datasets.token");
    let o = mirrorfs(
        &[
            "volume",
            "create",
            "datasets",
            "--token-file",
            src_token_file.to_str().expect("path"),
        ],
        &src_env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let src_token = read(&src_token_file);

    // The replication token opens the changelog but not the admin API.
    let o = mirrorfs(
        &["volume", "list"],
        &[
            ("MIRRORFS_META", &source.url),
            ("MIRRORFS_ADMIN_TOKEN", "replication-secret"),
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));

    let ch = client::connect(&source.url, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut src_fs = client::fs(ch.clone(), &src_token).expect("fs");
    let teams = src_fs
        .mkdir(pb::MkdirRequest {
            volume: vref("datasets"),
            parent: 1,
            name: "teams".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await
        .expect("mkdir")
        .into_inner()
        .attr
        .expect("attr")
        .ino;

    let mirror_args = |extra: &[&str]| {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--mirror-of".into(),
            source.url.clone().into(),
            "--mirror-token-file".into(),
            repl_file.clone().into(),
        ];
        v.extend(extra.iter().map(Into::into));
        v
    };
    let mut mirror = Service::start(&mir_data, &mirror_args(&["--mirror-check-interval", "0s"]));
    let mir_admin = read(&mir_data.join("admin.token"));
    let mirror_url = mirror.url.clone();
    let mir_env = [
        ("MIRRORFS_META", mirror_url.as_str()),
        ("MIRRORFS_ADMIN_TOKEN", mir_admin.as_str()),
    ];
    caught_up(&source, &src_admin, &mirror, &mir_admin).await;

    // A mirror volume needs a source volume, and gets its own token.
    fails_with(
        &["volume", "create", "local-datasets"],
        &mir_env,
        "--source-volume",
    );
    let mir_token_file = dir.path().join("mirror.token");
    let o = mirrorfs(
        &[
            "volume",
            "create",
            "local-datasets",
            "--source-volume",
            "datasets",
            "--token-file",
            mir_token_file.to_str().expect("path"),
        ],
        &mir_env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let mir_token = read(&mir_token_file);
    let o = mirrorfs(&["volume", "list"], &mir_env);
    assert!(
        text(&o).contains("local-datasets") && text(&o).contains("datasets"),
        "{}",
        text(&o)
    );

    let mch = client::connect(&mirror.url, Duration::from_secs(5))
        .await
        .expect("connect mirror");
    let mut mir_fs = client::fs(mch.clone(), &mir_token).expect("fs");
    let r = mir_fs
        .resolve(pb::ResolveRequest {
            volume: vref("local-datasets"),
            path: "/teams".into(),
        })
        .await
        .expect("resolve on the mirror")
        .into_inner();
    assert!(
        matches!(r.result, Some(pb::resolve_reply::Result::Found(ref a)) if a.ino == teams),
        "{r:?}"
    );
    let e = mir_fs
        .mkdir(pb::MkdirRequest {
            volume: vref("local-datasets"),
            parent: 1,
            name: "x".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .await
        .expect_err("a mirror must refuse writes");
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::ReadOnly), "{e:?}");
    assert!(e.message().contains("read-only"), "{e:?}");
    // Tokens do not cross regions.
    let mut wrong = client::fs(mch.clone(), &src_token).expect("fs");
    let e = wrong
        .get_attr(pb::GetAttrRequest {
            volume: vref("local-datasets"),
            ino: 1,
        })
        .await
        .expect_err("source token on mirror");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut wrong = client::fs(ch.clone(), &mir_token).expect("fs");
    let e = wrong
        .get_attr(pb::GetAttrRequest {
            volume: vref("datasets"),
            ino: 1,
        })
        .await
        .expect_err("mirror token on source");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // kill -9 the mirror while it applies a write load, then restart it on the same data.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut fs = src_fs.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let name = format!("w{w}-f{i}").into();
                    let req = pb::CreateRequest {
                        volume: vref("datasets"),
                        parent: teams,
                        name,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        exclusive: true,
                    };
                    fs.create(req).await.expect("create on the source");
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&mirror.url, &mir_admin)
        .await
        .mirror
        .expect("mirror")
        .applied_revision
        < 200
    {
        assert!(
            Instant::now() < deadline,
            "the mirror applied nothing under load"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mirror.kill9();
    drop(mirror);
    let mirror = Service::start(&mir_data, &mirror_args(&["--mirror-check-interval", "0s"]));
    let mirror_url = mirror.url.clone();
    let mir_env = [
        ("MIRRORFS_META", mirror_url.as_str()),
        ("MIRRORFS_ADMIN_TOKEN", mir_admin.as_str()),
    ];
    for w in writers {
        w.await.expect("writer");
    }
    let applied = caught_up(&source, &src_admin, &mirror, &mir_admin).await;

    let o = mirrorfs(&["mirror", "check"], &mir_env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("equal to the source"), "{}", text(&o));
    let o = mirrorfs(&["status"], &mir_env);
    assert!(
        text(&o).contains("mirror of") && text(&o).contains(&source.url),
        "{}",
        text(&o)
    );

    // The restarted mirror serves the files written while it was down, at the applied revision.
    let mch = client::connect(&mirror.url, Duration::from_secs(5))
        .await
        .expect("connect mirror");
    let mut mir_fs = client::fs(mch, &mir_token).expect("fs");
    let r = mir_fs
        .resolve(pb::ResolveRequest {
            volume: vref("local-datasets"),
            path: "/teams/w7-f299".into(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert!(
        matches!(r.result, Some(pb::resolve_reply::Result::Found(_))),
        "{r:?}"
    );
    assert!(r.revision >= applied);
    fails_with(&["mirror", "check"], &src_env, "not a mirror");
}

#[test]
fn mirror_flags_fail_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path");
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
            "--mirror-of",
            "http://127.0.0.1:1",
        ],
        &[],
        "--mirror-token-file",
    );
    fails_with(
        &[
            "meta",
            "serve",
            "--data-dir",
            d,
            "--mirror-check-interval",
            "soon",
        ],
        &[],
        "soon",
    );
}
