//! Kills `mirrorfs meta serve` with SIGKILL in the middle of a write load, restarts it on the
//! same data directory, and checks that every acknowledged create survived and the changelog
//! runs from 1 to the head with no gap.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mirrorfs_api::meta as pb;
use mirrorfs_meta::client;

use common::Service;

const ADMIN: &str = "crash-test-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, ADMIN).expect("write token");
    let data = dir.path().join("data");

    let mut svc = Service::start(
        &data,
        &["--admin-token-file".as_ref(), token_file.as_os_str()],
    );
    let channel = client::connect(&svc.url, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut admin = client::admin(channel.clone(), ADMIN).expect("admin client");
    let token = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "crash".into(),
            ..Default::default()
        })
        .await
        .expect("create volume")
        .into_inner()
        .token;

    // 32 writers, each in its own directory, record what the service acknowledged.
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..32 {
        let mut fs = client::fs(channel.clone(), &token).expect("fs client");
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let vref = || {
                Some(pb::VolumeRef {
                    volume: "crash".into(),
                })
            };
            let dir = fs
                .mkdir(pb::MkdirRequest {
                    volume: vref(),
                    parent: 1,
                    name: format!("w{w}").into(),
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
            for i in 0.. {
                let name = format!("f{i}");
                let req = pb::CreateRequest {
                    volume: vref(),
                    parent: dir,
                    name: name.clone().into(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    exclusive: true,
                };
                match fs.create(req).await {
                    Ok(_) => acked.lock().expect("lock").push((dir, name)),
                    Err(_) => return, // the service died under us
                }
            }
        }));
    }
    // Kill once a good number of creates are acknowledged (not after a fixed sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 3000 {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.kill9();
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    drop(svc);

    let svc = Service::start(
        &data,
        &["--admin-token-file".as_ref(), token_file.as_os_str()],
    );
    let channel = client::connect(&svc.url, Duration::from_secs(5))
        .await
        .expect("reconnect");
    let mut fs = client::fs(channel.clone(), &token).expect("fs client");
    for (dir, name) in &acked {
        let found = fs
            .lookup(pb::LookupRequest {
                volume: Some(pb::VolumeRef {
                    volume: "crash".into(),
                }),
                parent: *dir,
                name: name.clone().into(),
            })
            .await;
        assert!(
            found.is_ok(),
            "acknowledged create of {name} in dir {dir} was lost: {found:?}"
        );
    }

    let mut admin = client::admin(channel.clone(), ADMIN).expect("admin client");
    let head = admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .revision;
    assert!(
        head as usize > acked.len(),
        "head {head} below {} acknowledged creates",
        acked.len()
    );
    let mut cl = client::changelog(channel, ADMIN).expect("changelog client");
    let mut stream = cl
        .watch(pb::WatchRequest { from_revision: 1 })
        .await
        .expect("watch")
        .into_inner();
    for expected in 1..=head {
        let e = stream
            .next()
            .await
            .expect("changelog ended early")
            .expect("entry");
        assert_eq!(e.revision, expected, "changelog gap after kill -9");
    }
    println!(
        "{} acknowledged creates survived kill -9; changelog 1..={head} has no gap",
        acked.len()
    );
}
