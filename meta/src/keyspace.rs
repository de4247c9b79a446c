//! The two halves of every cluster's keyspace. Keys under [`MIRRORED`] describe the file system
//! and are what a mirror copies byte for byte; keys under [`LOCAL`] belong to one cluster
//! (its id, a mirror's applied revision, replication queues) and never leave it.

/// Prefix of the mirrored keyspace.
pub const MIRRORED: &[u8] = b"m/";
/// Prefix of the cluster-local keyspace.
pub const LOCAL: &[u8] = b"l/";

/// Whether `key` belongs to the mirrored keyspace.
pub fn is_mirrored(key: &[u8]) -> bool {
    key.starts_with(MIRRORED)
}
