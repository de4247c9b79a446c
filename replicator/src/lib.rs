//! Replication of blocks between buckets: the workers that drain a mirror cluster's copy queue
//! ([`worker`]), and bucket-level sync and reconciliation.

pub mod gc;
pub mod reconcile;
pub mod repair;
pub mod sync;
pub mod worker;
