//! The layout of the replication queue in a mirror's cluster-local keyspace.
//!
//! | key                                                   | value (`mirrorfs.records.v1`) |
//! |-------------------------------------------------------|------------------------------|
//! | `l/rq/r/<vol><priority u8><not before ms><block id>` | `ReplicationTask`: ready     |
//! | `l/rq/l/<vol><block id>`                              | `ReplicationTask`: leased    |
//! | `l/rq/f/<vol>`                                        | `FullSync` in progress       |
//! | `l/rq/cursor`                                         | `ReplicationCursor`          |
//! | `l/rq/reconciled`                                     | `Reconciled`                 |
//!
//! Ready tasks sort by volume, then priority, then the time before which they must not run
//! (0 except for retries), so a lease takes repairs first and stops scanning at the first retry
//! that is not due yet. A block queued twice at one priority is one key.

use mirrorfs_api::{BlockId, VolumeId};

/// Ready tasks.
pub const READY: &[u8] = b"l/rq/r/";
/// Leased tasks.
pub const LEASED: &[u8] = b"l/rq/l/";
/// Full syncs in progress.
pub const FULL_SYNC: &[u8] = b"l/rq/f/";
/// The enqueuer's position in the local changelog.
pub const CURSOR: &[u8] = b"l/rq/cursor";
/// When the last periodic reconciliation was queued.
pub const RECONCILED: &[u8] = b"l/rq/reconciled";

/// Repairs: a reader found the block missing or corrupt in the mirror bucket.
pub const PRIORITY_REPAIR: u8 = 0;
/// New blocks and full syncs.
pub const PRIORITY_NEW: u8 = 1;
/// Tasks that failed and wait for their retry time.
pub const PRIORITY_RETRY: u8 = 2;

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn ready(vol: VolumeId, priority: u8, not_before_ms: u64, block: &BlockId) -> Vec<u8> {
    join(
        READY,
        &[
            &vol.to_be_bytes(),
            &[priority],
            &not_before_ms.to_be_bytes(),
            block.as_str().as_bytes(),
        ],
    )
}

/// Prefix of every ready task of `vol`.
pub fn ready_volume(vol: VolumeId) -> Vec<u8> {
    join(READY, &[&vol.to_be_bytes()])
}

pub fn leased(vol: VolumeId, block: &BlockId) -> Vec<u8> {
    join(LEASED, &[&vol.to_be_bytes(), block.as_str().as_bytes()])
}

/// Prefix of every leased task of `vol`.
pub fn leased_volume(vol: VolumeId) -> Vec<u8> {
    join(LEASED, &[&vol.to_be_bytes()])
}

pub fn full_sync(vol: VolumeId) -> Vec<u8> {
    join(FULL_SYNC, &[&vol.to_be_bytes()])
}

/// A ready key's parts: volume, priority, not-before time and block id.
pub struct ReadyKey {
    pub vol: VolumeId,
    pub priority: u8,
    pub not_before_ms: u64,
    pub block: BlockId,
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn block_at(rest: &[u8]) -> Option<BlockId> {
    BlockId::parse(std::str::from_utf8(rest).ok()?).ok()
}

pub fn parse_ready(key: &[u8]) -> Option<ReadyKey> {
    let rest = key.strip_prefix(READY)?;
    Some(ReadyKey {
        vol: VolumeId(be_u64(rest)?),
        priority: *rest.get(8)?,
        not_before_ms: be_u64(rest.get(9..)?)?,
        block: block_at(rest.get(17..)?)?,
    })
}

/// A leased key's volume and block id.
pub fn parse_leased(key: &[u8]) -> Option<(VolumeId, BlockId)> {
    let rest = key.strip_prefix(LEASED)?;
    Some((VolumeId(be_u64(rest)?), block_at(rest.get(8..)?)?))
}

/// The volume of a full-sync key.
pub fn parse_full_sync(key: &[u8]) -> Option<VolumeId> {
    let rest = key.strip_prefix(FULL_SYNC)?;
    (rest.len() == 8).then(|| be_u64(rest).map(VolumeId))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_priority_then_time() {
        let b = BlockId::parse("v1/ab/0123").expect("valid");
        let k = ready(VolumeId(7), PRIORITY_RETRY, 99, &b);
        let p = parse_ready(&k).expect("parses");
        assert_eq!(
            (p.vol, p.priority, p.not_before_ms, p.block.as_str()),
            (VolumeId(7), 2, 99, "v1/ab/0123")
        );
        assert!(
            ready(VolumeId(7), PRIORITY_REPAIR, 0, &b) < ready(VolumeId(7), PRIORITY_NEW, 0, &b)
        );
        assert!(
            ready(VolumeId(7), PRIORITY_RETRY, 5, &b) < ready(VolumeId(7), PRIORITY_RETRY, 6, &b)
        );
        assert!(k.starts_with(&ready_volume(VolumeId(7))));
        assert_eq!(
            parse_leased(&leased(VolumeId(3), &b)).map(|(v, b)| (v, b.as_str().to_owned())),
            Some((VolumeId(3), "v1/ab/0123".to_owned()))
        );
        assert_eq!(parse_full_sync(&full_sync(VolumeId(9))), Some(VolumeId(9)));
        assert!(parse_ready(b"l/rq/r/short").is_none());
        assert!(parse_leased(b"l/rq/l/\0\0\0\0\0\0\0\x01../x").is_none());
    }
}
