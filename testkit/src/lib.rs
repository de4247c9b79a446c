//! Helpers for tests and benchmarks that need a misbehaving network: a TCP proxy that delays
//! traffic and simulates outages of whatever sits behind it.

pub mod proxy;

pub use proxy::Proxy;
