//! `mirrorfs gc VOLUME`: garbage collection of one volume's blocks in its bucket. Finds the
//! volume through the Admin API, picks the bucket to collect (a mirror volume: its own bucket
//! only), and runs `mirrorfs_replicator::gc::collect`, which deletes a block only when two runs
//! at least `--grace` apart both found it unreferenced. Run it periodically (a CronJob, a timer)
//! at intervals shorter than the grace period; progress goes to the log, the summary to stdout.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use mirrorfs_api::VolumeId;
use mirrorfs_api::meta::ListVolumesRequest;
use mirrorfs_objstore::{Bucket, BucketConfig, Credentials};
use mirrorfs_replicator::gc::{self, GcOptions, GcPhase, GcSummary};
use mirrorfs_replicator::sync::human_bytes;

use crate::args::AdminConn;

#[derive(clap::Args, Clone, Debug)]
pub struct GcArgs {
    /// The volume: a source volume, or on a mirror cluster a mirror volume with its own bucket.
    pub volume: String,
    #[command(flatten)]
    pub conn: AdminConn,
    /// How long a block must stay unreferenced before it is deleted (e.g. 24h, 7d). It must
    /// exceed the longest time a client keeps extents it has read plus the lag of any mirror
    /// reading this bucket.
    #[arg(long, env = "MIRRORFS_GC_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Report what would be deleted; delete nothing and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON file {"access_key_id": …, "secret_access_key": …} for the volume's bucket.
    /// Default: MIRRORFS_BUCKET_ACCESS_KEY_ID / MIRRORFS_BUCKET_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_BUCKET_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Deletes in flight.
    #[arg(long, env = "MIRRORFS_GC_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
}

pub async fn run(a: GcArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.grace.is_zero(),
        "--grace must be longer than 0 (it protects readers holding extents and lagging mirrors)"
    );
    let mut admin = crate::admin::connect(&a.conn).await?;
    let volumes = admin
        .list_volumes(ListVolumesRequest {})
        .await
        .map_err(crate::admin::explain)?
        .into_inner()
        .volumes;
    let Some(info) = volumes.into_iter().find(|v| v.name == a.volume) else {
        anyhow::bail!(
            "volume {:?} does not exist on the meta service at {} (`mirrorfs volume list` shows \
             its volumes)",
            a.volume,
            a.conn.meta
        );
    };
    let storage = gc::gc_storage(&info)?;
    let credentials = match &a.credentials_file {
        Some(path) => Some(Credentials::from_file(path)?),
        None => Credentials::from_env("MIRRORFS_BUCKET_")?,
    };
    let cfg = BucketConfig::from_storage(&storage, credentials)
        .with_context(|| format!("the bucket of volume {:?}", a.volume))?;
    let bucket = Bucket::open(&cfg)?;
    bucket.check().await?;
    tracing::info!(volume = %a.volume, id = info.id, bucket = bucket.display(), grace = %humantime::format_duration(a.grace), dry_run = a.dry_run, "garbage collection started");
    let volume = a.volume.clone();
    let summary = gc::collect(
        &bucket,
        VolumeId(info.id),
        || async move { gc::list_referenced(&mut admin, &volume).await },
        GcOptions {
            grace: a.grace,
            dry_run: a.dry_run,
            now: SystemTime::now(),
            concurrency: a.concurrency.max(1),
        },
    )
    .await?;
    print!("{}", report(&a.volume, &summary));
    Ok(())
}

/// The summary for people.
fn report(volume: &str, s: &GcSummary) -> String {
    let mut out = format!(
        "volume {volume} (id {}) in {}, metadata revision {}{}\n",
        s.volume_id,
        s.bucket,
        s.revision,
        if s.dry_run { " (dry run)" } else { "" }
    );
    out += &format!(
        "  scanned:     {} blocks, {}\n",
        s.scanned_objects,
        human_bytes(s.scanned_bytes)
    );
    out += &format!("  referenced:  {} blocks", s.referenced);
    if s.referenced_missing > 0 {
        out += &format!(
            " ({} missing from this bucket: not replicated yet, or lost; `mirrorfs sync` \
             repairs them)",
            s.referenced_missing
        );
    }
    out += "\n";
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    out += &format!(
        "  {verb}: {} blocks, {}\n",
        s.deleted,
        human_bytes(s.deleted_bytes)
    );
    out += &format!(
        "  unreferenced, waiting out the grace period: {} blocks, {}\n",
        s.candidates,
        human_bytes(s.candidates_bytes)
    );
    let phase = match s.phase {
        GcPhase::Started => "no earlier run recorded candidates: the grace period starts now",
        GcPhase::Waiting => {
            "the candidates of an earlier run are not yet a grace period old: nothing deleted"
        }
        GcPhase::Swept if s.dry_run => {
            "blocks unreferenced for a whole grace period would be deleted"
        }
        GcPhase::Swept => "blocks unreferenced for a whole grace period were deleted",
    };
    out += &format!("  {phase}\n");
    if let Some(at) = s.next_deletion_at {
        out += &format!(
            "  next deletion possible from {} (run again then)\n",
            humantime::format_rfc3339_seconds(at)
        );
    }
    out += &format!("  took {:.1} s\n", s.took.as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_was_done_and_what_waits() {
        let s = GcSummary {
            volume_id: VolumeId(3),
            bucket: "s3://b/blocks".into(),
            dry_run: true,
            phase: GcPhase::Swept,
            revision: 42,
            scanned_objects: 10,
            scanned_bytes: 4096,
            referenced: 7,
            referenced_missing: 1,
            candidates: 2,
            candidates_bytes: 200,
            deleted: 1,
            deleted_bytes: 100,
            next_deletion_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(86400)),
            took: Duration::from_millis(1500),
        };
        let r = report("data", &s);
        for want in [
            "volume data (id 3)",
            "(dry run)",
            "would delete: 1 blocks",
            "1 missing",
            "1970-01-02T00:00:00Z",
        ] {
            assert!(r.contains(want), "{want:?} not in:\n{r}");
        }
    }
}
