//! Write buffering: the bytes written to a file and not yet committed, cut into block-sized
//! chunks by file offset (sequential and random writes alike). A chunk whose block is fully
//! written is sealed and uploaded at once, in parallel with further writes; the rest is sealed
//! on flush, fsync, release, truncate, or when the client's dirty bytes exceed its budget.
//! Sealed chunks stay readable (reads overlay them, newest last) until their extents are
//! committed, so a reader always sees its own writes.
//!
//! One uploaded block per chunk, holding the chunk's span from its first to its last written
//! byte; each written range of the chunk becomes one extent pointing into that block, so the
//! holes between random writes are never committed over older data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use mirrorfs_api::meta::Extent;
use mirrorfs_objstore::BlockInfo;

use crate::error::FsError;

/// Disjoint, sorted, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < s {
                out.push((a, b));
            } else if a > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            out.push((s, e));
        }
        self.0 = out;
    }

    /// Keeps only what lies below `limit`.
    pub fn clip(&mut self, limit: u64) {
        self.0.retain(|&(a, _)| a < limit);
        if let Some(last) = self.0.last_mut() {
            last.1 = last.1.min(limit);
        }
    }

    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    pub fn span(&self) -> Option<(u64, u64)> {
        Some((self.0.first()?.0, self.0.last()?.1))
    }
}

/// A block-sized window of a file being written.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    /// File offset of the chunk's first byte.
    pub base: u64,
    /// Bytes from `base`; as long as the last written byte.
    pub data: Vec<u8>,
    pub written: RangeSet,
}

pub type Upload = Shared<BoxFuture<'static, Result<BlockInfo, FsError>>>;

/// A chunk handed to the uploader: immutable, readable until committed.
pub struct Sealed {
    pub seq: u64,
    pub base: u64,
    pub data: Bytes,
    pub written: RangeSet,
    /// The upload in progress (replaced by a new attempt after a failure).
    pub upload: Mutex<Upload>,
}

impl Sealed {
    /// The bytes uploaded as the block: from the first to the last written byte.
    pub fn block_bytes(&self) -> Bytes {
        let (a, b) = self.written.span().unwrap_or((0, 0));
        self.data.slice(a as usize..b as usize)
    }

    /// The extents of this chunk once its block is stored as `info`.
    pub fn extents(&self, info: &BlockInfo) -> Vec<Extent> {
        let first = self.written.span().map_or(0, |s| s.0);
        self.written
            .ranges()
            .iter()
            .map(|&(a, b)| Extent {
                offset: self.base + a,
                length: b - a,
                block_id: info.id.as_str().to_owned(),
                block_offset: a - first,
                block_size: info.size,
                checksum: info.checksum.0.to_vec(),
            })
            .collect()
    }
}

/// One piece of dirty data for a read: file offset and bytes.
pub type Piece = (u64, Bytes);

/// The uncommitted writes of one file.
#[derive(Default)]
pub struct Dirty {
    pub open: BTreeMap<u64, Chunk>,
    /// In the order they were sealed (later ones win where they overlap).
    pub sealed: Vec<Arc<Sealed>>,
    next_seq: u64,
    /// The file size as this client sees it; meaningful while `has_data()`.
    pub size: u64,
    /// Bytes held (written ranges of open and sealed chunks).
    pub bytes: u64,
    /// The inode is gone from the metadata (unlinked while open): data stays local.
    pub orphaned: bool,
}

/// What a write did to the buffer.
pub struct Written {
    /// Chunks that became full and must be uploaded.
    pub full: Vec<Chunk>,
    /// Growth of `bytes`.
    pub added: u64,
}

impl Dirty {
    pub fn has_data(&self) -> bool {
        !self.open.is_empty() || !self.sealed.is_empty()
    }

    /// Buffers `data` at `offset`; `committed_size` is the file size before (used when this is
    /// the first dirty data). Returns chunks that became full.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        block_size: u64,
        committed_size: u64,
    ) -> Written {
        if !self.has_data() {
            self.size = committed_size;
        }
        let mut full = Vec::new();
        let mut added = 0;
        let mut pos = 0usize;
        while pos < data.len() {
            let off = offset + pos as u64;
            let index = off / block_size;
            let base = index * block_size;
            let in_block = off - base;
            let n = ((block_size - in_block) as usize).min(data.len() - pos);
            let seq = &mut self.next_seq;
            let chunk = self.open.entry(index).or_insert_with(|| {
                *seq += 1;
                Chunk {
                    seq: *seq,
                    base,
                    data: Vec::new(),
                    written: RangeSet::default(),
                }
            });
            let end = in_block as usize + n;
            if chunk.data.len() < end {
                chunk.data.resize(end, 0);
            }
            chunk.data[in_block as usize..end].copy_from_slice(&data[pos..pos + n]);
            let before: u64 = chunk.written.ranges().iter().map(|(a, b)| b - a).sum();
            chunk.written.insert(in_block, end as u64);
            let after: u64 = chunk.written.ranges().iter().map(|(a, b)| b - a).sum();
            added += after - before;
            if chunk.written.covers(0, block_size)
                && let Some(c) = self.open.remove(&index)
            {
                full.push(c);
            }
            pos += n;
        }
        self.size = self.size.max(offset + data.len() as u64);
        self.bytes += added;
        Written { full, added }
    }

    /// Takes every open chunk for sealing, in sequence order.
    pub fn take_open(&mut self) -> Vec<Chunk> {
        let mut v: Vec<Chunk> = std::mem::take(&mut self.open).into_values().collect();
        v.sort_by_key(|c| c.seq);
        v
    }

    /// Adds a sealed chunk, keeping the sequence order.
    pub fn push_sealed(&mut self, s: Arc<Sealed>) {
        let at = self.sealed.partition_point(|x| x.seq < s.seq);
        self.sealed.insert(at, s);
    }

    /// Drops the sealed chunks with `seq <= upto` (committed); returns the bytes released.
    pub fn drop_committed(&mut self, upto: u64) -> u64 {
        let mut freed = 0;
        self.sealed.retain(|s| {
            let keep = s.seq > upto;
            if !keep {
                freed += s.written.ranges().iter().map(|(a, b)| b - a).sum::<u64>();
            }
            keep
        });
        self.bytes -= freed;
        freed
    }

    /// The dirty bytes over `[start, end)`, oldest first (apply in order).
    pub fn overlay(&self, start: u64, end: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut add = |base: u64, data: &Bytes, written: &RangeSet| {
            for &(a, b) in written.ranges() {
                let (fa, fb) = ((base + a).max(start), (base + b).min(end));
                if fa < fb {
                    let s = (fa - base) as usize;
                    let e = (fb - base) as usize;
                    out.push((fa, data.slice(s..e)));
                }
            }
        };
        for s in &self.sealed {
            add(s.base, &s.data, &s.written);
        }
        for c in self.open.values() {
            if c.base >= end || c.base + c.data.len() as u64 <= start {
                continue;
            }
            // Copies only the part asked for.
            let s = start.saturating_sub(c.base).min(c.data.len() as u64) as usize;
            let e = (end - c.base).min(c.data.len() as u64) as usize;
            let part = Bytes::copy_from_slice(&c.data[s..e]);
            let mut clipped = RangeSet::default();
            for &(a, b) in c.written.ranges() {
                let (a, b) = (a.max(s as u64), b.min(e as u64));
                if a < b {
                    clipped.insert(a - s as u64, b - s as u64);
                }
            }
            add(c.base + s as u64, &part, &clipped);
        }
        out
    }

    /// Forgets dirty data at or past `size` (a truncation) and sets the size.
    pub fn truncate(&mut self, size: u64) {
        for c in self.open.values_mut() {
            let limit = size.saturating_sub(c.base);
            let before: u64 = c.written.ranges().iter().map(|(a, b)| b - a).sum();
            c.written.clip(limit);
            c.data.truncate(limit.min(c.data.len() as u64) as usize);
            let after: u64 = c.written.ranges().iter().map(|(a, b)| b - a).sum();
            self.bytes -= before - after;
        }
        self.open.retain(|_, c| !c.written.is_empty());
        self.size = size;
    }
}

/// Starts uploading `data` with `put`, shareable by every flush that waits for it.
pub fn start_upload<F>(put: F) -> Upload
where
    F: Future<Output = Result<BlockInfo, FsError>> + Send + 'static,
{
    let task = tokio::spawn(put);
    async move {
        match task.await {
            Ok(r) => r,
            Err(e) => Err(FsError::Io(format!("block upload task failed: {e}"))),
        }
    }
    .boxed()
    .shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_clip() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[(10, 40)]);
        r.insert(0, 5);
        r.insert(50, 60);
        assert_eq!(r.ranges(), &[(0, 5), (10, 40), (50, 60)]);
        r.clip(35);
        assert_eq!(r.ranges(), &[(0, 5), (10, 35)]);
        assert!(r.covers(12, 30) && !r.covers(3, 12));
    }

    #[test]
    fn writes_fill_chunks_and_overlay_in_order() {
        let mut d = Dirty::default();
        let w = d.write(2, b"abcdef", 4, 0);
        // [2,4) in block 0, [4,8) fills block 1.
        assert_eq!(w.full.len(), 1);
        assert_eq!(w.full[0].base, 4);
        assert_eq!(d.size, 8);
        let pieces = d.overlay(0, 10);
        assert_eq!(pieces, vec![(2, Bytes::from_static(b"ab"))]);
        d.write(3, b"X", 4, 0);
        assert_eq!(d.overlay(0, 4), vec![(2, Bytes::from_static(b"aX"))]);
        d.truncate(3);
        assert_eq!(d.overlay(0, 4), vec![(2, Bytes::from_static(b"a"))]);
        assert_eq!(d.bytes, 1 + 4);
    }
}
