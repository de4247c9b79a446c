//! The difference check: compares the mirror with its source at one source revision S.
//!
//! The source digests its mirrored keyspace at its current revision S. The check then holds the
//! tail at S (it may apply up to S, never beyond, splitting a batch if needed), waits until the
//! mirror has applied exactly S, takes a local engine snapshot, releases the hold, and compares
//! section digests. If the mirror is already past S (a bootstrap jumped over it, or the source
//! moved between its digest and the hold), a new source digest is taken.

use std::sync::Arc;
use std::time::Duration;

use mirrorfs_api::Revision;
use mirrorfs_api::meta::{self as pb, CheckMirrorReply};
use tokio::time::Instant;

use super::Shared;
use super::position::to_timestamp;
use super::source::Source;
use crate::digest;
use crate::engine::{CommitTime, Snapshot};
use crate::error::MetaError;

/// Source digests taken before the check gives up on a mirror that keeps jumping past them.
const ATTEMPTS: usize = 5;

/// Releases the hold when the check ends, however it ends.
struct Hold<'a>(&'a Shared);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.hold.send_replace(None);
    }
}

fn unavailable(msg: String) -> MetaError {
    MetaError::MirrorUnavailable(msg)
}

/// Runs one check, records it in the status and logs what differs.
pub async fn run(shared: &Arc<Shared>) -> Result<CheckMirrorReply, MetaError> {
    let _one = shared.checking.lock().await;
    let reply = compare(shared).await?;
    shared
        .metrics
        .check_divergences
        .set(i64::try_from(reply.divergences.len()).unwrap_or(i64::MAX));
    if reply.equal {
        tracing::info!(
            revision = reply.revision,
            keys = reply.keys_compared,
            "mirror check: equal to the source"
        );
    }
    for d in &reply.divergences {
        tracing::error!(
            revision = reply.revision,
            section = %d.section,
            detail = %d.detail,
            "mirror check: the mirror differs from its source"
        );
    }
    shared.status().last_check = Some(reply.clone());
    Ok(reply)
}

/// Checks every `every`, until the follower stops.
pub async fn periodic(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = run(&shared).await {
            tracing::warn!(error = %e, "periodic mirror check failed; retried at the next interval");
        }
    }
}

async fn compare(shared: &Shared) -> Result<CheckMirrorReply, MetaError> {
    let cfg = &shared.config;
    let source = Source::connect(&cfg.source_url, &cfg.token, cfg.connect_timeout)
        .await
        .map_err(|e| unavailable(format!("cannot check the mirror: {e}")))?;
    for _ in 0..ATTEMPTS {
        let theirs = source_digest(shared, &source).await?;
        let s = Revision(theirs.revision);
        let Some(snapshot) = local_snapshot_at(shared, s).await? else {
            continue;
        };
        let ours = digest::digest(snapshot.chunks).await?;
        let divergences = digest::compare(&theirs.sections, &ours);
        return Ok(CheckMirrorReply {
            revision: s.0,
            checked: Some(to_timestamp(CommitTime::now())),
            equal: divergences.is_empty(),
            divergences,
            keys_compared: theirs.sections.iter().map(|d| d.keys).sum(),
        });
    }
    Err(unavailable(format!(
        "the mirror kept moving past the source's digest revision ({ATTEMPTS} attempts); retry the check"
    )))
}

async fn source_digest(shared: &Shared, source: &Source) -> Result<pb::DigestReply, MetaError> {
    let wait = shared.config.check_wait;
    let mut client = source.client.clone();
    let reply = match tokio::time::timeout(wait, client.digest(pb::DigestRequest {})).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            let e = super::source::classify(&source.url, &s, Revision(0));
            return Err(unavailable(format!(
                "cannot get the source digest for the mirror check: {e}"
            )));
        }
        Err(_) => {
            return Err(unavailable(format!(
                "the source at {} did not answer Digest within {wait:?}",
                source.url
            )));
        }
    };
    let expected = shared.status().source_cluster_id.clone();
    if !expected.is_empty() && expected != reply.cluster_id {
        return Err(unavailable(format!(
            "cannot check the mirror: it follows source cluster {expected} but {} is cluster {}",
            source.url, reply.cluster_id
        )));
    }
    Ok(reply)
}

/// A snapshot of the local engine while the mirror equals the source at `s`, or `None` if the
/// mirror is already past `s`.
async fn local_snapshot_at(shared: &Shared, s: Revision) -> Result<Option<Snapshot>, MetaError> {
    {
        let _gate = shared.gate.lock().await;
        if *shared.applied.borrow() > s {
            return Ok(None);
        }
        shared.hold.send_replace(Some(s));
    }
    let _hold = Hold(shared);
    let deadline = Instant::now() + shared.config.check_wait;
    let too_slow = || {
        let st = shared.status();
        let err = st.last_error();
        unavailable(format!(
            "the mirror did not reach source revision {s} within {:?} (applied {}, state {}{}); retry the check once it has caught up",
            shared.config.check_wait,
            st.applied(),
            st.state.as_str(),
            if err.is_empty() {
                String::new()
            } else {
                format!(", last error: {err}")
            }
        ))
    };
    let mut applied = shared.applied.subscribe();
    loop {
        let reached = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= s))
            .await
            .is_ok();
        if !reached {
            return Err(too_slow());
        }
        let gate = shared.gate.lock().await;
        if *applied.borrow_and_update() > s {
            return Ok(None);
        }
        if !shared.status().rewriting {
            let snapshot = shared.engine.snapshot().await?;
            drop(gate);
            return Ok(Some(snapshot));
        }
        // A bootstrap is rewriting the keyspace; its last transaction changes `applied`.
        drop(gate);
        if tokio::time::timeout_at(deadline, applied.changed())
            .await
            .is_err()
        {
            return Err(too_slow());
        }
    }
}
