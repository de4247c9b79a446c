//! Every metric the meta service exports, in one place (names are documented in
//! `docs/METRICS.md`).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

/// The meta service's metrics.
pub struct MetaMetrics {
    pub rpc_total: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabel, Histogram>,
    pub revision: Gauge<u64, AtomicU64>,
    pub compacted_revision: Gauge<u64, AtomicU64>,
    pub watchers: Gauge,
}

impl MetaMetrics {
    /// Creates the metrics and registers them under `mirrorfs_meta_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rpc_total: Family::default(),
            rpc_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            revision: Gauge::default(),
            compacted_revision: Gauge::default(),
            watchers: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("mirrorfs_meta");
        r.register(
            "rpc",
            "gRPC calls by method and outcome (ok or error kind)",
            m.rpc_total.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "gRPC call latency by method",
            m.rpc_seconds.clone(),
        );
        r.register("revision", "Latest committed revision", m.revision.clone());
        r.register(
            "compacted_revision",
            "Changelog compacted up to this revision",
            m.compacted_revision.clone(),
        );
        r.register(
            "changelog_watchers",
            "Open changelog streams",
            m.watchers.clone(),
        );
        m
    }

    pub fn observe(&self, method: &'static str, outcome: &'static str, took: Duration) {
        self.rpc_total
            .get_or_create(&RpcLabels { method, outcome })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }
}

/// A mirror follower's metrics.
#[derive(Debug)]
pub struct MirrorMetrics {
    /// The source revision the mirror equals.
    pub applied_revision: Gauge<u64, AtomicU64>,
    /// The latest source revision known.
    pub source_revision: Gauge<u64, AtomicU64>,
    pub lag_revisions: Gauge<u64, AtomicU64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub bootstraps_total: Counter,
    /// 1 while the source answers, 0 while it does not.
    pub source_reachable: Gauge,
    /// Source transactions applied.
    pub applied_transactions_total: Counter,
    /// Source transactions per local transaction.
    pub apply_batch_entries: Histogram,
    /// Sections found different by the last difference check.
    pub check_divergences: Gauge,
    /// The replication queue (`mirrorfs_replication_*`).
    pub replication: ReplicationMetrics,
}

impl MirrorMetrics {
    /// Creates the metrics and registers them under `mirrorfs_mirror_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("mirrorfs_mirror");
        r.register(
            "applied_revision",
            "Source revision the mirror equals",
            m.applied_revision.clone(),
        );
        r.register(
            "source_revision",
            "Latest source revision known to the mirror",
            m.source_revision.clone(),
        );
        r.register(
            "lag_revisions",
            "Source revisions not yet applied",
            m.lag_revisions.clone(),
        );
        r.register(
            "lag_seconds",
            "Age of the oldest source commit not yet applied (0 when caught up)",
            m.lag_seconds.clone(),
        );
        r.register(
            "bootstraps",
            "Bootstraps from a source snapshot",
            m.bootstraps_total.clone(),
        );
        r.register(
            "source_reachable",
            "1 while the source answers, 0 while it is unreachable",
            m.source_reachable.clone(),
        );
        r.register(
            "applied_transactions",
            "Source transactions applied",
            m.applied_transactions_total.clone(),
        );
        r.register(
            "apply_batch_entries",
            "Source transactions applied per local transaction",
            m.apply_batch_entries.clone(),
        );
        r.register(
            "check_divergences",
            "Sections that differed from the source at the last difference check",
            m.check_divergences.clone(),
        );
        m.replication.register(registry);
        m
    }

    /// Metrics that no registry exports (for tests and for followers started without one).
    pub fn unregistered() -> Self {
        Self {
            applied_revision: Gauge::default(),
            source_revision: Gauge::default(),
            lag_revisions: Gauge::default(),
            lag_seconds: Gauge::default(),
            bootstraps_total: Counter::default(),
            source_reachable: Gauge::default(),
            applied_transactions_total: Counter::default(),
            apply_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            check_divergences: Gauge::default(),
            replication: ReplicationMetrics::default(),
        }
    }
}

/// A mirror cluster's replication queue.
#[derive(Clone, Debug, Default)]
pub struct ReplicationMetrics {
    /// Copy tasks queued by the enqueuer (new blocks and full syncs).
    pub enqueued_total: Counter,
    /// Priority copies asked for by readers that fell back to the source bucket.
    pub repairs_total: Counter,
    pub completed_total: Counter,
    pub failed_total: Counter,
    /// Leases that expired (the worker died or stalled) and went back to the queue.
    pub expired_total: Counter,
    pub bytes_copied_total: Counter,
    /// Ready tasks (counted up to 100000).
    pub ready: Gauge,
    pub leased: Gauge,
}

impl ReplicationMetrics {
    /// Registers the metrics under `mirrorfs_replication_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mirrorfs_replication");
        r.register(
            "enqueued",
            "Copy tasks queued for new blocks and full syncs",
            self.enqueued_total.clone(),
        );
        r.register(
            "repairs",
            "Priority copies asked for by readers that fell back to the source bucket",
            self.repairs_total.clone(),
        );
        r.register(
            "completed",
            "Copy tasks acknowledged by workers",
            self.completed_total.clone(),
        );
        r.register(
            "failed",
            "Copy tasks that failed and were queued for a retry",
            self.failed_total.clone(),
        );
        r.register(
            "expired",
            "Leases that expired and went back to the queue",
            self.expired_total.clone(),
        );
        r.register(
            "copied_bytes",
            "Bytes copied into mirror buckets",
            self.bytes_copied_total.clone(),
        );
        r.register(
            "ready_tasks",
            "Tasks waiting for a worker",
            self.ready.clone(),
        );
        r.register(
            "leased_tasks",
            "Tasks leased by workers",
            self.leased.clone(),
        );
    }
}
