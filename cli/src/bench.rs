//! `mirrorfs bench`: benchmarks that print a comparison measured in the same run.
//!
//! - [`meta`]: metadata operations over gRPC beside the library called directly;
//! - [`mirror`]: mirror lag, apply throughput against source write throughput, and bootstrap.

mod meta;
mod mirror;

pub use self::meta::{MetaBenchArgs, meta};
pub use self::mirror::{MirrorBenchArgs, mirror};
