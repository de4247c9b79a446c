//! What a committed transaction changed in one volume, for clients' caches: the inodes whose
//! attributes or extents changed and the directory entries added, removed or replaced. Derived
//! from the changelog's keys alone, so a mirror (whose changelog carries the applied source
//! transactions) serves it the same way as a source.

use std::collections::BTreeSet;

use mirrorfs_api::VolumeId;
use mirrorfs_api::meta::{DentryChange, VolumeChange};

use super::keys::{DENTRY, EXTENT, INODE, VOLUME};
use crate::engine::{ChangeEntry, Mutation};

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// The rest of `key` after `prefix` and the volume id, if `key` belongs to `vol`.
fn in_volume<'k>(key: &'k [u8], prefix: &[u8], vol: VolumeId) -> Option<&'k [u8]> {
    let rest = key.strip_prefix(prefix)?;
    (be_u64(rest)? == vol.0).then(|| &rest[8..])
}

/// What `entry` changed in `vol`, or `None` if nothing.
pub fn volume_change(vol: VolumeId, entry: &ChangeEntry) -> Option<VolumeChange> {
    let mut inodes = BTreeSet::new();
    let mut entries = BTreeSet::new();
    let mut reset = false;
    for m in &entry.mutations {
        let key = match m {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
            // Ranges: a file's extents (one inode), or a whole volume's records (reset).
            Mutation::DeleteRange { start, .. } => {
                match in_volume(start, EXTENT, vol).and_then(be_u64) {
                    Some(ino) => {
                        inodes.insert(ino);
                    }
                    None if [INODE, DENTRY, EXTENT]
                        .iter()
                        .any(|p| in_volume(start, p, vol).is_some()) =>
                    {
                        reset = true;
                    }
                    None => {}
                }
                continue;
            }
        };
        if let Some(rest) = in_volume(key, INODE, vol).or_else(|| in_volume(key, EXTENT, vol)) {
            if let Some(ino) = be_u64(rest) {
                inodes.insert(ino);
            }
        } else if let Some(rest) = in_volume(key, DENTRY, vol) {
            if let Some(parent) = be_u64(rest) {
                entries.insert((parent, rest[8..].to_vec()));
            }
        } else if in_volume(key, VOLUME, vol).is_some() {
            reset = true;
        }
    }
    (reset || !inodes.is_empty() || !entries.is_empty()).then(|| VolumeChange {
        revision: entry.revision.0,
        inodes: inodes.into_iter().collect(),
        entries: entries
            .into_iter()
            .map(|(parent, name)| DentryChange { parent, name })
            .collect(),
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CommitTime;
    use crate::fs::keys;
    use mirrorfs_api::{Ino, Revision};

    fn entry(mutations: Vec<Mutation>) -> ChangeEntry {
        ChangeEntry {
            revision: Revision(9),
            time: CommitTime(0),
            mutations,
        }
    }

    fn put(key: Vec<u8>) -> Mutation {
        Mutation::Put {
            key,
            value: Vec::new(),
        }
    }

    #[test]
    fn inodes_extents_and_entries_of_the_volume_are_reported() {
        let (v, other) = (VolumeId(3), VolumeId(4));
        let e = entry(vec![
            put(keys::inode(v, Ino(10))),
            put(keys::extent(v, Ino(11), 4096)),
            Mutation::Delete {
                key: keys::dentry(v, Ino(1), b"a.txt"),
            },
            Mutation::DeleteRange {
                start: keys::extent(v, Ino(12), 1),
                end: keys::extent(v, Ino(12), 100),
            },
            put(keys::inode(other, Ino(10))),
            put(keys::usage_base(v)),
        ]);
        let c = volume_change(v, &e).expect("a change");
        assert_eq!(c.revision, 9);
        assert_eq!(c.inodes, vec![10, 11, 12]);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(
            (c.entries[0].parent, c.entries[0].name.as_slice()),
            (1, &b"a.txt"[..])
        );
        assert!(!c.reset);
        assert!(volume_change(VolumeId(5), &e).is_none());
    }

    #[test]
    fn deleting_the_volume_resets() {
        let v = VolumeId(3);
        let mut ms: Vec<Mutation> = keys::volume_prefixes(v)
            .into_iter()
            .map(|p| Mutation::DeleteRange {
                end: crate::engine::prefix_end(&p),
                start: p,
            })
            .collect();
        ms.push(Mutation::Delete {
            key: keys::volume(v),
        });
        assert!(volume_change(v, &entry(ms)).expect("a change").reset);
    }
}
