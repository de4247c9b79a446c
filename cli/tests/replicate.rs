//! `mirrorfs replicate` as a real process between two real meta services: killed with SIGKILL in
//! the middle of copying, a second run finishes the job with every block verified in the mirror
//! bucket, and `mirrorfs status` shows the replication backlog.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirrorfs_api::VolumeId;
use mirrorfs_api::meta as pb;
use mirrorfs_meta::client;
use mirrorfs_objstore::{BlockInfo, Bucket, BucketConfig, new_block_id};

use common::{Service, fails_with, mirrorfs, text};

const BLOCKS: u64 = 600;
const BLOCK: usize = 16 << 10;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read token")
        .trim()
        .to_owned()
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Writes one file of `BLOCKS` blocks into the source volume: blocks into the bucket, then
/// extents through the Fs API.
async fn write_file(source: &Service, token: &str, bucket: &Bucket) -> Vec<BlockInfo> {
    let ch = client::connect(&source.url, Duration::from_secs(5))
        .await
        .expect("connect");
    let mut fs = client::fs(ch, token).expect("fs client");
    let vref = || {
        Some(pb::VolumeRef {
            volume: "datasets".into(),
        })
    };
    let opened = fs
        .open_volume(pb::OpenVolumeRequest { volume: vref() })
        .await
        .expect("open volume")
        .into_inner();
    let file = fs
        .create(pb::CreateRequest {
            volume: vref(),
            parent: opened.root_ino,
            name: b"train.bin".to_vec(),
            mode: 0o644,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .attr
        .expect("attr");
    let mut blocks = Vec::new();
    for chunk in 0..BLOCKS / 100 {
        let mut extents = Vec::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            let data: Vec<u8> = (0..BLOCK).map(|j| (j as u64 ^ i) as u8).collect();
            let id = new_block_id(VolumeId(opened.volume_id));
            let sum = bucket
                .put_block(&id, Bytes::from(data.clone()))
                .await
                .expect("put block");
            extents.push(pb::Extent {
                offset: i * BLOCK as u64,
                length: BLOCK as u64,
                block_id: id.as_str().into(),
                block_offset: 0,
                block_size: BLOCK as u64,
                checksum: sum.0.to_vec(),
            });
            blocks.push(BlockInfo::of(id, &data));
        }
        fs.commit_extents(pb::CommitExtentsRequest {
            volume: vref(),
            ino: file.ino,
            extents,
            new_size: (chunk + 1) * 100 * BLOCK as u64,
            ..Default::default()
        })
        .await
        .expect("commit extents");
    }
    blocks
}

async fn replication(url: &str, admin: &str) -> pb::ReplicationStatus {
    let ch = client::connect(url, Duration::from_secs(5))
        .await
        .expect("connect");
    client::admin(ch, admin)
        .expect("admin client")
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .replication
        .expect("a mirror reports replication")
}

fn files_in(dir: &Path) -> usize {
    fn walk(d: &Path) -> usize {
        std::fs::read_dir(d).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum()
        })
    }
    walk(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicate_process_killed_mid_copy_loses_nothing_and_a_second_run_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_bucket_dir, mir_bucket_dir) =
        (dir.path().join("bucket-a"), dir.path().join("bucket-b"));
    std::fs::create_dir_all(&src_bucket_dir).expect("mkdir");
    std::fs::create_dir_all(&mir_bucket_dir).expect("mkdir");
    let source = Service::start(&dir.path().join("source"), &[] as &[&str]);
    let src_admin_file = dir.path().join("source").join("admin.token");
    let src_admin = read(&src_admin_file);
    let src_token_file = dir.path().join("datasets.token");
    let o = mirrorfs(
        &[
            "volume",
            "create",
            "datasets",
            "--bucket",
            &url(&src_bucket_dir),
            "--token-file",
            src_token_file.to_str().expect("path"),
        ],
        &[
            ("MIRRORFS_META", &source.url),
            ("MIRRORFS_ADMIN_TOKEN", &src_admin),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let mirror = Service::start(
        &dir.path().join("mirror"),
        &[
            "--mirror-of".as_ref(),
            source.url.as_ref(),
            "--mirror-token-file".as_ref(),
            src_admin_file.as_os_str(),
        ],
    );
    let mir_admin_file = dir.path().join("mirror").join("admin.token");
    let mir_admin = read(&mir_admin_file);
    let mir_env = [
        ("MIRRORFS_META", mirror.url.as_str()),
        ("MIRRORFS_ADMIN_TOKEN", mir_admin.as_str()),
    ];
    // The mirror volume gets its own bucket once the mirror has the source volume.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = mirrorfs(
            &[
                "volume",
                "create",
                "datasets-b",
                "--source-volume",
                "datasets",
                "--bucket",
                &url(&mir_bucket_dir),
                "--token-file",
                dir.path().join("b.token").to_str().expect("path"),
            ],
            &mir_env,
        );
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&o));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let src_bucket = Bucket::open(&BucketConfig::new(url(&src_bucket_dir))).expect("bucket");
    let mir_bucket = Bucket::open(&BucketConfig::new(url(&mir_bucket_dir))).expect("bucket");
    let blocks = write_file(&source, &read(&src_token_file), &src_bucket).await;

    // Bad invocations fail with a message that says what to do.
    fails_with(
        &["replicate", "--meta", &mirror.url],
        &[],
        "--admin-token-file",
    );
    fails_with(
        &[
            "replicate",
            "--meta",
            &source.url,
            "--admin-token-file",
            src_admin_file.to_str().expect("path"),
        ],
        &[],
        "this cluster is a source",
    );

    // A worker is killed with SIGKILL once it has copied something.
    let replicate = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirrorfs"));
        cmd.args([
            "replicate",
            "--meta",
            &mirror.url,
            "--lease",
            "2s",
            "--workers",
            "2",
        ])
        .arg("--admin-token-file")
        .arg(&mir_admin_file)
        .args(extra)
        .env("MIRRORFS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    };
    let mut first = replicate(&[]).spawn().expect("spawn replicate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(&mir_bucket_dir) == 0 {
        assert!(Instant::now() < deadline, "the first worker copied nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    let copied_before = files_in(&mir_bucket_dir);
    let st = replication(&mirror.url, &mir_admin).await;
    assert_eq!(st.replicated_volumes, vec!["datasets-b".to_string()]);

    let o = mirrorfs(&["status"], &mir_env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("replication  into the own buckets of datasets-b"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("backlog"), "{}", text(&o));

    // A second run takes over the dead worker's tasks when their leases expire, and exits when
    // the queue is empty.
    let o = replicate(&["--once"])
        .output()
        .expect("run replicate --once");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("replicated"), "{}", text(&o));
    for b in &blocks {
        mir_bucket
            .get_block(b)
            .await
            .unwrap_or_else(|e| panic!("block {} after the second run: {e}", b.id));
    }
    let st = replication(&mirror.url, &mir_admin).await;
    assert_eq!(
        (st.ready, st.leased),
        (0, 0),
        "{st:?} (copied {copied_before} before the kill)"
    );
}
