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
