//! The layout of the file-system keyspace and the codec of its records.
//!
//! Keys are binary: a short ASCII prefix, then big-endian `u64` ids, then raw name bytes, so that
//! a range scan lists a directory in name order and a file's extents in offset order. Everything
//! that describes the file system lives under `m/` (the mirrored keyspace, copied byte for byte
//! by mirrors); cluster-local records live under `l/` and never leave the cluster.
//!
//! | key                                      | value (`mirrorfs.records.v1`)             |
//! |------------------------------------------|-------------------------------------------|
//! | `l/cluster`                              | `ClusterInfo`                             |
//! | `m/c/v`                                  | `Counter`: next volume id                 |
//! | `m/v/<vol>`                              | `Volume`                                  |
//! | `m/vn/<name>`                            | `VolumeName`: name → volume id            |
//! | `m/c/i/<vol>`                            | `Counter`: next unreserved inode number   |
//! | `m/i/<vol><ino>`                         | `Inode`                                   |
//! | `m/d/<vol><parent><name>`                | `Dentry`                                  |
//! | `m/x/<vol><ino><end>`                    | `mirrorfs.meta.v1.Extent`                 |
//! | `m/u/<vol>\x00`                          | `Usage`: folded usage                     |
//! | `m/u/<vol>\x01<instance><seq>`           | `UsageDelta`: not yet folded              |
//!
//! Extents are keyed by their *end* offset (exclusive), not their start: extents of a file never
//! overlap, so ends sort like starts, and the extents overlapping `[a, b)` are exactly those
//! from key `end = a + 1` on whose start is below `b` — one forward scan, no reverse seek.

use mirrorfs_api::{Ino, VolumeId};
use prost::Message;

use crate::engine::KeyValue;
use crate::error::MetaError;

pub use crate::keyspace::{LOCAL, MIRRORED};

/// The cluster record (local: a mirror has its own cluster id).
pub const CLUSTER: &[u8] = b"l/cluster";
/// The counter of volume ids.
pub const VOLUME_COUNTER: &[u8] = b"m/c/v";
/// Per-volume inode counters.
pub const INODE_COUNTER: &[u8] = b"m/c/i/";
/// Volume records, by id.
pub const VOLUME: &[u8] = b"m/v/";
/// Volume name index.
pub const VOLUME_NAME: &[u8] = b"m/vn/";
/// Inodes.
pub const INODE: &[u8] = b"m/i/";
/// Directory entries.
pub const DENTRY: &[u8] = b"m/d/";
/// File extents.
pub const EXTENT: &[u8] = b"m/x/";
/// Usage records and deltas.
pub const USAGE: &[u8] = b"m/u/";

const USAGE_BASE_TAG: u8 = 0;
const USAGE_DELTA_TAG: u8 = 1;

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn volume(vol: VolumeId) -> Vec<u8> {
    join(VOLUME, &[&vol.to_be_bytes()])
}

pub fn volume_name(name: &str) -> Vec<u8> {
    join(VOLUME_NAME, &[name.as_bytes()])
}

pub fn inode_counter(vol: VolumeId) -> Vec<u8> {
    join(INODE_COUNTER, &[&vol.to_be_bytes()])
}

pub fn inode(vol: VolumeId, ino: Ino) -> Vec<u8> {
    join(INODE, &[&vol.to_be_bytes(), &ino.to_be_bytes()])
}

pub fn dentry(vol: VolumeId, parent: Ino, name: &[u8]) -> Vec<u8> {
    join(DENTRY, &[&vol.to_be_bytes(), &parent.to_be_bytes(), name])
}

/// Prefix of every entry of directory `parent`.
pub fn dir(vol: VolumeId, parent: Ino) -> Vec<u8> {
    dentry(vol, parent, b"")
}

/// The entry name of a key under [`dir`].
pub fn dentry_name(key: &[u8]) -> &[u8] {
    key.get(DENTRY.len() + 16..).unwrap_or_default()
}

/// The extent of `ino` that ends (exclusive) at `end`.
pub fn extent(vol: VolumeId, ino: Ino, end: u64) -> Vec<u8> {
    join(
        EXTENT,
        &[&vol.to_be_bytes(), &ino.to_be_bytes(), &end.to_be_bytes()],
    )
}

/// Prefix of every extent of `ino`.
pub fn extents(vol: VolumeId, ino: Ino) -> Vec<u8> {
    join(EXTENT, &[&vol.to_be_bytes(), &ino.to_be_bytes()])
}

/// Prefix of the usage record and every pending usage delta of `vol`.
pub fn usage(vol: VolumeId) -> Vec<u8> {
    join(USAGE, &[&vol.to_be_bytes()])
}

pub fn usage_base(vol: VolumeId) -> Vec<u8> {
    join(USAGE, &[&vol.to_be_bytes(), &[USAGE_BASE_TAG]])
}

/// A usage delta: unique per (`instance`, `seq`), never rewritten, deleted when folded.
pub fn usage_delta(vol: VolumeId, instance: &[u8; 8], seq: u64) -> Vec<u8> {
    join(
        USAGE,
        &[
            &vol.to_be_bytes(),
            &[USAGE_DELTA_TAG],
            instance,
            &seq.to_be_bytes(),
        ],
    )
}

/// Whether a key under [`usage`] is the folded record (and not a delta).
pub fn is_usage_base(key: &[u8]) -> bool {
    key.len() == USAGE.len() + 9 && key.last() == Some(&USAGE_BASE_TAG)
}

/// Every per-volume prefix (the volume record and name index excluded).
pub fn volume_prefixes(vol: VolumeId) -> [Vec<u8>; 5] {
    let v = vol.to_be_bytes();
    [
        join(INODE, &[&v]),
        join(DENTRY, &[&v]),
        join(EXTENT, &[&v]),
        join(USAGE, &[&v]),
        inode_counter(vol),
    ]
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn escaped(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// A printable form of a key, for error messages: `m/i/vol=3/ino=17`.
pub fn describe(key: &[u8]) -> String {
    let ids = |prefix: &[u8], names: &[&str]| -> Option<String> {
        let mut rest = key.strip_prefix(prefix)?;
        let mut out = escaped(prefix);
        for (i, n) in names.iter().enumerate() {
            let v = be_u64(rest)?;
            rest = &rest[8..];
            if i > 0 {
                out.push('/');
            }
            out.push_str(&format!("{n}={v}"));
        }
        if !rest.is_empty() {
            out.push_str(&format!("/{}", escaped(rest)));
        }
        Some(out)
    };
    let described = if key.starts_with(VOLUME_NAME) || key == VOLUME_COUNTER || key == CLUSTER {
        None
    } else if key.starts_with(INODE_COUNTER) {
        ids(INODE_COUNTER, &["vol"])
    } else if key.starts_with(VOLUME) {
        ids(VOLUME, &["vol"])
    } else if key.starts_with(INODE) {
        ids(INODE, &["vol", "ino"])
    } else if key.starts_with(DENTRY) {
        ids(DENTRY, &["vol", "parent"])
    } else if key.starts_with(EXTENT) {
        ids(EXTENT, &["vol", "ino", "end"])
    } else if key.starts_with(USAGE) {
        ids(USAGE, &["vol"])
    } else {
        None
    };
    described.unwrap_or_else(|| escaped(key))
}

/// The error for a damaged record under `key`.
pub fn corrupt(key: &[u8], detail: impl Into<String>) -> MetaError {
    MetaError::CorruptRecord {
        key: describe(key),
        detail: detail.into(),
    }
}

/// Decodes the record stored in `kv`; a damaged record is [`MetaError::CorruptRecord`].
pub fn decode<M: Message + Default>(kv: &KeyValue) -> Result<M, MetaError> {
    M::decode(kv.value.as_slice()).map_err(|e| corrupt(&kv.key, format!("undecodable: {e}")))
}

pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_system_key_is_mirrored_and_the_cluster_record_is_not() {
        let (v, i) = (VolumeId(3), Ino(17));
        for k in [
            volume(v),
            volume_name("data"),
            inode_counter(v),
            inode(v, i),
            dentry(v, i, b"x"),
            extent(v, i, 5),
            usage_base(v),
            usage_delta(v, &[7; 8], 9),
            VOLUME_COUNTER.to_vec(),
        ] {
            assert!(k.starts_with(MIRRORED), "{}", describe(&k));
        }
        assert!(CLUSTER.starts_with(LOCAL));
    }

    #[test]
    fn directory_entries_sort_by_name_and_extents_by_offset() {
        let v = VolumeId(1);
        assert!(dentry(v, Ino(2), b"a") < dentry(v, Ino(2), b"ab"));
        assert!(dentry(v, Ino(2), b"ab") < dentry(v, Ino(2), b"b"));
        assert!(dentry(v, Ino(2), b"\xff") < dentry(v, Ino(3), b""));
        assert!(extent(v, Ino(2), 255) < extent(v, Ino(2), 256));
        assert_eq!(dentry_name(&dentry(v, Ino(2), b"n\xffm")), b"n\xffm");
    }

    #[test]
    fn volume_prefixes_do_not_overlap_other_volumes() {
        for p in volume_prefixes(VolumeId(1)) {
            for k in [
                inode(VolumeId(2), Ino(1)),
                dentry(VolumeId(2), Ino(1), b"a"),
                usage_base(VolumeId(2)),
                inode_counter(VolumeId(2)),
                volume(VolumeId(1)),
            ] {
                assert!(
                    !k.starts_with(&p),
                    "{} under {}",
                    describe(&k),
                    describe(&p)
                );
            }
        }
        assert!(!volume_name("x").starts_with(VOLUME));
    }

    #[test]
    fn usage_keys_are_told_apart() {
        let v = VolumeId(4);
        assert!(is_usage_base(&usage_base(v)));
        assert!(!is_usage_base(&usage_delta(v, &[0; 8], 0)));
        assert!(usage_base(v) < usage_delta(v, &[0; 8], 0));
    }

    #[test]
    fn keys_are_described_readably() {
        assert_eq!(describe(&inode(VolumeId(3), Ino(17))), "m/i/vol=3/ino=17");
        assert_eq!(
            describe(&dentry(VolumeId(3), Ino(1), b"a\x00")),
            "m/d/vol=3/parent=1/a\\x00"
        );
        assert_eq!(describe(&volume_name("data")), "m/vn/data");
        assert_eq!(describe(b"m/i/\x01"), "m/i/\\x01");
    }
}
