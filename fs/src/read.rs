//! Reads: a file's extent map (what ReadExtents returned, at one consistent state), the blocks
//! a range needs fetched in parallel through the shared block cache, holes as zeros, and the
//! file's uncommitted writes laid over the result. A read served by a single extent returns a
//! slice of the cached block without copying.
//!
//! Readahead: a handle whose reads follow each other fetches the blocks of the next
//! `readahead_blocks` extents into the cache in the background.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mirrorfs_api::meta::{Extent, ReadExtentsReply};
use mirrorfs_api::{BlockId, Checksum};
use mirrorfs_objstore::BlockInfo;

use crate::cache::BlockCache;
use crate::data::Blocks;
use crate::error::FsError;
use crate::write::Piece;

/// A file's extents and size at one state, sorted by offset and disjoint.
#[derive(Clone, Debug, Default)]
pub struct ExtentMap {
    pub size: u64,
    pub extents: Vec<Extent>,
}

impl ExtentMap {
    pub fn from_reply(r: ReadExtentsReply) -> Self {
        let mut extents = r.extents;
        extents.sort_by_key(|e| e.offset);
        Self {
            size: r.size,
            extents,
        }
    }

    /// Extents overlapping `[start, end)`.
    pub fn overlapping(&self, start: u64, end: u64) -> &[Extent] {
        let first = self
            .extents
            .partition_point(|e| e.offset + e.length <= start);
        let last = self.extents.partition_point(|e| e.offset < end);
        &self.extents[first..last.max(first)]
    }

    /// Up to `n` distinct blocks of the extents that start at or after `from`.
    pub fn blocks_after(&self, from: u64, n: usize) -> Vec<BlockInfo> {
        let i = self
            .extents
            .partition_point(|e| e.offset + e.length <= from);
        let mut out: Vec<BlockInfo> = Vec::new();
        for e in &self.extents[i..] {
            if out.len() >= n {
                break;
            }
            if let Ok(b) = block_info(e)
                && !out.iter().any(|o| o.id == b.id)
            {
                out.push(b);
            }
        }
        out
    }
}

/// The block an extent points into.
pub fn block_info(e: &Extent) -> Result<BlockInfo, FsError> {
    let id = BlockId::parse(&e.block_id)
        .map_err(|err| FsError::Corrupt(format!("extent at offset {}: {err}", e.offset)))?;
    let checksum = Checksum::from_slice(&e.checksum)
        .map_err(|err| FsError::Corrupt(format!("extent at offset {}: {err}", e.offset)))?;
    Ok(BlockInfo {
        id,
        size: e.block_size,
        checksum,
    })
}

/// A block, from the cache or fetched (verified) from the volume's buckets.
pub async fn fetch_block(
    cache: &Arc<BlockCache>,
    blocks: &Blocks,
    b: BlockInfo,
) -> Result<Bytes, FsError> {
    let blocks = blocks.clone();
    let id = b.id.clone();
    cache
        .get_or_fetch(&id, async move { blocks.get(&b).await })
        .await
}

/// The bytes of `[start, end)` (already clipped to the file size) from `map`, with `overlay`
/// applied on top in order.
pub async fn assemble(
    cache: &Arc<BlockCache>,
    blocks: &Blocks,
    map: &ExtentMap,
    start: u64,
    end: u64,
    overlay: &[Piece],
) -> Result<Bytes, FsError> {
    if start >= end {
        return Ok(Bytes::new());
    }
    let extents = map.overlapping(start, end);
    let fetches = extents.iter().map(|e| {
        let info = block_info(e);
        async move { fetch_block(cache, blocks, info?).await }
    });
    let datas = futures::future::try_join_all(fetches).await?;
    // One extent covering the whole range and nothing dirty: a slice of the cached block.
    if overlay.is_empty()
        && let [e] = extents
        && e.offset <= start
        && end <= e.offset + e.length
    {
        let data = &datas[0];
        let s = (e.block_offset + (start - e.offset)) as usize;
        let t = s + (end - start) as usize;
        if t <= data.len() {
            return Ok(data.slice(s..t));
        }
        return Err(FsError::Corrupt(format!(
            "extent at offset {} points past the end of block {}",
            e.offset, e.block_id
        )));
    }
    let mut buf = BytesMut::zeroed((end - start) as usize);
    for (e, data) in extents.iter().zip(&datas) {
        let (a, b) = (e.offset.max(start), (e.offset + e.length).min(end));
        let s = (e.block_offset + (a - e.offset)) as usize;
        let src = data.get(s..s + (b - a) as usize).ok_or_else(|| {
            FsError::Corrupt(format!(
                "extent at offset {} points past the end of block {}",
                e.offset, e.block_id
            ))
        })?;
        buf[(a - start) as usize..(b - start) as usize].copy_from_slice(src);
    }
    for (off, data) in overlay {
        let (a, b) = ((*off).max(start), (off + data.len() as u64).min(end));
        if a < b {
            let s = (a - off) as usize;
            buf[(a - start) as usize..(b - start) as usize]
                .copy_from_slice(&data[s..s + (b - a) as usize]);
        }
    }
    Ok(buf.freeze())
}
