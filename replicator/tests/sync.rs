//! Bucket sync and reconciliation over both backends (local directories and the in-process S3
//! server): copy, only-missing, check repairs a corrupted object, dry run writes nothing, a
//! source outage mid-sync ends in a summary that says why, reconcile fills both sides, and the
//! bandwidth limit holds.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use mirrorfs_objstore::{Bucket, BucketConfig, Credentials, ObjError};
use mirrorfs_replicator::reconcile::{ReconcileOptions, reconcile};
use mirrorfs_replicator::sync::{SyncError, SyncOptions, sync};
use mirrorfs_testkit::S3Server;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
}

struct Env {
    tmp: tempfile::TempDir,
    s3: Option<S3Server>,
}

impl Env {
    async fn new(backend: Backend) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let s3 = match backend {
            Backend::Local => None,
            Backend::S3 => Some(S3Server::start(&tmp.path().join("s3")).await.unwrap()),
        };
        Env { tmp, s3 }
    }

    fn bucket(&self, name: &str) -> Bucket {
        let cfg = match &self.s3 {
            None => BucketConfig::new(format!(
                "file://{}",
                self.tmp.path().join("local").join(name).display()
            )),
            Some(s3) => {
                s3.create_bucket(name).unwrap();
                BucketConfig::new(format!("s3://{name}"))
                    .with_option("endpoint", &s3.endpoint)
                    .with_option("max_retries", "0")
                    .with_credentials(Some(Credentials::new(&s3.access_key, &s3.secret_key)))
            }
        };
        Bucket::open(&cfg).unwrap()
    }

    fn object_file(&self, name: &str, key: &str) -> PathBuf {
        match &self.s3 {
            None => self.tmp.path().join("local").join(name).join(key),
            Some(s3) => s3.object_path(name, key),
        }
    }
}

async fn each_backend<F, Fut>(body: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Local, Backend::S3] {
        eprintln!("--- {backend:?} backend");
        body(Env::new(backend).await).await;
    }
}

/// Objects `k/000` .. `k/NNN` (sizes vary), plus one outside the block layout.
async fn fill(b: &Bucket, n: usize) -> BTreeMap<String, Bytes> {
    let mut all = BTreeMap::new();
    for i in 0..n {
        let key = format!("v1/{:02x}/obj{i:03}", i % 7);
        let data: Bytes = (0..(1000 + i * 37))
            .map(|j| (i * 13 + j) as u8)
            .collect::<Vec<_>>()
            .into();
        b.create_object(&key, data.clone()).await.unwrap();
        all.insert(key, data);
    }
    b.create_object("manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    all.insert("manifest.json".into(), Bytes::from_static(b"{}"));
    all
}

async fn contents(b: &Bucket) -> BTreeMap<String, Bytes> {
    let metas: Vec<_> = b.list(None).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        out.insert(m.key.clone(), b.get_object(&m.key).await.unwrap());
    }
    out
}

#[tokio::test]
async fn copies_everything_then_only_what_is_missing() {
    each_backend(|env| async move {
        let (src, dst) = (env.bucket("src"), env.bucket("dst"));
        let want = fill(&src, 40).await;
        let s = sync(&src, &dst, SyncOptions::default(), ()).await.unwrap();
        assert!(s.is_ok(), "{s}");
        assert_eq!((s.scanned, s.copied, s.skipped), (41, 41, 0), "{s}");
        assert_eq!(s.bytes, want.values().map(|d| d.len() as u64).sum::<u64>());
        assert_eq!(contents(&dst).await, want);

        // Second run: nothing to do. Then one object goes missing and only it is copied.
        let s = sync(&src, &dst, SyncOptions::default(), ()).await.unwrap();
        assert_eq!((s.copied, s.skipped), (0, 41), "{s}");
        dst.delete_object("v1/03/obj010").await.unwrap();
        let s = sync(&src, &dst, SyncOptions::default(), ()).await.unwrap();
        assert_eq!((s.copied, s.skipped), (1, 40), "{s}");
        assert_eq!(contents(&dst).await, want);
    })
    .await;
}

#[tokio::test]
async fn check_repairs_a_corrupted_object() {
    each_backend(|env| async move {
        let (src, dst) = (env.bucket("src"), env.bucket("dst"));
        let want = fill(&src, 10).await;
        sync(&src, &dst, SyncOptions::default(), ()).await.unwrap();
        let key = "v1/02/obj002";
        let path = env.object_file("dst", key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();

        // Same size: only-missing does not notice; --check does and replaces it.
        let s = sync(&src, &dst, SyncOptions::default(), ()).await.unwrap();
        assert_eq!(s.replaced, 0);
        let opts = SyncOptions {
            check: true,
            ..SyncOptions::default()
        };
        let s = sync(&src, &dst, opts, ()).await.unwrap();
        assert!(s.is_ok(), "{s}");
        assert_eq!((s.replaced, s.skipped, s.copied), (1, 10, 0), "{s}");
        assert_eq!(contents(&dst).await, want);
    })
    .await;
}

#[tokio::test]
async fn dry_run_copies_nothing() {
    each_backend(|env| async move {
        let (src, dst) = (env.bucket("src"), env.bucket("dst"));
        fill(&src, 12).await;
        let opts = SyncOptions {
            dry_run: true,
            ..SyncOptions::default()
        };
        let s = sync(&src, &dst, opts, ()).await.unwrap();
        assert_eq!((s.would_copy, s.copied, s.bytes), (13, 0, 0), "{s}");
        assert!(contents(&dst).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn source_outage_mid_sync_ends_in_a_clear_summary() {
    each_backend(|env| async move {
        let dst = env.bucket("dst");
        let src = env.bucket("src");
        fill(&src, 30).await;
        let (faulty_src, faults) = src.with_faults();
        // check + list + a few gets succeed, then the source goes away.
        faults.set_unavailable_after(8);
        let opts = SyncOptions {
            concurrency: 2,
            max_consecutive_failures: 5,
            ..SyncOptions::default()
        };
        let s = sync(&faulty_src, &dst, opts, ()).await.unwrap();
        assert!(!s.is_ok());
        assert!(s.failed >= 1, "{s}");
        assert!(s.copied >= 1 && s.copied < 31, "{s}");
        let text = s.to_string();
        assert!(
            text.contains(src.display()) && text.contains("unavailable"),
            "{text}"
        );
        assert!(text.contains("INCOMPLETE"), "{text}");

        // Unreachable from the start: an error naming the source.
        let e = sync(&faulty_src, &dst, SyncOptions::default(), ())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(e, SyncError::Source(ObjError::Unavailable { .. })),
            "{e}"
        );
        assert!(e.to_string().contains(src.display()), "{e}");

        // Once the source is back, a rerun completes the copy.
        faults.clear();
        let s = sync(&faulty_src, &dst, SyncOptions::default(), ())
            .await
            .unwrap();
        assert!(s.is_ok(), "{s}");
        assert_eq!(contents(&dst).await, contents(&src).await);
    })
    .await;
}

#[tokio::test]
async fn reconcile_fills_both_sides() {
    each_backend(|env| async move {
        let (a, b) = (env.bucket("bucket-a"), env.bucket("bucket-b"));
        let all = fill(&a, 20).await;
        sync(&a, &b, SyncOptions::default(), ()).await.unwrap();
        // Drift: a lost two objects, b lost three, b has a corrupt copy of one more.
        for k in ["v1/00/obj000", "v1/01/obj001"] {
            a.delete_object(k).await.unwrap();
        }
        for k in ["v1/02/obj002", "v1/03/obj003", "manifest.json"] {
            b.delete_object(k).await.unwrap();
        }
        let path = env.object_file("bucket-b", "v1/04/obj004");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();

        let dry = reconcile(
            &a,
            &b,
            ReconcileOptions {
                dry_run: true,
                check: true,
                ..ReconcileOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (dry.a_to_b.would_copy, dry.b_to_a.would_copy),
            (4, 2),
            "{dry}"
        );

        let opts = ReconcileOptions {
            check: true,
            ..ReconcileOptions::default()
        };
        let s = reconcile(&a, &b, opts).await.unwrap();
        assert!(s.is_ok(), "{s}");
        assert_eq!(
            (s.a_to_b.copied, s.a_to_b.replaced, s.b_to_a.copied),
            (3, 1, 2),
            "{s}"
        );
        assert_eq!(contents(&a).await, all);
        assert_eq!(contents(&b).await, all);
    })
    .await;
}

#[tokio::test]
async fn bandwidth_limit_is_respected() {
    each_backend(|env| async move {
        let (src, dst) = (env.bucket("src"), env.bucket("dst"));
        for i in 0..8 {
            src.create_object(&format!("o{i}"), Bytes::from(vec![i as u8; 64 << 10]))
                .await
                .unwrap();
        }
        // 512 KiB at 512 KiB/s, with a tenth of a second of burst: at least ~0.9 s.
        let opts = SyncOptions {
            bwlimit: Some(512 << 10),
            ..SyncOptions::default()
        };
        let started = Instant::now();
        let s = sync(&src, &dst, opts, ()).await.unwrap();
        let took = started.elapsed();
        assert_eq!(s.copied, 8, "{s}");
        assert!(took >= Duration::from_millis(800), "took only {took:?}");
    })
    .await;
}
