//! File extents: validation of extents sent by clients, and the arithmetic that lays newer
//! extents over older ones.
//!
//! Invariant kept by every writer: the extents of a file never overlap, and each is non-empty,
//! so sorting them by start or by end gives the same order.

use std::collections::BTreeMap;

use mirrorfs_api::meta::Extent;
use mirrorfs_api::{BlockId, Checksum};

use crate::error::{MetaError, Result};

/// Largest file offset (POSIX `off_t` is signed).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Most extents one commit may carry. It bounds the size of the one transaction a commit
/// becomes (a few keys per extent, well under what an engine accepts in one transaction).
pub const MAX_EXTENTS_PER_COMMIT: usize = 1024;

/// End (exclusive) of an extent that passed [`validate`].
pub fn end(e: &Extent) -> u64 {
    e.offset.saturating_add(e.length)
}

/// Checks one extent sent by a client.
pub fn validate(e: &Extent) -> Result<()> {
    let bad = |why: String| {
        MetaError::InvalidArgument(format!(
            "extent at offset {} (length {}) of block {:?}: {why}",
            e.offset,
            e.length,
            e.block_id.chars().take(80).collect::<String>()
        ))
    };
    if e.length == 0 {
        return Err(bad("length must be greater than 0".into()));
    }
    match e.offset.checked_add(e.length) {
        Some(end) if end <= MAX_FILE_SIZE => {}
        _ => {
            return Err(bad(format!(
                "the extent ends beyond the largest file size {MAX_FILE_SIZE}"
            )));
        }
    }
    match e.block_offset.checked_add(e.length) {
        Some(end) if end <= e.block_size => {}
        _ => {
            return Err(bad(format!(
                "block_offset {} + length exceeds the block size {}",
                e.block_offset, e.block_size
            )));
        }
    }
    BlockId::parse(&e.block_id).map_err(|err| bad(err.to_string()))?;
    Checksum::from_slice(&e.checksum).map_err(|err| bad(err.to_string()))?;
    Ok(())
}

/// The part of `e` inside `[start, stop)`, if any.
pub fn clip(e: &Extent, start: u64, stop: u64) -> Option<Extent> {
    let from = e.offset.max(start);
    let to = end(e).min(stop);
    (from < to).then(|| Extent {
        offset: from,
        length: to - from,
        block_offset: e.block_offset + (from - e.offset),
        ..e.clone()
    })
}

/// Lays `newer` (in order: a later one wins over an earlier one) over `older` (non-overlapping)
/// and returns the result in offset order, still non-overlapping. Older extents that are
/// partly covered are trimmed or split.
pub fn overlay(older: Vec<Extent>, newer: &[Extent]) -> Vec<Extent> {
    let mut map: BTreeMap<u64, Extent> = older.into_iter().map(|e| (e.offset, e)).collect();
    for n in newer {
        let (lo, hi) = (n.offset, end(n));
        let hit: Vec<u64> = map
            .range(..hi)
            .rev()
            .take_while(|(_, e)| end(e) > lo)
            .map(|(k, _)| *k)
            .collect();
        for k in hit {
            if let Some(old) = map.remove(&k) {
                for piece in [clip(&old, 0, lo), clip(&old, hi, u64::MAX)]
                    .into_iter()
                    .flatten()
                {
                    map.insert(piece.offset, piece);
                }
            }
        }
        map.insert(n.offset, n.clone());
    }
    map.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, length: u64, block: &str) -> Extent {
        Extent {
            offset,
            length,
            block_id: block.into(),
            block_offset: 0,
            block_size: length,
            checksum: vec![0; 32],
        }
    }

    #[test]
    fn validation_rejects_bad_extents() {
        assert!(validate(&ext(0, 10, "b/1")).is_ok());
        let cases = [
            Extent {
                length: 0,
                ..ext(0, 10, "b")
            },
            Extent {
                block_offset: 5,
                ..ext(0, 10, "b")
            },
            Extent {
                block_offset: u64::MAX,
                ..ext(0, 10, "b")
            },
            Extent {
                offset: u64::MAX - 1,
                ..ext(0, 10, "b")
            },
            ext(MAX_FILE_SIZE, 1, "b"),
            ext(0, 10, "../b"),
            ext(0, 10, ""),
            Extent {
                checksum: vec![1; 31],
                ..ext(0, 10, "b")
            },
        ];
        for c in cases {
            assert!(validate(&c).is_err(), "{c:?} accepted");
        }
    }

    #[test]
    fn overlay_trims_and_splits() {
        let old = vec![ext(0, 100, "a")];
        let got = overlay(old, &[ext(10, 20, "b")]);
        let shape: Vec<_> = got
            .iter()
            .map(|e| (e.offset, e.length, e.block_id.as_str(), e.block_offset))
            .collect();
        assert_eq!(
            shape,
            vec![(0, 10, "a", 0), (10, 20, "b", 0), (30, 70, "a", 30)]
        );
    }

    #[test]
    fn overlay_replaces_several_and_later_wins() {
        let old = vec![ext(0, 10, "a"), ext(10, 10, "b"), ext(20, 10, "c")];
        let got = overlay(old, &[ext(5, 20, "n"), ext(0, 6, "m")]);
        let shape: Vec<_> = got
            .iter()
            .map(|e| (e.offset, e.length, e.block_id.as_str(), e.block_offset))
            .collect();
        assert_eq!(
            shape,
            vec![(0, 6, "m", 0), (6, 19, "n", 1), (25, 5, "c", 5)]
        );
    }

    #[test]
    fn clip_keeps_block_offsets_consistent() {
        let e = Extent {
            block_offset: 100,
            block_size: 1000,
            ..ext(50, 50, "a")
        };
        let c = clip(&e, 60, 70).expect("overlaps");
        assert_eq!((c.offset, c.length, c.block_offset), (60, 10, 110));
        assert!(clip(&e, 100, 200).is_none());
    }
}
