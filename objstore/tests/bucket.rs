//! Blocks over both backends: put/get/verify, never overwritten, idempotent retries, damage
//! detected, refused and unreachable buckets reported by name, copies between buckets.

mod common;

use anyhow::{Context, ensure};
use bytes::Bytes;
use common::{Env, PREFIX, data, each_backend, flip_byte, put, truncate_half};
use futures::TryStreamExt;
use mirrorfs_api::VolumeId;
use mirrorfs_objstore::{
    BLOCK_SIZE, BlockInfo, Bucket, CopyOutcome, Credentials, ObjError, new_block_id,
};

#[tokio::test]
async fn put_get_verify() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        b.check().await?;
        for len in [0, 1, 100_000, BLOCK_SIZE] {
            let (info, d) = put(&b, len, 7).await?;
            ensure!(info.checksum == mirrorfs_objstore::checksum(&d));
            ensure!(
                b.get_block(&info).await? == d,
                "{len}-byte block read back differs"
            );
            ensure!(b.head_block(&info.id).await? == Some(len as u64));
        }
        let too_big = b
            .put_block(&new_block_id(VolumeId(1)), data(BLOCK_SIZE + 1, 0))
            .await;
        ensure!(matches!(too_big, Err(ObjError::Invalid(_))), "{too_big:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn never_overwrites_and_retried_put_is_idempotent() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        let (info, d) = put(&b, 4096, 1).await?;
        // A retried put of the same bytes succeeds.
        ensure!(b.put_block(&info.id, d.clone()).await? == info.checksum);
        // Other bytes under the same key are refused and the block keeps its content.
        let other = b.put_block(&info.id, data(4096, 2)).await;
        match other {
            Err(ObjError::Exists { bucket, key }) => {
                ensure!(bucket == b.display() && key == info.id.as_str());
            }
            r => anyhow::bail!("expected Exists, got {r:?}"),
        }
        ensure!(b.get_block(&info).await? == d);
        if env.backend == common::Backend::S3 {
            // For servers that ignore If-None-Match: a HEAD guards each put instead.
            let guarded = Bucket::open(&env.config("src").with_option("conditional_put", "false"))?;
            ensure!(guarded.put_block(&info.id, d.clone()).await? == info.checksum);
            let other = guarded.put_block(&info.id, data(4096, 2)).await;
            ensure!(matches!(other, Err(ObjError::Exists { .. })), "{other:?}");
            ensure!(b.get_block(&info).await? == d);
            ensure!(put(&guarded, 10, 9).await.is_ok());
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn corrupted_block_is_detected() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        let (info, _) = put(&b, 10_000, 3).await?;
        flip_byte(&env.object_file("src", info.id.as_str()));
        match b.get_block(&info).await {
            Err(ObjError::Corrupt {
                bucket,
                key,
                expected,
                actual,
            }) => {
                ensure!(bucket == b.display() && key == info.id.as_str());
                ensure!(expected == info.checksum && actual != expected);
            }
            r => anyhow::bail!("expected Corrupt, got {:?}", r.map(|d| d.len())),
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn truncated_block_is_detected() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        let (info, _) = put(&b, 10_000, 4).await?;
        truncate_half(&env.object_file("src", info.id.as_str()));
        match b.get_block(&info).await {
            Err(ObjError::Truncated {
                expected, actual, ..
            }) => ensure!(expected == 10_000 && actual == 5_000),
            r => anyhow::bail!("expected Truncated, got {:?}", r.map(|d| d.len())),
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn missing_block() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        let info = BlockInfo::of(new_block_id(VolumeId(9)), b"never stored");
        let e = b
            .get_block(&info)
            .await
            .err()
            .context("read a missing block")?;
        ensure!(matches!(e, ObjError::Missing { .. }), "{e:?}");
        ensure!(!e.is_retryable() && e.is_bad_copy());
        ensure!(e.to_string().contains(info.id.as_str()), "{e}");
        ensure!(b.head_block(&info.id).await?.is_none());
        b.delete_block(&info.id).await?; // deleting what is not there is fine
        let (info, _) = put(&b, 10, 0).await?;
        b.delete_block(&info.id).await?;
        ensure!(b.head_block(&info.id).await?.is_none());
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn refused_credentials_name_the_bucket() {
    each_backend(|env: Env| async move {
        let bucket = match env.backend {
            common::Backend::S3 => {
                let cfg = env
                    .config("src")
                    .with_credentials(Some(Credentials::new("AKWRONG", "not-the-secret")));
                Bucket::open(&cfg)?
            }
            // A directory has no credentials: inject the refusal an S3 server would send.
            common::Backend::Local => {
                let (b, f) = env.bucket("src").with_faults();
                f.set_denied(true);
                b
            }
        };
        let e = bucket
            .check()
            .await
            .err()
            .context("check with wrong credentials")?;
        ensure!(matches!(e, ObjError::Denied { .. }), "{e:?}");
        let msg = e.to_string();
        ensure!(msg.contains(bucket.display()), "{msg}");
        ensure!(!msg.contains("not-the-secret"), "{msg}");
        let put = bucket
            .put_block(&new_block_id(VolumeId(1)), data(10, 0))
            .await;
        ensure!(matches!(put, Err(ObjError::Denied { .. })), "{put:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn unreachable_bucket_is_unavailable() {
    each_backend(|env: Env| async move {
        let b = env.unreachable("src").await;
        let started = std::time::Instant::now();
        let e = b
            .check()
            .await
            .err()
            .context("check an unreachable bucket")?;
        ensure!(matches!(e, ObjError::Unavailable { .. }), "{e:?}");
        ensure!(e.is_retryable());
        ensure!(e.to_string().contains(b.display()), "{e}");
        ensure!(
            started.elapsed().as_secs() < 20,
            "took {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn list_gives_keys_relative_to_the_prefix() {
    each_backend(|env: Env| async move {
        let b = env.bucket("src");
        ensure!(b.list(None).try_collect::<Vec<_>>().await?.is_empty());
        let mut ids = Vec::new();
        for v in [1, 2, 2] {
            let id = new_block_id(VolumeId(v));
            b.put_block(&id, data(100, v as u8)).await?;
            ids.push(id);
        }
        let mut all: Vec<String> = b.list(None).map_ok(|m| m.key).try_collect().await?;
        all.sort();
        let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        want.sort();
        ensure!(all == want, "{all:?} != {want:?}");
        let v2 = b.list(Some("v2")).try_collect::<Vec<_>>().await?;
        ensure!(v2.len() == 2 && v2.iter().all(|m| m.size == 100 && m.key.starts_with("v2/")));
        ensure!(!all.iter().any(|k| k.starts_with(PREFIX)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn copy_between_buckets() {
    each_backend(|env: Env| async move {
        let src = env.bucket("src");
        let dst = env.bucket("dst");
        let (info, d) = put(&src, 300_000, 5).await?;
        ensure!(dst.copy_block_from(&src, &info).await? == CopyOutcome::Copied { bytes: 300_000 });
        ensure!(dst.get_block(&info).await? == d);
        ensure!(dst.copy_block_from(&src, &info).await? == CopyOutcome::AlreadyThere);

        // A corrupt source copy is never propagated.
        let (bad, _) = put(&src, 1000, 6).await?;
        flip_byte(&env.object_file("src", bad.id.as_str()));
        let e = dst
            .copy_block_from(&src, &bad)
            .await
            .err()
            .context("copy a corrupt block")?;
        ensure!(matches!(e, ObjError::Corrupt { .. }), "{e:?}");
        ensure!(dst.head_block(&bad.id).await?.is_none());

        // A corrupt destination copy passes the cheap check (right size) but not the repair,
        // which replaces it.
        flip_byte(&env.object_file("dst", info.id.as_str()));
        ensure!(dst.copy_block_from(&src, &info).await? == CopyOutcome::AlreadyThere);
        ensure!(
            dst.repair_block_from(&src, &info).await? == CopyOutcome::Copied { bytes: 300_000 }
        );
        ensure!(dst.get_block(&info).await? == d);

        // A truncated destination copy has the wrong size: even the cheap copy replaces it.
        truncate_half(&env.object_file("dst", info.id.as_str()));
        ensure!(dst.copy_block_from(&src, &info).await? == CopyOutcome::Copied { bytes: 300_000 });
        ensure!(dst.get_block(&info).await? == d);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn injected_read_faults_are_caught() {
    each_backend(|env: Env| async move {
        let (b, faults) = env.bucket("src").with_faults();
        let (info, d) = put(&b, 8192, 8).await?;
        faults.corrupt_next_get(info.id.as_str());
        ensure!(matches!(
            b.get_block(&info).await,
            Err(ObjError::Corrupt { .. })
        ));
        ensure!(
            b.get_block(&info).await? == d,
            "only the next read was to be corrupted"
        );
        faults.set_truncate_gets(true);
        ensure!(matches!(
            b.get_block(&info).await,
            Err(ObjError::Truncated { .. })
        ));
        faults.clear();
        faults.set_unavailable_after(1);
        ensure!(b.get_block(&info).await? == d);
        ensure!(matches!(
            b.get_block(&info).await,
            Err(ObjError::Unavailable { .. })
        ));
        let _: Bytes = d;
        Ok(())
    })
    .await;
}
