//! Every metric of the block store, in one place (documented in `docs/METRICS.md`), all
//! named `mirrorfs_objstore_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// Counters of region-aware reads. Clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct ObjMetrics {
    /// Blocks read from the local bucket (or the shared bucket of a mirror without its own).
    pub local_hits: Counter,
    /// Reads that went to the source bucket, by why the local read did not serve them
    /// (`missing`, `corrupt`, `truncated`, `unavailable`, `denied`, `other`).
    pub fallbacks: Family<ReasonLabel, Counter>,
    /// Priority copies asked for after a missing or bad local copy.
    pub repairs_queued: Counter,
    /// Bytes returned to readers, by bucket (`local` or `source`).
    pub bytes_read: Family<SourceLabel, Counter>,
    /// Copies that failed verification (wrong checksum or size), in either bucket.
    pub checksum_failures: Counter,
}

impl ObjMetrics {
    /// Creates the counters and registers them under `mirrorfs_objstore_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("mirrorfs_objstore");
        r.register(
            "local_hits",
            "Blocks read from the local bucket",
            m.local_hits.clone(),
        );
        r.register(
            "fallbacks",
            "Block reads served by the source bucket, by reason",
            m.fallbacks.clone(),
        );
        r.register(
            "repairs_queued",
            "Priority copies queued after a missing or bad local copy",
            m.repairs_queued.clone(),
        );
        r.register(
            "bytes_read",
            "Block bytes returned to readers, by bucket (local or source)",
            m.bytes_read.clone(),
        );
        r.register(
            "checksum_failures",
            "Block copies that failed size or checksum verification",
            m.checksum_failures.clone(),
        );
        m
    }

    pub fn fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn read_bytes(&self, source: &'static str, n: u64) {
        self.bytes_read
            .get_or_create(&SourceLabel { source })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed() {
        let mut reg = Registry::default();
        let m = ObjMetrics::register(&mut reg);
        m.local_hits.inc();
        m.fallback("missing");
        m.read_bytes("local", 10);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).ok();
        for name in [
            "mirrorfs_objstore_local_hits_total 1",
            "mirrorfs_objstore_fallbacks_total{reason=\"missing\"} 1",
            "mirrorfs_objstore_bytes_read_total{source=\"local\"} 10",
            "mirrorfs_objstore_repairs_queued_total 0",
            "mirrorfs_objstore_checksum_failures_total 0",
        ] {
            assert!(out.contains(name), "{name} not in\n{out}");
        }
    }
}
