//! Parsing `/proc/self/mountinfo`: the only source the driver trusts for "is this path mounted,
//! by what, read-only or not" (device-number comparisons stack bind mounts on repeated calls).

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// The path inside the mounted file system that is mounted here (a bind's subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, …).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options (`ro` when the file system itself is mounted read-only).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Read-only at the mount level (what a bind remount with `MS_RDONLY` sets).
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
    /// Read-only at the superblock.
    pub fn super_read_only(&self) -> bool {
        self.super_options.iter().any(|o| o == "ro")
    }
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }
    pub fn has_option(&self, o: &str) -> bool {
        self.options.iter().any(|x| x == o)
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
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

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let _dev = l.next()?;
    let root = unescape(l.next()?);
    let mount_point = unescape(l.next()?);
    let options = l.next()?.split(',').map(str::to_owned).collect();
    let mut r = right.split(' ');
    let fs_type = r.next()?.to_owned();
    let source = unescape(r.next().unwrap_or(""));
    let super_options = r
        .next()
        .map(|o| o.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    Some(MountEntry {
        id,
        parent,
        root: root.into(),
        mount_point: mount_point.into(),
        options,
        fs_type,
        source,
        super_options,
    })
}

/// The topmost mount at exactly `path` (the last listed: later mounts stack on earlier ones).
pub fn top_at<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|e| e.mount_point == path)
}

/// How many mounts are stacked at exactly `path`.
pub fn count_at(table: &[MountEntry], path: &Path) -> usize {
    table.iter().filter(|e| e.mount_point == path).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /var/lib/kubelet/plugins/x/globalmount ro,nosuid,nodev,relatime shared:20 - fuse.mirrorfs mirrorfs:data rw,user_id=0,group_id=0
41 22 0:50 /team/a /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv\\040one/mount ro,nosuid,nodev,relatime shared:20 - fuse.mirrorfs mirrorfs:data rw,user_id=0
garbage line
42 22 0:51 / /tmp/t rw - tmpfs tmpfs rw
43 42 0:52 / /tmp/t rw - tmpfs tmpfs ro,size=4k";

    #[test]
    fn parses_fields_escapes_and_options() {
        let t = parse(SAMPLE);
        assert_eq!(t.len(), 5);
        let b = &t[2];
        assert_eq!(b.root, PathBuf::from("/team/a"));
        assert_eq!(
            b.mount_point,
            PathBuf::from("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv one/mount")
        );
        assert!(b.read_only() && b.is_fuse() && b.has_option("nosuid"));
        assert_eq!(b.source, "mirrorfs:data");
        assert!(!t[0].read_only() && !t[0].is_fuse());
        assert!(!b.super_read_only() && b.super_options.iter().any(|o| o == "user_id=0"));
        assert!(t[4].super_read_only() && !t[4].read_only());
    }

    #[test]
    fn finds_the_top_of_stacked_mounts() {
        let t = parse(SAMPLE);
        assert_eq!(top_at(&t, Path::new("/tmp/t")).map(|e| e.id), Some(43));
        assert_eq!(count_at(&t, Path::new("/tmp/t")), 2);
        assert!(top_at(&t, Path::new("/tmp")).is_none());
    }
}
