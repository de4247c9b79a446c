//! The mount table as `/proc/self/mountinfo` shows it, and the sweeper that leaves no mount and
//! no FUSE daemon behind under a test's directory: on drop (also after a panic) it unmounts
//! every mount there lazily, deepest first, then kills by pid the processes still naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};

pub use mirrorfs_csi::mountinfo::MountEntry;

/// Every mount of this process's mount namespace.
pub fn mountinfo() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    mirrorfs_csi::mountinfo::parse(&text)
}

/// Mounts whose mount point is exactly `path`, in mount order (the last one is visible).
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Mounts at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// Unmounts (lazily) everything mounted at or under `dir`, deepest first, repeating while
/// mounts remain (stacked mounts come off one by one). Returns what it unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for _ in 0..64 {
        let mut ms = mounts_under(dir);
        if ms.is_empty() {
            break;
        }
        ms.sort_by_key(|m| std::cmp::Reverse((m.mount_point.components().count(), m.id)));
        for m in ms {
            if umount2(&m.mount_point, MntFlags::MNT_DETACH).is_ok() {
                done.push(m.mount_point);
            }
        }
    }
    done
}

/// On drop: unmounts everything under `dir` lazily and kills, by pid, every process with an
/// argument inside `dir` (the FUSE daemons started for it).
pub struct Sweeper {
    dir: PathBuf,
}

impl Sweeper {
    pub fn new(dir: &Path) -> Sweeper {
        Sweeper {
            dir: dir.to_owned(),
        }
    }

    pub fn sweep(&self) {
        unmount_all_under(&self.dir);
        for pid in crate::process::pids_with_arg_under(&self.dir) {
            crate::process::kill_pid(pid, Duration::from_secs(5));
        }
        unmount_all_under(&self.dir);
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_has_a_root_mount() {
        assert!(mountinfo().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
