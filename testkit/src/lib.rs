//! Helpers for tests and benchmarks that need a misbehaving network: a TCP proxy that delays
//! traffic and simulates outages of whatever sits behind it; real etcd clusters on loopback; an in-process S3 server.

pub mod etcd;
pub mod proxy;
pub mod s3;

pub use etcd::EtcdCluster;
pub use proxy::Proxy;
pub use s3::S3Server;
