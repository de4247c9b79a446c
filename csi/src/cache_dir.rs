//! The disk cache of each staged volume's FUSE mount: the directory `<--cache-root>/<name>`,
//! named after the CSI volume id. A volume is staged (one FUSE mount) at most once per node, so
//! each staged volume has a directory of its own and two volumes never share one (the mount's
//! lock on it would fail the second). The name is a hash of the id: stable across restarts,
//! safe on any file system whatever the id holds, and the same key as the volume's record and
//! mount log in `--state-dir`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The disk cache a volume's FUSE mount is started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCache {
    /// `--cache-dir` of the mount.
    pub dir: PathBuf,
    /// `--cache-size` of the mount, in bytes.
    pub size: u64,
}

/// The directory name of volume `volume_id`'s disk cache under the cache root.
pub fn dir_name(volume_id: &str) -> String {
    crate::state::key(volume_id)
}

/// The disk cache of a volume staged now (none without `--cache-root`).
pub fn for_volume(config: &Config, volume_id: &str) -> Option<DiskCache> {
    config.cache_root.as_ref().map(|root| DiskCache {
        dir: root.join(dir_name(volume_id)),
        size: config.cache_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_safe() {
        let ids = [
            "pv-data",
            "pv-Data",
            "mirrorfs-7c1f0e",
            "a/b/../../etc",
            "..",
            ".",
            "",
            "with space\tand\nnewline",
            "ünïcødé-卷",
            &"x".repeat(4096),
        ];
        let names: Vec<String> = ids.iter().map(|id| dir_name(id)).collect();
        for (id, n) in ids.iter().zip(&names) {
            assert_eq!(&dir_name(id), n, "stable for {id:?}");
            assert_eq!(n.len(), 32, "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{n}"
            );
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // Pinned: a plugin upgrade must find the directories its predecessor used.
        assert_eq!(dir_name("pv-data"), crate::state::key("pv-data"));
        assert_eq!(
            dir_name("pv-data"),
            blake3::hash(b"pv-data").to_hex()[..32].to_owned()
        );
    }
}
