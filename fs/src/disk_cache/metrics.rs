//! The disk cache's metrics, all named `mirrorfs_block_disk_cache_*` (documented in
//! `docs/METRICS.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of the disk cache. Clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct DiskCacheMetrics {
    /// Block reads served from the disk cache.
    pub hits: Counter,
    /// Block reads the disk cache could not serve (absent, or found corrupt and deleted).
    pub misses: Counter,
    /// Files deleted to stay under the size limit.
    pub evictions: Counter,
    /// Blocks that could not be written to the cache (disk full, permissions).
    pub write_errors: Counter,
    /// Bytes of blocks in the cache.
    pub bytes: Gauge,
}

impl DiskCacheMetrics {
    /// Creates the metrics and registers them under `mirrorfs_block_disk_cache_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("mirrorfs_block_disk_cache");
        r.register(
            "hits",
            "Block reads served from the local disk cache",
            m.hits.clone(),
        );
        r.register(
            "misses",
            "Block reads the local disk cache could not serve (absent, or corrupt and deleted)",
            m.misses.clone(),
        );
        r.register(
            "evictions",
            "Cached block files deleted to stay under the size limit",
            m.evictions.clone(),
        );
        r.register(
            "write_errors",
            "Blocks that could not be written to the local disk cache",
            m.write_errors.clone(),
        );
        r.register(
            "bytes",
            "Bytes of blocks in the local disk cache",
            m.bytes.clone(),
        );
        m
    }
}
