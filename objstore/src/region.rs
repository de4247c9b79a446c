//! Reads in a mirror region: the local bucket first; a block that is missing there (not yet
//! replicated), fails its checksum, is truncated, or cannot be reached is read from the source
//! bucket instead, verified, and (for a missing or bad copy) queued for a priority copy. When
//! both fail the error names both buckets and why; the FUSE layer maps it to EIO.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{debug, error, instrument, warn};

use crate::bucket::{BlockInfo, Bucket};
use crate::error::ObjError;
use crate::metrics::ObjMetrics;

/// Why a block needs a priority copy into the local bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepairReason {
    /// Not there yet.
    Missing,
    /// There, with the wrong checksum: the copy must replace it (`Bucket::repair_block_from`).
    Corrupt,
    /// There, shorter than recorded: as `Corrupt`.
    Truncated,
}

impl RepairReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RepairReason::Missing => "missing",
            RepairReason::Corrupt => "corrupt",
            RepairReason::Truncated => "truncated",
        }
    }
}

/// Where a repair goes (the replication task queue). Enqueueing must not fail the read that
/// asked for it: implementations log their own failures.
#[async_trait]
pub trait RepairSink: Send + Sync {
    async fn repair(&self, block: &BlockInfo, reason: RepairReason);
}

/// Drops repairs (a mirror that shares the source bucket, or a tool that only reads).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRepair;

#[async_trait]
impl RepairSink for NoRepair {
    async fn repair(&self, _block: &BlockInfo, _reason: RepairReason) {}
}

/// Sends repairs to a channel (tests, or a worker in the same process).
#[async_trait]
impl RepairSink for tokio::sync::mpsc::UnboundedSender<(BlockInfo, RepairReason)> {
    async fn repair(&self, block: &BlockInfo, reason: RepairReason) {
        if self.send((block.clone(), reason)).is_err() {
            warn!(block = %block.id, "repair queue closed; the block stays unrepaired until the next reconciliation");
        }
    }
}

/// Which bucket served a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSource {
    /// The local bucket (or the shared source bucket of a mirror without its own).
    Local,
    /// The source bucket, because the local copy could not serve it.
    Fallback,
}

/// Region-aware block reads for one volume.
#[derive(Clone)]
pub struct RegionReader {
    source: Bucket,
    local: Option<Bucket>,
    repair: Arc<dyn RepairSink>,
    metrics: ObjMetrics,
}

impl RegionReader {
    /// `local: None` means the mirror shares the source bucket: reads go there directly.
    pub fn new(
        source: Bucket,
        local: Option<Bucket>,
        repair: Arc<dyn RepairSink>,
        metrics: ObjMetrics,
    ) -> Self {
        Self {
            source,
            local,
            repair,
            metrics,
        }
    }

    pub fn source(&self) -> &Bucket {
        &self.source
    }

    pub fn local(&self) -> Option<&Bucket> {
        self.local.as_ref()
    }

    /// Reads a whole block, verified. Never returns bytes that fail the block's checksum.
    #[instrument(skip_all, fields(block = %b.id))]
    pub async fn read(&self, b: &BlockInfo) -> Result<(Bytes, ReadSource), ObjError> {
        let Some(local) = &self.local else {
            let data = self
                .source
                .get_block(b)
                .await
                .inspect_err(|e| self.count_bad(e))?;
            self.metrics.local_hits.inc();
            self.metrics.read_bytes("local", data.len() as u64);
            return Ok((data, ReadSource::Local));
        };
        let local_err = match local.get_block(b).await {
            Ok(data) => {
                self.metrics.local_hits.inc();
                self.metrics.read_bytes("local", data.len() as u64);
                return Ok((data, ReadSource::Local));
            }
            Err(e) => e,
        };
        self.count_bad(&local_err);
        let repair = match &local_err {
            ObjError::Missing { .. } => Some(RepairReason::Missing),
            ObjError::Corrupt { .. } => Some(RepairReason::Corrupt),
            ObjError::Truncated { .. } => Some(RepairReason::Truncated),
            _ => None,
        };
        if repair == Some(RepairReason::Missing) {
            debug!("not in the local bucket yet; reading the source bucket");
        } else {
            warn!(error = %local_err, "local copy unusable; reading the source bucket");
        }
        match self.source.get_block(b).await {
            Ok(data) => {
                self.metrics.fallback(reason_label(&local_err));
                self.metrics.read_bytes("source", data.len() as u64);
                if let Some(reason) = repair {
                    self.metrics.repairs_queued.inc();
                    self.repair.repair(b, reason).await;
                }
                Ok((data, ReadSource::Fallback))
            }
            Err(source_err) => {
                self.count_bad(&source_err);
                let e = ObjError::BothFailed {
                    key: b.id.to_string(),
                    local: Box::new(local_err),
                    fallback: Box::new(source_err),
                };
                error!(error = %e, "block read failed");
                Err(e)
            }
        }
    }

    fn count_bad(&self, e: &ObjError) {
        if matches!(e, ObjError::Corrupt { .. } | ObjError::Truncated { .. }) {
            self.metrics.checksum_failures.inc();
        }
    }
}

fn reason_label(e: &ObjError) -> &'static str {
    match e {
        ObjError::Missing { .. } => "missing",
        ObjError::Corrupt { .. } => "corrupt",
        ObjError::Truncated { .. } => "truncated",
        ObjError::Unavailable { .. } => "unavailable",
        ObjError::Denied { .. } => "denied",
        ObjError::Exists { .. }
        | ObjError::Invalid(_)
        | ObjError::Other { .. }
        | ObjError::BothFailed { .. } => "other",
    }
}
