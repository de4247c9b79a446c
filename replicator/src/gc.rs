//! Garbage collection of one volume's blocks in one bucket: two-phase mark and sweep with a
//! grace period.
//!
//! A run (1) lists every object under `v<volume id>/`, (2) only then reads the blocks the
//! metadata references (every page of `Admin.ListBlocks`), (3) loads the state a previous run
//! left in the bucket (`_mirrorfs/gc/v<id>.json`: when it was recorded and which objects were
//! unreferenced then), (4) if that state is at least `grace` old, deletes each object it names
//! that is still listed and still unreferenced (and not rewritten since), and (5) records the
//! objects unreferenced now as the next candidates. A run inside the grace window deletes
//! nothing and leaves the state alone, so the clock of the recorded candidates keeps running;
//! objects that became unreferenced since wait for the next cycle.
//!
//! Why this is safe: an object is deleted only if it was unreferenced at two scans at least
//! `grace` apart, and block ids are never reused, so a block stays unreferenced once it is. The
//! listing comes before the metadata read, so a block uploaded and committed in between is
//! either referenced or not listed. Only a reader that keeps extents longer than `grace`, a
//! mirror that lags more than `grace` behind (its readers fall back to this bucket), or a
//! writer whose upload and commit are more than `grace` apart can meet a deleted block.
//! `docs/SEMANTICS.md` states the guarantee.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use mirrorfs_api::VolumeId;
use mirrorfs_api::client::Authed;
use mirrorfs_api::meta::{ListBlocksRequest, StorageConfig, VolumeInfo, admin_client::AdminClient};
use mirrorfs_objstore::{Bucket, ObjError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The default grace period: a day.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Format of the state object this module writes.
pub const STATE_VERSION: u32 = 1;
/// Objects listed between two progress log lines.
const LIST_PROGRESS_EVERY: u64 = 100_000;
/// `ListBlocks` pages between two progress log lines.
const PAGES_PROGRESS_EVERY: u64 = 20;
/// Objects deleted between two progress log lines.
const DELETE_PROGRESS_EVERY: u64 = 10_000;

/// The bucket key of a volume's collector state. It lies outside `v<id>/`, so it is never a
/// candidate itself.
pub fn state_key(volume: VolumeId) -> String {
    format!("_mirrorfs/gc/v{}.json", volume.0)
}

/// The prefix every block of `volume` lives under (`new_block_id`).
pub fn block_prefix(volume: VolumeId) -> String {
    format!("v{}/", volume.0)
}

/// How a run behaves.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// How long an object must stay unreferenced before it is deleted. It must exceed the
    /// longest time a client keeps extents it has read, plus the lag of any mirror that reads
    /// this bucket, plus the longest time between a block's upload and its commit.
    pub grace: Duration,
    /// Report what would be deleted; delete nothing and write no state.
    pub dry_run: bool,
    /// The time this run counts from (tests move it forward instead of sleeping).
    pub now: SystemTime,
    /// Deletes in flight.
    pub concurrency: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
            now: SystemTime::now(),
            concurrency: 16,
        }
    }
}

/// The blocks the metadata references, read after the bucket was listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Referenced {
    /// The volume whose extents were read.
    pub volume_id: VolumeId,
    /// Source head (or mirror applied revision) before the first page was read.
    pub revision: u64,
    pub block_ids: HashSet<String>,
}

/// Where a run left the grace clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcPhase {
    /// No earlier state (or an unreadable one): the candidates were recorded and the clock
    /// started; nothing could be deleted yet.
    Started,
    /// The recorded candidates are younger than the grace period: nothing was deleted and the
    /// state was left as it was.
    Waiting,
    /// The recorded candidates were at least `grace` old: those still unreferenced were
    /// deleted and the current candidates recorded.
    Swept,
}

/// What a run found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcSummary {
    pub volume_id: VolumeId,
    pub bucket: String,
    pub dry_run: bool,
    pub phase: GcPhase,
    /// Metadata revision the referenced set was read from (its first page).
    pub revision: u64,
    /// Objects under `v<id>/` and their bytes.
    pub scanned_objects: u64,
    pub scanned_bytes: u64,
    /// Distinct blocks the metadata references.
    pub referenced: u64,
    /// Referenced blocks not in the bucket (a mirror bucket not filled yet, or lost blocks:
    /// `mirrorfs sync` or the periodic reconciliation repairs them).
    pub referenced_missing: u64,
    /// Unreferenced objects left in the bucket after this run.
    pub candidates: u64,
    pub candidates_bytes: u64,
    /// Objects deleted (with `dry_run`: that a real run would have deleted).
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// When the candidates left can be deleted at the earliest (None: there are none).
    pub next_deletion_at: Option<SystemTime>,
    pub took: Duration,
}

/// Why a run stopped. Every variant leaves the bucket safe: a run deletes only after it has
/// read everything it needs, and a run cut short during deletion is simply run again.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The bucket could not be listed, read or written: fix access and run again.
    #[error("garbage collection of volume id {volume_id}: {error}")]
    Bucket {
        volume_id: u64,
        #[source]
        error: ObjError,
    },
    /// The referenced blocks could not be read: nothing was deleted; run again.
    #[error(
        "cannot read the blocks volume {volume:?} references from the meta service: {detail}; \
         nothing was deleted"
    )]
    Meta { volume: String, detail: String },
    /// The metadata and the bucket prefix are of different volumes.
    #[error(
        "the meta service listed the blocks of volume id {actual} but the bucket prefix being \
         collected is v{expected}/ (was the volume deleted and re-created during the run?); \
         nothing was deleted"
    )]
    WrongVolume { expected: u64, actual: u64 },
    /// The collector state in the bucket cannot be used: a newer format, most likely.
    #[error(
        "the garbage-collection state {key} in bucket {bucket} cannot be used: {detail}; \
         nothing was deleted"
    )]
    State {
        bucket: String,
        key: String,
        detail: String,
    },
    /// This volume's bucket must not be collected from here.
    #[error("{0}")]
    Refused(String),
}

/// The state object a run leaves for the next.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct GcState {
    version: u32,
    /// Unix seconds, rounded up, after the referenced set of the recording run was read.
    recorded_at: u64,
    /// Objects under `v<id>/` that were unreferenced then.
    candidates: Vec<String>,
    /// The metadata revision of that referenced set (for people reading the object).
    #[serde(default)]
    revision: u64,
}

/// What `load_state` found.
enum Loaded {
    Absent,
    /// Damaged: recorded again from scratch, which only delays deletions.
    Unreadable(String),
    Found(GcState),
}

/// The bucket a volume's blocks are collected from, from its `VolumeInfo` as `ListVolumes`
/// shows it. A mirror volume (`source_volume` set) is collected only in its own bucket: when
/// it reads the source bucket directly, the source region collects that bucket.
pub fn gc_storage(info: &VolumeInfo) -> Result<StorageConfig, GcError> {
    let own = info
        .storage
        .clone()
        .filter(|s| !s.bucket_url.is_empty())
        .ok_or_else(|| {
            GcError::Refused(format!(
                "volume {:?} has no bucket configured, so there is nothing to collect",
                info.name
            ))
        })?;
    if !info.source_volume.is_empty() && info.source_storage.as_ref() == Some(&own) {
        return Err(GcError::Refused(format!(
            "mirror volume {:?} shares the bucket {} of source volume {:?}: garbage collection \
             of that bucket runs in the source region (`mirrorfs gc {}` against the source \
             meta service); a mirror cluster collects only a mirror bucket of its own",
            info.name, own.bucket_url, info.source_volume, info.source_volume
        )));
    }
    Ok(own)
}

/// Every block `volume` references, page by page through `Admin.ListBlocks`.
pub async fn list_referenced(
    client: &mut AdminClient<Authed>,
    volume: &str,
) -> Result<Referenced, GcError> {
    let meta_err = |s: tonic::Status| GcError::Meta {
        volume: volume.to_owned(),
        detail: format!("{} ({:?})", s.message(), s.code()),
    };
    let mut out = Referenced::default();
    let mut after = Vec::new();
    let mut pages = 0u64;
    loop {
        let page = client
            .list_blocks(ListBlocksRequest {
                volume: volume.to_owned(),
                after: after.clone(),
                limit: 0,
            })
            .await
            .map_err(meta_err)?
            .into_inner();
        if pages == 0 {
            out.volume_id = VolumeId(page.volume_id);
            out.revision = page.revision;
        } else if page.volume_id != out.volume_id.0 {
            return Err(GcError::Meta {
                volume: volume.to_owned(),
                detail: format!(
                    "the volume changed from id {} to id {} while its blocks were listed \
                     (deleted and re-created)",
                    out.volume_id, page.volume_id
                ),
            });
        }
        pages += 1;
        out.block_ids.extend(page.block_ids);
        if pages.is_multiple_of(PAGES_PROGRESS_EVERY) {
            info!(
                volume,
                pages,
                referenced = out.block_ids.len(),
                "reading referenced blocks"
            );
        }
        if page.next.is_empty() {
            return Ok(out);
        }
        if page.next == after {
            return Err(GcError::Meta {
                volume: volume.to_owned(),
                detail: "the meta service returned the same cursor twice".into(),
            });
        }
        after = page.next;
    }
}

/// One collection run over the blocks of `volume_id` in `bucket`. `referenced` is called after
/// the bucket has been listed (that order is part of the safety argument).
pub async fn collect<F, Fut>(
    bucket: &Bucket,
    volume_id: VolumeId,
    referenced: F,
    opts: GcOptions,
) -> Result<GcSummary, GcError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Referenced, GcError>>,
{
    let started = Instant::now();
    let bucket_err = |error| GcError::Bucket {
        volume_id: volume_id.0,
        error,
    };
    let prefix = block_prefix(volume_id);

    // (1) Every object under v<id>/.
    let mut objects: HashMap<String, (u64, SystemTime)> = HashMap::new();
    let mut scanned_bytes = 0u64;
    {
        let mut listing = bucket.list(Some(&prefix));
        while let Some(m) = listing.next().await {
            let m = m.map_err(bucket_err)?;
            // `list` matches whole key components; this keeps any other key out for certain.
            if !m.key.starts_with(&prefix) {
                continue;
            }
            scanned_bytes += m.size;
            objects.insert(m.key, (m.size, m.last_modified));
            if (objects.len() as u64).is_multiple_of(LIST_PROGRESS_EVERY) {
                info!(
                    bucket = bucket.display(),
                    volume_id = volume_id.0,
                    listed = objects.len(),
                    "listing blocks"
                );
            }
        }
    }
    info!(
        bucket = bucket.display(),
        volume_id = volume_id.0,
        objects = objects.len(),
        "bucket listed; reading the referenced blocks"
    );

    // (2) Then what the metadata references.
    let refs = referenced().await?;
    if refs.volume_id != volume_id {
        return Err(GcError::WrongVolume {
            expected: volume_id.0,
            actual: refs.volume_id.0,
        });
    }
    // The unreferenced objects were unreferenced at the latest now: count the grace period
    // from here (rounded up), not from the start of the run.
    let observed = opts.now + started.elapsed();
    let recorded_at = unix_seconds_ceil(observed);
    let unreferenced: HashSet<&String> = objects
        .keys()
        .filter(|k| !refs.block_ids.contains(*k))
        .collect();
    let referenced_missing = refs
        .block_ids
        .iter()
        .filter(|id| !objects.contains_key(*id))
        .count() as u64;

    // (3) What the previous run recorded.
    let key = state_key(volume_id);
    let previous = load_state(bucket, &key).await.map_err(bucket_err)?;
    let previous = match previous {
        Loaded::Found(s) if s.version > STATE_VERSION => {
            return Err(GcError::State {
                bucket: bucket.display().to_owned(),
                key,
                detail: format!(
                    "it has format version {}, newer than this program's {STATE_VERSION}; run a \
                     newer mirrorfs",
                    s.version
                ),
            });
        }
        Loaded::Found(s) => Some(s),
        Loaded::Unreadable(why) => {
            warn!(bucket = bucket.display(), key, error = %why, "the garbage-collection state is damaged; recording the candidates again (deletions wait another grace period)");
            None
        }
        Loaded::Absent => None,
    };

    // (4) Delete what has been unreferenced for a whole grace period.
    let phase = match &previous {
        None => GcPhase::Started,
        Some(s) if opts.now >= from_unix(s.recorded_at) + opts.grace => GcPhase::Swept,
        Some(_) => GcPhase::Waiting,
    };
    let mut doomed: Vec<(&String, u64)> = Vec::new();
    if let (GcPhase::Swept, Some(s)) = (phase, &previous) {
        let recorded = from_unix(s.recorded_at);
        for k in &s.candidates {
            let Some((k, (size, modified))) = objects.get_key_value(k) else {
                continue; // already gone
            };
            // Rewritten after it was recorded (a late replication copy, a repair): it starts
            // its own grace period as a new candidate.
            if unreferenced.contains(k) && *modified <= recorded {
                doomed.push((k, *size));
            }
        }
    }
    let deleted_bytes: u64 = doomed.iter().map(|(_, s)| s).sum();
    let deleted = doomed.len() as u64;
    if !opts.dry_run && !doomed.is_empty() {
        info!(
            bucket = bucket.display(),
            volume_id = volume_id.0,
            objects = deleted,
            bytes = deleted_bytes,
            "deleting blocks unreferenced for the whole grace period"
        );
        let mut deletes = futures::stream::iter(
            doomed
                .iter()
                .map(|(k, _)| async move { bucket.delete_object(k).await }),
        )
        .buffer_unordered(opts.concurrency.max(1));
        let mut done = 0u64;
        while let Some(r) = deletes.next().await {
            r.map_err(bucket_err)?;
            done += 1;
            if done.is_multiple_of(DELETE_PROGRESS_EVERY) {
                info!(
                    bucket = bucket.display(),
                    deleted = done,
                    of = deleted,
                    "deleting blocks"
                );
            }
        }
    }
    let gone: HashSet<&String> = doomed.iter().map(|(k, _)| *k).collect();

    // (5) Record the candidates, unless the previous ones are still waiting.
    let mut candidates: Vec<String> = unreferenced
        .iter()
        .filter(|k| !gone.contains(*k))
        .map(|k| (*k).clone())
        .collect();
    candidates.sort_unstable();
    let candidates_bytes: u64 = candidates
        .iter()
        .filter_map(|k| objects.get(k))
        .map(|(s, _)| s)
        .sum();
    let next_deletion_at = match (&previous, phase) {
        _ if candidates.is_empty() => None,
        (Some(s), GcPhase::Waiting) => {
            let earliest = from_unix(s.recorded_at) + opts.grace;
            // Only candidates the previous run recorded become deletable then.
            if s.candidates.iter().any(|k| unreferenced.contains(k)) {
                Some(earliest)
            } else {
                Some(earliest + opts.grace)
            }
        }
        _ => Some(from_unix(recorded_at) + opts.grace),
    };
    let candidate_count = candidates.len() as u64;
    if !opts.dry_run && phase != GcPhase::Waiting {
        let state = GcState {
            version: STATE_VERSION,
            recorded_at,
            candidates,
            revision: refs.revision,
        };
        let body = serde_json::to_vec(&state).map_err(|e| GcError::State {
            bucket: bucket.display().to_owned(),
            key: key.clone(),
            detail: format!("cannot encode it: {e}"),
        })?;
        // Delete-then-create: a crash in between loses the state, which only restarts the
        // clock.
        bucket
            .replace_object(&key, Bytes::from(body))
            .await
            .map_err(bucket_err)?;
    }
    let summary = GcSummary {
        volume_id,
        bucket: bucket.display().to_owned(),
        dry_run: opts.dry_run,
        phase,
        revision: refs.revision,
        scanned_objects: objects.len() as u64,
        scanned_bytes,
        referenced: refs.block_ids.len() as u64,
        referenced_missing,
        candidates: candidate_count,
        candidates_bytes,
        deleted,
        deleted_bytes,
        next_deletion_at,
        took: started.elapsed(),
    };
    info!(bucket = bucket.display(), volume_id = volume_id.0, phase = ?summary.phase, deleted, candidates = candidate_count, dry_run = opts.dry_run, "garbage collection done");
    Ok(summary)
}

async fn load_state(bucket: &Bucket, key: &str) -> Result<Loaded, ObjError> {
    let body = match bucket.get_object(key).await {
        Ok(b) => b,
        Err(ObjError::Missing { .. }) => return Ok(Loaded::Absent),
        Err(e) => return Err(e),
    };
    Ok(match serde_json::from_slice::<GcState>(&body) {
        Ok(s) => Loaded::Found(s),
        Err(e) => Loaded::Unreadable(e.to_string()),
    })
}

fn unix_seconds_ceil(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn storage(url: &str) -> Option<StorageConfig> {
        Some(StorageConfig {
            bucket_url: url.into(),
            options: Default::default(),
        })
    }

    #[test]
    fn a_mirror_volume_is_collected_only_in_its_own_bucket() {
        let source = VolumeInfo {
            name: "data".into(),
            id: 3,
            storage: storage("s3://src/blocks"),
            ..Default::default()
        };
        assert_eq!(gc_storage(&source).unwrap().bucket_url, "s3://src/blocks");
        let shared = VolumeInfo {
            name: "data-b".into(),
            source_volume: "data".into(),
            source_storage: storage("s3://src/blocks"),
            ..source.clone()
        };
        let e = gc_storage(&shared).unwrap_err().to_string();
        assert!(e.contains("data-b") && e.contains("source region"), "{e}");
        let own = VolumeInfo {
            storage: storage("s3://mirror/blocks"),
            ..shared
        };
        assert_eq!(gc_storage(&own).unwrap().bucket_url, "s3://mirror/blocks");
        let none = VolumeInfo {
            storage: None,
            ..source
        };
        assert!(gc_storage(&none).is_err());
    }

    #[test]
    fn the_state_object_is_versioned_json() {
        let s = GcState {
            version: 1,
            recorded_at: 5,
            candidates: vec!["v1/00/x".into()],
            revision: 9,
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["version"], 1);
        assert_eq!(j["recorded_at"], 5);
        assert_eq!(j["candidates"][0], "v1/00/x");
        let old: GcState =
            serde_json::from_str(r#"{"version":1,"recorded_at":7,"candidates":[]}"#).unwrap();
        assert_eq!(old.recorded_at, 7);
        assert_eq!(state_key(VolumeId(12)), "_mirrorfs/gc/v12.json");
        assert!(!state_key(VolumeId(1)).starts_with(&block_prefix(VolumeId(1))));
    }

    #[test]
    fn recorded_times_round_up() {
        assert_eq!(unix_seconds_ceil(from_unix(10)), 10);
        assert_eq!(
            unix_seconds_ceil(from_unix(10) + Duration::from_millis(1)),
            11
        );
    }
}
