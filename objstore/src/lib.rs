//! The mirrorfs block store: file contents as immutable, checksummed blocks in object storage
//! (a local directory by default; S3-compatible servers; in-memory for tests), over the
//! `object_store` crate.
//!
//! - [`bucket`]: blocks that are never overwritten, verified (size + BLAKE3) on every read, and
//!   copied between buckets only from a verified read;
//! - [`config`]: bucket URLs, options and credentials;
//! - [`region`]: reads in a mirror region (local bucket first, source bucket as fallback,
//!   repairs queued);
//! - [`metrics`]: the `mirrorfs_objstore_*` counters;
//! - [`fault`]: a fault-injecting `ObjectStore` for tests of this and other crates;
//! - [`error`]: the one error type, by what the caller does next.

pub mod bucket;
pub mod config;
pub mod error;
pub mod fault;
pub mod metrics;
pub mod region;

pub use bucket::{BLOCK_SIZE, BlockInfo, Bucket, CopyOutcome, ObjectMeta, checksum, new_block_id};
pub use config::{BucketConfig, Credentials};
pub use error::ObjError;
pub use fault::FaultyStore;
pub use metrics::ObjMetrics;
pub use region::{NoRepair, ReadSource, RegionReader, RepairReason, RepairSink};
