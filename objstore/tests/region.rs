//! Reads in a mirror region over both backends: local hits, fallback to the source bucket for a
//! missing, corrupt or unreachable local copy, repairs queued, and an error naming both buckets
//! when neither can serve the block.

mod common;

use std::sync::Arc;

use anyhow::{Context, ensure};
use common::{Env, each_backend, flip_byte, put, truncate_half};
use mirrorfs_objstore::{
    BlockInfo, CopyOutcome, NoRepair, ObjError, ObjMetrics, ReadSource, RegionReader, RepairReason,
};
use tokio::sync::mpsc;

type Repairs = mpsc::UnboundedReceiver<(BlockInfo, RepairReason)>;

fn reader(env: &Env) -> (RegionReader, Repairs, ObjMetrics) {
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics = ObjMetrics::default();
    let r = RegionReader::new(
        env.bucket("source"),
        Some(env.bucket("mirror")),
        Arc::new(tx),
        metrics.clone(),
    );
    (r, rx, metrics)
}

#[tokio::test]
async fn local_hit() {
    each_backend(|env: Env| async move {
        let (r, mut repairs, m) = reader(&env);
        let (info, d) = put(&env.bucket("source"), 5000, 1).await?;
        env.bucket("mirror")
            .copy_block_from(&env.bucket("source"), &info)
            .await?;
        let (got, from) = r.read(&info).await?;
        ensure!(got == d && from == ReadSource::Local);
        ensure!(m.local_hits.get() == 1 && m.repairs_queued.get() == 0);
        ensure!(repairs.try_recv().is_err());
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn fallback_on_missing_queues_a_copy() {
    each_backend(|env: Env| async move {
        let (r, mut repairs, m) = reader(&env);
        let (info, d) = put(&env.bucket("source"), 5000, 2).await?;
        let (got, from) = r.read(&info).await?;
        ensure!(got == d && from == ReadSource::Fallback);
        let (queued, why) = repairs.try_recv().context("no repair queued")?;
        ensure!(queued == info && why == RepairReason::Missing);
        ensure!(m.repairs_queued.get() == 1 && m.local_hits.get() == 0);
        // The worker's copy makes the next read local.
        env.bucket("mirror")
            .copy_block_from(r.source(), &queued)
            .await?;
        ensure!(r.read(&info).await?.1 == ReadSource::Local);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn fallback_and_repair_on_corrupt_or_truncated_copy() {
    each_backend(|env: Env| async move {
        let (r, mut repairs, m) = reader(&env);
        let source = env.bucket("source");
        let mirror = env.bucket("mirror");
        for (damage, want) in [
            (flip_byte as fn(&std::path::Path), RepairReason::Corrupt),
            (truncate_half, RepairReason::Truncated),
        ] {
            let (info, d) = put(&source, 20_000, 3).await?;
            mirror.copy_block_from(&source, &info).await?;
            damage(&env.object_file("mirror", info.id.as_str()));
            let (got, from) = r.read(&info).await?;
            ensure!(got == d && from == ReadSource::Fallback, "{want:?}");
            let (queued, why) = repairs.try_recv().context("no repair queued")?;
            ensure!(why == want);
            // The repair replaces the bad copy (the one documented overwrite).
            ensure!(matches!(
                mirror.repair_block_from(&source, &queued).await?,
                CopyOutcome::Copied { .. }
            ));
            ensure!(r.read(&info).await? == (d, ReadSource::Local));
        }
        ensure!(m.checksum_failures.get() == 2);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn unreachable_local_bucket_falls_back_without_repair() {
    each_backend(|env: Env| async move {
        let (tx, mut repairs) = mpsc::unbounded_channel();
        let r = RegionReader::new(
            env.bucket("source"),
            Some(env.unreachable("mirror").await),
            Arc::new(tx),
            ObjMetrics::default(),
        );
        let (info, d) = put(&env.bucket("source"), 1000, 4).await?;
        ensure!(r.read(&info).await? == (d, ReadSource::Fallback));
        ensure!(
            repairs.try_recv().is_err(),
            "an outage is no reason to re-copy"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn both_buckets_failing_names_both() {
    each_backend(|env: Env| async move {
        let source = env.bucket("source");
        let (info, _) = put(&source, 1000, 5).await?;
        let (down_source, faults) = source.with_faults();
        faults.set_unavailable(true);
        let mirror = env.unreachable("mirror").await;
        let r = RegionReader::new(
            down_source,
            Some(mirror.clone()),
            Arc::new(NoRepair),
            ObjMetrics::default(),
        );
        let e = r
            .read(&info)
            .await
            .err()
            .context("read with both buckets down")?;
        ensure!(
            matches!(e, ObjError::BothFailed { .. }) && e.is_retryable(),
            "{e:?}"
        );
        let msg = e.to_string();
        ensure!(msg.contains(source.display()), "{msg}");
        ensure!(msg.contains(mirror.display()), "{msg}");
        ensure!(msg.contains(info.id.as_str()), "{msg}");

        // Missing locally and corrupt at the source: still an error, never wrong bytes.
        faults.clear();
        let (info, _) = put(&source, 1000, 6).await?;
        flip_byte(&env.object_file("source", info.id.as_str()));
        let (r, _repairs, _) = reader(&env);
        let e = r
            .read(&info)
            .await
            .err()
            .context("read a block bad everywhere")?;
        ensure!(
            matches!(e, ObjError::BothFailed { .. }) && !e.is_retryable(),
            "{e:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn shared_bucket_reads_the_source_directly() {
    each_backend(|env: Env| async move {
        let metrics = ObjMetrics::default();
        let r = RegionReader::new(
            env.bucket("source"),
            None,
            Arc::new(NoRepair),
            metrics.clone(),
        );
        let (info, d) = put(&env.bucket("source"), 1000, 7).await?;
        ensure!(r.read(&info).await? == (d, ReadSource::Local));
        flip_byte(&env.object_file("source", info.id.as_str()));
        ensure!(matches!(r.read(&info).await, Err(ObjError::Corrupt { .. })));
        ensure!(metrics.checksum_failures.get() == 1);
        Ok(())
    })
    .await;
}
