//! mirrorfs metadata: the engine trait and its engines, file-system metadata on top, and the
//! gRPC meta service that clients and mirrors talk to.

pub mod client;
pub mod digest;
pub mod engine;
pub mod error;
pub mod follower;
pub mod fs;
pub mod http;
pub mod keyspace;
pub mod metrics;
pub mod replication;
pub mod service;

pub use engine::{Engine, EngineError};
pub use error::{MetaError, Result};
pub use fs::FsMeta;
