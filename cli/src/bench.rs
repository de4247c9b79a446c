//! `mirrorfs bench`: benchmarks that print a comparison measured in the same run.
//!
//! - [`meta`]: metadata operations over gRPC beside the library called directly;
//! - [`mirror`]: mirror lag, apply throughput against source write throughput, and bootstrap;
//! - [`replicate`]: block copies into a mirror bucket beside `rclone copy`, fallback reads;
//! - [`fs`]: I/O and metadata work through a mount beside a local directory;
//! - [`csi`]: CSI CreateVolume and NodePublish latency.

pub mod csi;
pub mod fs;
mod meta;
mod mirror;
mod replicate;

pub use self::meta::{MetaBenchArgs, meta};
pub use self::mirror::{MirrorBenchArgs, mirror};
pub use self::replicate::{ReplicateBenchArgs, replicate};
