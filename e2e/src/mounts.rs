//! The mount table as `/proc/self/mountinfo` shows it, and the sweeper that leaves no mount and
//! no FUSE daemon behind under a test's directory: on drop (also after a panic) it unmounts
//! every mount there lazily, deepest first, then kills by pid the processes still naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};

/// One line of mountinfo.
#[derive(Clone, Debug)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// The path inside the file system that is mounted here (`/` for a whole one; a
    /// subdirectory for a bind mount of it).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`/`rw`, `nosuid`, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Read-only at the mount level (what a bind remount with `MS_RDONLY` sets).
    pub fn mount_ro(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Read-only at the superblock (the file system itself mounted read-only).
    pub fn super_ro(&self) -> bool {
        self.super_options.iter().any(|o| o == "ro")
    }

    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }
}

/// Every mount of this process's mount namespace.
pub fn mountinfo() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines().filter_map(parse_line).collect()
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

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    Some(MountEntry {
        id: l[0].parse().ok()?,
        parent: l[1].parse().ok()?,
        root: unescape(l[3]),
        mount_point: PathBuf::from(unescape(l[4])),
        options: l[5].split(',').map(str::to_owned).collect(),
        fs_type: r[0].to_owned(),
        source: unescape(r[1]),
        super_options: r[2].split(',').map(str::to_owned).collect(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn parses_mountinfo_lines() {
        let m = parse_line(
            "612 30 0:71 /sub\\040dir /tmp/a\\040b/mount ro,nosuid,relatime shared:1 - fuse.mirrorfs mirrorfs:data rw,user_id=0",
        )
        .expect("parsed");
        assert_eq!(m.id, 612);
        assert_eq!(m.parent, 30);
        assert_eq!(m.root, "/sub dir");
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b/mount"));
        assert!(m.mount_ro());
        assert!(!m.super_ro());
        assert!(m.is_fuse());
        assert_eq!(m.source, "mirrorfs:data");
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn this_namespace_has_a_root_mount() {
        assert!(mountinfo().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
