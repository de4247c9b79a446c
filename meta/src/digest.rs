//! Digests of the mirrored keyspace by section (one kind of record of one volume), computed the
//! same way on a source and on a mirror so the difference check can say *where* two clusters
//! differ, not only that they do.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use mirrorfs_api::meta::{Divergence, SectionDigest};

use crate::engine::{KeyValue, Result};
use crate::fs::keys;
use crate::keyspace::is_mirrored;

/// Record kinds whose keys continue with an 8-byte volume id, and how to name them.
const PER_VOLUME: [(&[u8], &str); 6] = [
    (keys::INODE_COUNTER, "inode counter"),
    (keys::VOLUME, "volume record"),
    (keys::INODE, "inodes"),
    (keys::DENTRY, "directory entries"),
    (keys::EXTENT, "extents"),
    (keys::USAGE, "usage"),
];

/// The section a mirrored key belongs to: its record kind, plus the volume for per-volume kinds.
pub fn section_of(key: &[u8]) -> Vec<u8> {
    for (tag, _) in PER_VOLUME {
        if key.starts_with(tag) && key.len() >= tag.len() + 8 {
            return key[..tag.len() + 8].to_vec();
        }
    }
    for tag in [keys::VOLUME_COUNTER, keys::VOLUME_NAME] {
        if key.starts_with(tag) {
            return tag.to_vec();
        }
    }
    b"m/?".to_vec()
}

/// A section's name for people: "volume 3 inodes", "volume names".
pub fn describe_section(section: &[u8]) -> String {
    for (tag, what) in PER_VOLUME {
        if let Some(Ok(id)) = section.strip_prefix(tag).map(<[u8; 8]>::try_from) {
            return format!("volume {} {what}", u64::from_be_bytes(id));
        }
    }
    match section {
        s if s == keys::VOLUME_COUNTER => "volume id counter".into(),
        s if s == keys::VOLUME_NAME => "volume names".into(),
        s => format!("unrecognised keys {:?}", String::from_utf8_lossy(s)),
    }
}

#[derive(Default)]
struct Acc {
    hasher: blake3::Hasher,
    keys: u64,
}

/// Digests every mirrored pair of `pairs` (which must come in key order) by section.
pub async fn digest<S>(pairs: S) -> Result<Vec<SectionDigest>>
where
    S: Stream<Item = Result<Vec<KeyValue>>> + Unpin,
{
    let mut sections: BTreeMap<Vec<u8>, Acc> = BTreeMap::new();
    let mut pairs = pairs;
    while let Some(chunk) = pairs.next().await {
        for kv in chunk? {
            if !is_mirrored(&kv.key) {
                continue;
            }
            let acc = sections.entry(section_of(&kv.key)).or_default();
            acc.hasher.update(&(kv.key.len() as u64).to_be_bytes());
            acc.hasher.update(&kv.key);
            acc.hasher.update(&(kv.value.len() as u64).to_be_bytes());
            acc.hasher.update(&kv.value);
            acc.keys += 1;
        }
    }
    Ok(sections
        .into_iter()
        .map(|(section, acc)| SectionDigest {
            section,
            hash: acc.hasher.finalize().as_bytes().to_vec(),
            keys: acc.keys,
        })
        .collect())
}

/// Where `source` and `mirror` differ, section by section.
pub fn compare(source: &[SectionDigest], mirror: &[SectionDigest]) -> Vec<Divergence> {
    let index = |d: &[SectionDigest]| -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
        d.iter()
            .map(|s| (s.section.clone(), (s.hash.clone(), s.keys)))
            .collect()
    };
    let (src, mir) = (index(source), index(mirror));
    let mut all: Vec<&Vec<u8>> = src.keys().chain(mir.keys()).collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .filter_map(|section| {
            let detail = match (src.get(section), mir.get(section)) {
                (Some(a), Some(b)) if a == b => return None,
                (Some((_, n)), Some((_, m))) => {
                    format!("contents differ (source {n} keys, mirror {m} keys)")
                }
                (Some((_, n)), None) => format!("missing on the mirror (source has {n} keys)"),
                (None, Some((_, m))) => format!("only on the mirror ({m} keys)"),
                (None, None) => return None,
            };
            Some(Divergence {
                section: describe_section(section),
                detail,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs_api::{Ino, Revision, VolumeId};

    fn kv(key: Vec<u8>, value: &[u8]) -> KeyValue {
        KeyValue {
            key,
            value: value.to_vec(),
            mod_revision: Revision(1),
        }
    }

    #[tokio::test]
    async fn a_changed_record_is_located_by_volume_and_kind() {
        let a = vec![
            kv(keys::inode(VolumeId(3), Ino(1)), b"root"),
            kv(keys::inode(VolumeId(3), Ino(2)), b"file"),
            kv(keys::dentry(VolumeId(3), Ino(1), b"f"), b"2"),
            kv(b"l/cluster".to_vec(), b"local, ignored"),
        ];
        let mut b = a.clone();
        b[1].value = b"FILE".to_vec();
        b[3].value = b"another cluster".to_vec();
        let da = digest(futures::stream::iter([Ok(a)])).await.unwrap();
        let db = digest(futures::stream::iter([Ok(b)])).await.unwrap();
        assert_eq!(da.len(), 2);
        let diff = compare(&da, &db);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(diff[0].section, "volume 3 inodes");
        assert!(compare(&da, &da).is_empty());
        let missing = compare(&da, &db[..1]);
        assert!(
            missing
                .iter()
                .any(|d| d.detail.contains("missing on the mirror"))
        );
    }
}
