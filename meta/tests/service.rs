//! The meta service through a real gRPC socket: authentication, file-system calls with their
//! error kinds, path resolution, the changelog stream and snapshots.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::{ADMIN, Server};
use futures::StreamExt;
use mirrorfs_api::meta::{self as pb};
use mirrorfs_api::{FsErrorKind, Ino};
use mirrorfs_meta::client;
use tonic::Code;

fn vref(name: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef {
        volume: name.into(),
    })
}

async fn create_volume(s: &Server, name: &str) -> String {
    let mut admin = client::admin(s.channel().await, ADMIN).unwrap();
    admin
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("create volume")
        .into_inner()
        .token
}

fn mkdir(vol: &str, parent: u64, name: &str) -> pb::MkdirRequest {
    pb::MkdirRequest {
        volume: vref(vol),
        parent,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

#[tokio::test]
async fn calls_without_the_right_token_are_refused() {
    let s = Server::start().await;
    let tok_a = create_volume(&s, "alpha").await;
    let _tok_b = create_volume(&s, "beta").await;

    // Admin API: no token, wrong token.
    let mut anon = client::admin(s.channel().await, "wrong").unwrap();
    let e = anon
        .list_volumes(pb::ListVolumesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let raw = mirrorfs_api::meta::admin_client::AdminClient::new(s.channel().await)
        .list_volumes(pb::ListVolumesRequest {})
        .await
        .unwrap_err();
    assert_eq!(raw.code(), Code::Unauthenticated);
    assert!(
        raw.message().contains("Bearer"),
        "message should say how to authenticate: {raw:?}"
    );

    // Fs API: the token of volume alpha does not open beta; the admin token opens no volume.
    let mut fs_a = client::fs(s.channel().await, &tok_a).unwrap();
    let e = fs_a
        .get_attr(pb::GetAttrRequest {
            volume: vref("beta"),
            ino: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut fs_admin = client::fs(s.channel().await, ADMIN).unwrap();
    let e = fs_admin
        .get_attr(pb::GetAttrRequest {
            volume: vref("alpha"),
            ino: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Unknown volume and a request naming none.
    let e = fs_a
        .get_attr(pb::GetAttrRequest {
            volume: vref("nope"),
            ino: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));
    let e = fs_a
        .get_attr(pb::GetAttrRequest {
            volume: None,
            ino: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The changelog is admin-only.
    let mut cl = client::changelog(s.channel().await, &tok_a).unwrap();
    let e = cl
        .watch(pb::WatchRequest { from_revision: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    s.stop().await;
}

#[tokio::test]
async fn file_system_calls_round_trip_with_error_kinds() {
    let s = Server::start().await;
    let tok = create_volume(&s, "data").await;
    let mut fs = client::fs(s.channel().await, &tok).unwrap();

    let open = fs
        .open_volume(pb::OpenVolumeRequest {
            volume: vref("data"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.root_ino, Ino::ROOT.0);
    assert!(!open.read_only);

    let a = fs
        .mkdir(mkdir("data", 1, "a"))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(a.kind, pb::FileKind::Directory as i32);
    let e = fs.mkdir(mkdir("data", 1, "a")).await.unwrap_err();
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::Exists));
    assert_eq!(e.code(), Code::AlreadyExists);

    for i in 0..25 {
        fs.create(pb::CreateRequest {
            volume: vref("data"),
            parent: a.ino,
            name: format!("f{i:02}").into(),
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            exclusive: true,
        })
        .await
        .unwrap();
    }
    // Paging through readdir returns every name once, in order; pages asked with `plus` carry
    // each entry's attributes.
    let (mut after, mut names, mut plus) = (Vec::new(), Vec::new(), false);
    loop {
        plus = !plus;
        let page = fs
            .read_dir(pb::ReadDirRequest {
                volume: vref("data"),
                ino: a.ino,
                after: after.clone(),
                limit: 7,
                plus,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 7);
        for e in &page.entries {
            match e.attr {
                Some(attr) => assert!(plus && attr.ino == e.ino && attr.uid == 1000, "{e:?}"),
                None => assert!(!plus, "{e:?} has no attributes"),
            }
        }
        names.extend(
            page.entries
                .iter()
                .map(|e| String::from_utf8(e.name.clone()).unwrap()),
        );
        match page.entries.last() {
            Some(e) if page.more => after = e.name.clone(),
            _ => break,
        }
    }
    let expected: Vec<_> = (0..25).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names, expected);

    let e = fs
        .rmdir(pb::RmdirRequest {
            volume: vref("data"),
            parent: 1,
            name: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::NotEmpty));
    let e = fs
        .lookup(pb::LookupRequest {
            volume: vref("data"),
            parent: a.ino,
            name: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::NotFound));
    let e = fs.mkdir(mkdir("data", 1, "x/y")).await.unwrap_err();
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::InvalidArgument));
    let e = fs
        .mkdir(mkdir("data", 1, &"n".repeat(256)))
        .await
        .unwrap_err();
    assert_eq!(FsErrorKind::of(&e), Some(FsErrorKind::NameTooLong));

    // Rename a directory into its own subtree is refused.
    let b = fs
        .mkdir(mkdir("data", a.ino, "b"))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let e = fs
        .rename(pb::RenameRequest {
            volume: vref("data"),
            parent: 1,
            name: "a".into(),
            new_parent: b.ino,
            new_name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        FsErrorKind::of(&e),
        Some(FsErrorKind::InvalidArgument),
        "{e:?}"
    );

    // Symlinks are stored, not followed.
    let l = fs
        .symlink(pb::SymlinkRequest {
            volume: vref("data"),
            parent: 1,
            name: "link".into(),
            target: "/etc/passwd".into(),
            uid: 0,
            gid: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let t = fs
        .read_link(pb::ReadLinkRequest {
            volume: vref("data"),
            ino: l.ino,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.target, b"/etc/passwd");
    s.stop().await;
}

#[tokio::test]
async fn resolve_reports_the_first_missing_component() {
    let s = Server::start().await;
    let tok = create_volume(&s, "data").await;
    let mut fs = client::fs(s.channel().await, &tok).unwrap();
    let a = fs
        .mkdir(mkdir("data", 1, "a"))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let b = fs
        .mkdir(mkdir("data", a.ino, "b"))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();

    let r = fs
        .resolve(pb::ResolveRequest {
            volume: vref("data"),
            path: "/a/b/".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.revision > 0);
    match r.result {
        Some(pb::resolve_reply::Result::Found(attr)) => assert_eq!(attr.ino, b.ino),
        other => panic!("expected /a/b to resolve, got {other:?}"),
    }
    let r = fs
        .resolve(pb::ResolveRequest {
            volume: vref("data"),
            path: "/a/x/y".into(),
        })
        .await
        .unwrap()
        .into_inner();
    match r.result {
        Some(pb::resolve_reply::Result::Missing(m)) => {
            assert_eq!(m.existing_prefix, "/a");
            assert_eq!(m.missing_component, "x");
        }
        other => panic!("expected a missing component, got {other:?}"),
    }
    let e = fs
        .resolve(pb::ResolveRequest {
            volume: vref("data"),
            path: "/a/../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test]
async fn changelog_streams_every_revision_of_the_mirrored_keyspace() {
    let s = Server::start().await;
    let tok = create_volume(&s, "data").await;
    let mut fs = client::fs(s.channel().await, &tok).unwrap();
    let mut cl = client::changelog(s.channel().await, ADMIN).unwrap();
    let mut stream = cl
        .watch(pb::WatchRequest { from_revision: 1 })
        .await
        .unwrap()
        .into_inner();

    for i in 0..20 {
        fs.mkdir(mkdir("data", 1, &format!("d{i}"))).await.unwrap();
    }
    let head = s.engine.head().await.unwrap().revision.0;
    let mut expected = 1;
    while expected <= head {
        let e = stream.next().await.expect("stream ended").expect("entry");
        assert_eq!(e.revision, expected, "changelog must have no gaps");
        assert!(!e.cluster_id.is_empty());
        for m in &e.mutations {
            let key = match m.op.as_ref().unwrap() {
                pb::mutation::Op::Put(p) => &p.key,
                pb::mutation::Op::Delete(d) => &d.key,
                pb::mutation::Op::DeleteRange(r) => &r.start,
            };
            assert!(key.starts_with(b"m/"), "cluster-local key leaked: {key:?}");
        }
        expected += 1;
    }
    // A live commit arrives after the catch-up.
    fs.mkdir(mkdir("data", 1, "live")).await.unwrap();
    let e = stream.next().await.unwrap().unwrap();
    assert_eq!(e.revision, head + 1);

    // Snapshot: one revision, mirrored keys only, and a final chunk.
    let mut snap = cl
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let (mut pairs, mut last, mut rev) = (0, false, None);
    while let Some(chunk) = snap.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(*rev.get_or_insert(chunk.revision), chunk.revision);
        assert!(chunk.pairs.iter().all(|kv| kv.key.starts_with(b"m/")));
        pairs += chunk.pairs.len();
        last |= chunk.last;
    }
    assert!(last && pairs > 20, "{pairs} pairs");

    // After compaction, an old position is refused with the compaction point.
    let mut admin = client::admin(s.channel().await, ADMIN).unwrap();
    let c = admin
        .compact(pb::CompactRequest { revision: head })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.compacted_revision, head);
    let e = cl
        .watch(pb::WatchRequest { from_revision: 2 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        mirrorfs_meta::error::compacted_revision(&e).map(|r| r.0),
        Some(head)
    );
    assert!(e.message().contains("re-bootstrap"), "{e:?}");
    let ok = cl
        .watch(pb::WatchRequest {
            from_revision: head + 1,
        })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await;
    assert_eq!(ok.unwrap().unwrap().revision, head + 1);
    s.stop().await;
}

#[tokio::test]
async fn status_reports_the_cluster() {
    let s = Server::start().await;
    create_volume(&s, "one").await;
    let mut admin = client::admin(s.channel().await, ADMIN).unwrap();
    let st = admin
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.engine, "memory");
    assert_eq!(st.role, "source");
    assert_eq!(st.volumes, 1);
    assert!(st.revision >= 1 && !st.cluster_id.is_empty());
    let vols = admin
        .list_volumes(pb::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(
        vols.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["one"]
    );
    let e = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "one".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "Bad/Name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    admin
        .delete_volume(pb::DeleteVolumeRequest { name: "one".into() })
        .await
        .unwrap();
    let e = admin
        .delete_volume(pb::DeleteVolumeRequest { name: "one".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn watch_volume_reports_the_inodes_and_entries_each_commit_changed() {
    let s = Server::start().await;
    let token = create_volume(&s, "data").await;
    let other = create_volume(&s, "other").await;
    let mut fs = client::fs(s.channel().await, &token).unwrap();
    let mut watch = fs
        .watch_volume(pb::WatchVolumeRequest {
            volume: vref("data"),
            from_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // A change in another volume is not reported.
    let mut ofs = client::fs(s.channel().await, &other).unwrap();
    ofs.mkdir(mkdir("other", 1, "elsewhere")).await.unwrap();
    let d = fs
        .mkdir(mkdir("data", 1, "d"))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let c = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .expect("a change within 10 s")
        .expect("stream open")
        .unwrap();
    assert!(c.inodes.contains(&d.ino) && c.inodes.contains(&1), "{c:?}");
    assert_eq!(c.entries.len(), 1, "{c:?}");
    assert_eq!(
        (c.entries[0].parent, c.entries[0].name.as_slice()),
        (1, &b"d"[..])
    );
    assert!(!c.reset);
    // Another volume's token does not open this volume's watch.
    let refused = ofs
        .watch_volume(pb::WatchVolumeRequest {
            volume: vref("data"),
            from_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
