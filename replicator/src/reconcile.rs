//! Bidirectional reconciliation of two buckets: objects missing on either side are copied from
//! the other. `a` is authoritative (the source bucket): with `check`, an object whose content
//! differs is replaced in `b` from `a`, never the other way round; an object that only `b` has
//! is copied to `a` (a block the source lost is restored from its mirror).

use mirrorfs_objstore::Bucket;

use crate::sync::{SyncError, SyncOptions, SyncSummary, sync};

/// How a reconciliation runs.
#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// Copies in flight at once, per direction.
    pub concurrency: usize,
    /// Compare content of objects on both sides (BLAKE3) and repair `b` from `a`.
    pub check: bool,
    /// Report what would be copied; write nothing.
    pub dry_run: bool,
    /// Most bytes per second read, per direction.
    pub bwlimit: Option<u64>,
    /// Only objects under this key directory, e.g. `v7`.
    pub under: Option<String>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            check: false,
            dry_run: false,
            bwlimit: None,
            under: None,
        }
    }
}

/// Both directions of a reconciliation.
#[derive(Clone, Debug, Default)]
pub struct ReconcileSummary {
    pub a_to_b: SyncSummary,
    pub b_to_a: SyncSummary,
}

impl ReconcileSummary {
    pub fn is_ok(&self) -> bool {
        self.a_to_b.is_ok() && self.b_to_a.is_ok()
    }

    /// Objects copied (or replaced) in either direction.
    pub fn repaired(&self) -> u64 {
        self.a_to_b.copied + self.a_to_b.replaced + self.b_to_a.copied
    }
}

impl std::fmt::Display for ReconcileSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a -> b: {}\nb -> a: {}", self.a_to_b, self.b_to_a)
    }
}

/// Copies what `b` lacks from `a`, then what `a` lacks from `b`.
pub async fn reconcile(
    a: &Bucket,
    b: &Bucket,
    opts: ReconcileOptions,
) -> Result<ReconcileSummary, SyncError> {
    let base = SyncOptions {
        concurrency: opts.concurrency,
        check: opts.check,
        dry_run: opts.dry_run,
        bwlimit: opts.bwlimit,
        under: opts.under,
        ..SyncOptions::default()
    };
    let a_to_b = sync(a, b, base.clone(), ()).await?;
    let reverse = SyncOptions {
        check: false,
        replace_different: false,
        ..base
    };
    let b_to_a = sync(b, a, reverse, ()).await.map_err(|e| match e {
        // Report the buckets in the caller's terms.
        SyncError::Source(e) => SyncError::Destination(e),
        SyncError::Destination(e) => SyncError::Source(e),
        other => other,
    })?;
    Ok(ReconcileSummary { a_to_b, b_to_a })
}
