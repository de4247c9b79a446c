//! The mirrorfs file-system core: what a mounted volume does, testable without FUSE.
//!
//! - [`core`]: [`FsCore`], every file-system operation, caches and handles;
//! - [`meta`]: the meta service as the core sees it ([`meta::MetaClient`], [`meta::GrpcMeta`]);
//! - [`data`]: the volume's blocks (source bucket, or mirror region reads with fallback);
//! - [`cache`]: block, attribute and entry caches; [`disk_cache`]: the optional local disk
//!   cache of blocks;
//! - [`write`]: write buffering into blocks; [`read`]: extent maps, block assembly, readahead;
//! - [`watch`]: the follower of the volume's change stream that keeps the caches coherent;
//! - [`replication`]: the replication workers a mirror mount runs;
//! - [`error`]: [`FsError`] and its errno;
//! - [`fuse`]: the thin fuser adapter; [`mount`]: the mount lifecycle of `mirrorfs mount`.

pub mod cache;
pub mod core;
pub mod data;
pub mod disk_cache;
pub mod error;
pub mod fuse;
pub mod handles;
pub mod meta;
pub mod mount;
pub mod read;
pub mod replication;
pub mod watch;
pub mod write;

pub use crate::core::{FsConfig, FsCore, Invalidator, SetAttr, StatFs};
pub use crate::data::{BlockOptions, Blocks};
pub use crate::disk_cache::{DiskCache, DiskCacheError, DiskCacheMetrics};
pub use crate::error::FsError;
pub use crate::handles::DirEntry;
pub use crate::meta::{GrpcMeta, MetaClient};
