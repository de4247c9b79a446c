//! Helpers for tests and benchmarks that need a misbehaving network: a TCP proxy that delays
//! traffic and simulates outages of whatever sits behind it; real etcd clusters on loopback.

pub mod etcd;
pub mod proxy;

pub use etcd::EtcdCluster;
pub use proxy::Proxy;
