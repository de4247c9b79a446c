//! The blocks a volume's metadata references, in pages: what garbage collection of a bucket
//! compares the bucket's listing with (`Admin.ListBlocks`, `mirrorfs gc`).
//!
//! A page is one range read over the volume's extents (`m/x/<vol>…`), so pages of one listing
//! may come from different revisions. That is enough for garbage collection: an extent's key
//! only moves forward within its inode when a write splits or trims it (keys are extent
//! *ends*, and the part of a block that stays referenced keeps an end beyond the cursor), so a
//! block referenced during the whole listing is always seen; and the collector deletes a block
//! only when two listings at least a grace period apart both missed it (see
//! `docs/SEMANTICS.md`).
//!
//! On a mirror cluster the name is a mirror volume's, and the extents are those of the source
//! volume it exposes, at the mirror's applied revision. While a bootstrap is rewriting the
//! mirrored keyspace (or before the first one) the keyspace is at no source revision, and a
//! block could be missing from it; pages are refused then with
//! [`MetaError::MirrorUnavailable`].

use std::collections::BTreeSet;

use mirrorfs_api::VolumeId;
use mirrorfs_api::meta::Extent;
use mirrorfs_api::records::VolumeName;

use super::{FsMeta, keys, names};
use crate::engine::prefix_end;
use crate::error::{MetaError, Result};

/// Extents read per page when the caller asks for 0.
pub const BLOCKS_PAGE_DEFAULT: usize = 10_000;
/// Most extents read per page (a page of distinct block ids stays far below the message limit).
pub const BLOCKS_PAGE_MAX: usize = 100_000;
/// Extents per engine range call.
const RANGE_CHUNK: usize = 1000;
/// Length of a cursor: the inode and end offset of the last extent read (two big-endian u64s).
const CURSOR_LEN: usize = 16;

/// The follower's position keys (`follower/position.rs`). Both are persisted, so their names
/// are part of the on-disk format and do not change.
const MIRROR_APPLIED: &[u8] = b"l/mirror/applied";
const MIRROR_BOOTSTRAP: &[u8] = b"l/mirror/bootstrap";

/// One page of [`FsMeta::list_blocks`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockPage {
    /// The volume whose extents were read (the source volume of a mirror volume).
    pub volume_id: VolumeId,
    /// Distinct within the page, in no particular order; later pages may repeat them.
    pub block_ids: Vec<String>,
    /// Where the next page starts; empty when the listing is complete.
    pub next: Vec<u8>,
}

impl FsMeta {
    /// Up to `limit` extents (0: [`BLOCKS_PAGE_DEFAULT`]) of the volume named `volume` after
    /// the cursor `after` (empty: from the start), as the distinct block ids they reference.
    pub async fn list_blocks(&self, volume: &str, after: &[u8], limit: usize) -> Result<BlockPage> {
        let limit = match limit {
            0 => BLOCKS_PAGE_DEFAULT,
            n => n.min(BLOCKS_PAGE_MAX),
        };
        if !after.is_empty() && after.len() != CURSOR_LEN {
            return Err(MetaError::InvalidArgument(format!(
                "block listing cursor of volume {volume:?} is {} bytes, expected {CURSOR_LEN}; \
                 pass back the `next` of the previous page unchanged",
                after.len()
            )));
        }
        self.consistent_mirror(volume).await?;
        let id = self.blocks_volume_id(volume).await?;
        let mut prefix = keys::EXTENT.to_vec();
        prefix.extend_from_slice(&id.to_be_bytes());
        let end = prefix_end(&prefix);
        let mut start = prefix.clone();
        start.extend_from_slice(after);
        if !after.is_empty() {
            // Strictly after the cursor.
            start.push(0);
        }
        let mut ids = BTreeSet::new();
        let mut read = 0usize;
        let mut last: Option<Vec<u8>> = None;
        let mut done = false;
        while read < limit {
            let want = RANGE_CHUNK.min(limit - read);
            let chunk = self.engine.range(&start, &end, want).await?;
            for kv in &chunk {
                let e: Extent = keys::decode(kv)?;
                if !e.block_id.is_empty() {
                    ids.insert(e.block_id);
                }
            }
            read += chunk.len();
            if let Some(kv) = chunk.last() {
                start = kv.key.clone();
                start.push(0);
                last = Some(kv.key.clone());
            }
            if chunk.len() < want {
                done = true;
                break;
            }
        }
        // A bootstrap that started while the page was read may have shown it a half-written
        // keyspace.
        self.consistent_mirror(volume).await?;
        let next = match (done, last) {
            (false, Some(key)) => key[prefix.len()..].to_vec(),
            _ => Vec::new(),
        };
        Ok(BlockPage {
            volume_id: id,
            block_ids: ids.into_iter().collect(),
            next,
        })
    }

    /// The id of the volume whose extents `volume` names: a source volume's own, or on a
    /// mirror cluster the id of the source volume a mirror volume exposes.
    async fn blocks_volume_id(&self, volume: &str) -> Result<VolumeId> {
        if self.is_mirror() {
            return Ok(VolumeId(self.mirror_volume_info(volume).await?.id));
        }
        let no_volume = || MetaError::NoVolume {
            volume: volume.to_owned(),
        };
        if names::check_volume_name(volume).is_err() {
            return Err(no_volume());
        }
        let Some(name_kv) = self.engine.get(&keys::volume_name(volume)).await? else {
            return Err(no_volume());
        };
        let id = VolumeId(keys::decode::<VolumeName>(&name_kv)?.id);
        if self.engine.get(&keys::volume(id)).await?.is_none() {
            return Err(no_volume());
        }
        Ok(id)
    }

    /// On a mirror cluster: fails unless the mirrored keyspace equals the source's at some
    /// revision (bootstrapped, and no bootstrap rewriting it now).
    async fn consistent_mirror(&self, volume: &str) -> Result<()> {
        if !self.is_mirror() {
            return Ok(());
        }
        if self.engine.get(MIRROR_BOOTSTRAP).await?.is_some() {
            return Err(MetaError::MirrorUnavailable(format!(
                "cannot list the blocks of mirror volume {volume:?}: a bootstrap is rewriting \
                 this mirror's metadata, so it matches no source revision; retry when \
                 `mirrorfs status` shows the mirror tailing"
            )));
        }
        if self.engine.get(MIRROR_APPLIED).await?.is_none() {
            return Err(MetaError::MirrorUnavailable(format!(
                "cannot list the blocks of mirror volume {volume:?}: this mirror has not \
                 copied its source yet; retry when `mirrorfs status` shows the mirror tailing"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;
    use std::sync::Arc;

    use mirrorfs_api::Ino;
    use mirrorfs_api::meta::Extent;

    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{Engine, Txn};
    use crate::fs::{NewVolume, Owner, Volume};

    const FILE: Owner = Owner {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };

    fn extent(offset: u64, length: u64, block: &str) -> Extent {
        Extent {
            offset,
            length,
            block_id: block.into(),
            block_offset: 0,
            block_size: length,
            checksum: vec![7; 32],
        }
    }

    async fn volume(fs: &FsMeta, name: &str) -> Volume {
        let (_, token) = fs
            .create_volume(NewVolume {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        fs.authenticate(name, &token).await.unwrap()
    }

    /// Every block of `volume`, paging with `limit`; also the number of pages.
    async fn all(fs: &FsMeta, volume: &str, limit: usize) -> (HashSet<String>, usize) {
        let mut out = HashSet::new();
        let mut after = Vec::new();
        let mut pages = 0;
        loop {
            let page = fs.list_blocks(volume, &after, limit).await.unwrap();
            pages += 1;
            let distinct: HashSet<_> = page.block_ids.iter().collect();
            assert_eq!(distinct.len(), page.block_ids.len(), "duplicates in a page");
            out.extend(page.block_ids);
            if page.next.is_empty() {
                return (out, pages);
            }
            after = page.next;
        }
    }

    #[tokio::test]
    async fn pages_cover_every_referenced_block_of_the_volume_only() {
        let fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        let a = volume(&fs, "a").await;
        let b = volume(&fs, "b").await;
        let mut want = HashSet::new();
        for f in 0..5u64 {
            let ino = fs
                .create(&a, Ino::ROOT, format!("f{f}").as_bytes(), FILE, true)
                .await
                .unwrap()
                .ino;
            // Two extents of one block, then distinct blocks.
            let shared = format!("v{}/00/shared{f}", a.id);
            let mut ext = vec![extent(0, 10, &shared), extent(10, 10, &shared)];
            for k in 2..9 {
                let id = format!("v{}/00/f{f}k{k}", a.id);
                ext.push(extent(k * 10, 10, &id));
                want.insert(id);
            }
            want.insert(shared);
            fs.commit_extents(&a, Ino(ino), ext, 90, None)
                .await
                .unwrap();
        }
        let other = fs
            .create(&b, Ino::ROOT, b"x", FILE, true)
            .await
            .unwrap()
            .ino;
        fs.commit_extents(&b, Ino(other), vec![extent(0, 5, "v2/00/other")], 5, None)
            .await
            .unwrap();
        for limit in [1, 3, 7, 45, 0] {
            let (got, pages) = all(&fs, "a", limit).await;
            assert_eq!(got, want, "limit {limit}");
            if limit == 7 {
                assert!(pages >= 45 / 7, "{pages} pages");
            }
        }
        let (got, _) = all(&fs, "b", 0).await;
        assert_eq!(got, HashSet::from(["v2/00/other".to_string()]));
        let page = fs.list_blocks("a", &[], 0).await.unwrap();
        assert_eq!(page.volume_id, a.id);
        assert!(page.next.is_empty());
    }

    /// Writes between pages (overwrites that split, trim and replace extents, truncations,
    /// unlinks) never hide a block that stays referenced during the whole listing.
    #[tokio::test]
    async fn a_listing_across_writes_sees_every_block_referenced_throughout() {
        use rand::{Rng, SeedableRng};

        let fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        let a = volume(&fs, "a").await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut next = 0u64;
        let mut block = || {
            next += 1;
            format!("v1/00/b{next}")
        };
        let mut files = Vec::new();
        for f in 0..6 {
            let ino = fs
                .create(&a, Ino::ROOT, format!("f{f}").as_bytes(), FILE, true)
                .await
                .unwrap()
                .ino;
            let ext: Vec<Extent> = (0..40).map(|k| extent(k * 10, 10, &block())).collect();
            fs.commit_extents(&a, Ino(ino), ext, 400, None)
                .await
                .unwrap();
            files.push((format!("f{f}"), Ino(ino)));
        }
        for round in 0..20 {
            let before = all(&fs, "a", 0).await.0;
            let mut seen = HashSet::new();
            let mut after = Vec::new();
            loop {
                let page = fs.list_blocks("a", &after, 7).await.unwrap();
                seen.extend(page.block_ids);
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
                // A few writes between pages.
                for _ in 0..rng.random_range(0..4) {
                    let (name, ino) = files[rng.random_range(0..files.len())].clone();
                    match rng.random_range(0..10) {
                        0 if round % 5 == 4 => {
                            let _ = fs.unlink(&a, Ino::ROOT, name.as_bytes()).await;
                        }
                        1 => {
                            let size = rng.random_range(0..400);
                            let _ = fs
                                .setattr(
                                    &a,
                                    ino,
                                    crate::fs::SetAttr {
                                        size: Some(size),
                                        ..Default::default()
                                    },
                                )
                                .await;
                        }
                        _ => {
                            let off = rng.random_range(0..400);
                            let len = rng.random_range(1..60);
                            let _ = fs
                                .commit_extents(&a, ino, vec![extent(off, len, &block())], 0, None)
                                .await;
                        }
                    }
                }
            }
            let end = all(&fs, "a", 0).await.0;
            // Ids are never reused: referenced before and after means referenced throughout.
            for id in before.intersection(&end) {
                assert!(seen.contains(id), "round {round}: {id} was missed");
            }
        }
    }

    #[tokio::test]
    async fn an_unlinked_file_no_longer_references_its_blocks() {
        let fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        let a = volume(&fs, "a").await;
        let ino = fs
            .create(&a, Ino::ROOT, b"f", FILE, true)
            .await
            .unwrap()
            .ino;
        fs.commit_extents(&a, Ino(ino), vec![extent(0, 4, "v1/00/gone")], 4, None)
            .await
            .unwrap();
        assert_eq!(all(&fs, "a", 0).await.0.len(), 1);
        fs.unlink(&a, Ino::ROOT, b"f").await.unwrap();
        assert!(all(&fs, "a", 0).await.0.is_empty());
    }

    #[tokio::test]
    async fn bad_names_and_cursors_are_refused() {
        let fs = FsMeta::open(Arc::new(MemoryEngine::new())).await.unwrap();
        volume(&fs, "a").await;
        for name in ["missing", "../a", ""] {
            let e = fs.list_blocks(name, &[], 0).await.unwrap_err();
            assert!(matches!(e, MetaError::NoVolume { .. }), "{name}: {e}");
        }
        let e = fs.list_blocks("a", b"short", 0).await.unwrap_err();
        assert!(matches!(e, MetaError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[tokio::test]
    async fn a_mirror_that_is_not_at_a_source_revision_refuses() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let fs = FsMeta::open_mirror(engine.clone()).await.unwrap();
        let e = fs.list_blocks("m", &[], 0).await.unwrap_err();
        assert!(matches!(e, MetaError::MirrorUnavailable(_)), "{e}");
        engine
            .txn(Txn::new().put(MIRROR_APPLIED, Vec::new()))
            .await
            .unwrap();
        let e = fs.list_blocks("m", &[], 0).await.unwrap_err();
        assert!(matches!(e, MetaError::NoVolume { .. }), "{e}");
        engine
            .txn(Txn::new().put(MIRROR_BOOTSTRAP, Vec::new()))
            .await
            .unwrap();
        let e = fs.list_blocks("m", &[], 0).await.unwrap_err();
        assert!(e.to_string().contains("bootstrap"), "{e}");
    }
}
