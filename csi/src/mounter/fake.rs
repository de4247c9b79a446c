//! An in-memory [`Mounter`] for unit tests: a mount table, directories, FUSE mounts showing a
//! tree of a volume, and switches to break a mount or fail the next FUSE start. Every effect is
//! recorded so tests can check what the driver did.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{BindError, Health, Mounter, Usage};
use crate::mirror::Kind;
use crate::mountinfo::MountEntry;
use crate::process::FuseMount;
use crate::relpath::RelPath;

#[derive(Default)]
struct State {
    table: Vec<MountEntry>,
    next_id: u32,
    dirs: BTreeSet<PathBuf>,
    /// volume name → relative path → None (directory) or Some(kind).
    trees: HashMap<String, HashMap<String, Option<Kind>>>,
    /// FUSE mount point → volume name.
    fuse: HashMap<PathBuf, String>,
    broken: BTreeSet<PathBuf>,
    fail_next_fuse: Option<String>,
    fuse_starts: Vec<FuseMount>,
    fuse_missing: bool,
    cache_removals: Vec<PathBuf>,
}

#[derive(Default)]
pub struct FakeMounter {
    st: Mutex<State>,
}

impl FakeMounter {
    pub fn new() -> Self {
        Self::default()
    }
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A directory that exists outside any volume (kubelet's dirs).
    pub fn add_host_dir(&self, p: &Path) {
        self.st().dirs.insert(p.to_owned());
    }
    /// Content of a volume as its FUSE mount shows it.
    pub fn add_volume_dir(&self, volume: &str, path: &str) {
        self.add_volume_entry(volume, path, None);
    }
    pub fn add_volume_entry(&self, volume: &str, path: &str, kind: Option<Kind>) {
        let mut st = self.st();
        let t = st.trees.entry(volume.to_owned()).or_default();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for i in 1..parts.len() {
            t.insert(parts[..i].join("/"), None);
        }
        t.insert(parts.join("/"), kind);
    }
    /// Makes the mount at `p` answer ENOTCONN, as when its FUSE daemon died.
    pub fn break_mount(&self, p: &Path) {
        self.st().broken.insert(p.to_owned());
    }
    pub fn fail_next_fuse(&self, msg: &str) {
        self.st().fail_next_fuse = Some(msg.to_owned());
    }
    pub fn remove_dev_fuse(&self) {
        self.st().fuse_missing = true;
    }
    /// A foreign mount at `p` (something else mounted there).
    pub fn mount_foreign(&self, p: &Path, fs_type: &str) {
        let mut st = self.st();
        st.next_id += 1;
        let e = MountEntry {
            id: st.next_id,
            parent: 1,
            root: "/".into(),
            mount_point: p.to_owned(),
            options: vec!["rw".into()],
            fs_type: fs_type.into(),
            source: "elsewhere".into(),
            super_options: vec!["rw".into()],
        };
        st.table.push(e);
        st.dirs.insert(p.to_owned());
    }
    pub fn fuse_starts(&self) -> Vec<FuseMount> {
        self.st().fuse_starts.clone()
    }
    /// The disk cache directories deleted, in order.
    pub fn cache_removals(&self) -> Vec<PathBuf> {
        self.st().cache_removals.clone()
    }
    pub fn dir_exists(&self, p: &Path) -> bool {
        self.st().dirs.contains(p)
    }
    pub fn table(&self) -> Vec<MountEntry> {
        self.st().table.clone()
    }
}

#[async_trait::async_trait]
impl Mounter for FakeMounter {
    async fn mount_table(&self) -> io::Result<Vec<MountEntry>> {
        Ok(self.st().table.clone())
    }

    async fn health(&self, path: &Path) -> Health {
        let st = self.st();
        if st.broken.iter().any(|b| path.starts_with(b)) {
            return Health::Broken("Transport endpoint is not connected (os error 107)".into());
        }
        if st.dirs.contains(path) {
            Health::Directory
        } else {
            Health::Missing
        }
    }

    async fn make_dir(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.st();
        if let Some(parent) = path.parent()
            && !st.dirs.contains(parent)
            && parent != Path::new("/")
        {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(st.dirs.insert(path.to_owned()))
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        if st.table.iter().any(|e| e.mount_point == path) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        st.dirs.remove(path);
        Ok(())
    }

    async fn remove_cache_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.st();
        if st.fuse_starts.iter().any(|m| {
            m.cache.as_ref().is_some_and(|c| c.dir == dir) && st.fuse.contains_key(&m.mount_point)
        }) {
            // A live mount still holds the directory's lock.
            return Err(io::Error::other("still locked by a mount"));
        }
        st.cache_removals.push(dir.to_owned());
        Ok(())
    }

    async fn mount_fuse(&self, m: &FuseMount) -> Result<(), String> {
        let mut st = self.st();
        st.fuse_starts.push(m.clone());
        if let Some(msg) = st.fail_next_fuse.take() {
            return Err(msg);
        }
        if !st.dirs.contains(&m.mount_point) {
            return Err(format!(
                "mount point {} does not exist",
                m.mount_point.display()
            ));
        }
        st.next_id += 1;
        let e = MountEntry {
            id: st.next_id,
            parent: 1,
            root: "/".into(),
            mount_point: m.mount_point.clone(),
            options: vec!["ro".into(), "nosuid".into(), "nodev".into()],
            fs_type: "fuse.mirrorfs".into(),
            source: format!("mirrorfs:{}", m.volume),
            super_options: vec!["rw".into()],
        };
        st.table.push(e);
        st.broken.remove(&m.mount_point);
        st.fuse.insert(m.mount_point.clone(), m.volume.clone());
        Ok(())
    }

    async fn unmount(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        if let Some(i) = st.table.iter().rposition(|e| e.mount_point == path) {
            st.table.remove(i);
            if !st.table.iter().any(|e| e.mount_point == path) {
                st.broken.remove(path);
                st.fuse.remove(path);
            }
        }
        Ok(())
    }

    async fn bind_read_only(
        &self,
        root: &Path,
        subdir: &RelPath,
        target: &Path,
        flags: &[String],
    ) -> Result<(), BindError> {
        let mut st = self.st();
        if st.broken.contains(root) {
            return Err(BindError::Os(format!(
                "{}: Transport endpoint is not connected (os error 107)",
                root.display()
            )));
        }
        let volume = st
            .fuse
            .get(root)
            .cloned()
            .ok_or_else(|| BindError::Os(format!("{} is not a FUSE mount", root.display())))?;
        let empty = HashMap::new();
        let tree = st.trees.get(&volume).unwrap_or(&empty);
        let mut prefix = String::new();
        for c in subdir.components() {
            let next = if prefix.is_empty() {
                c.to_owned()
            } else {
                format!("{prefix}/{c}")
            };
            match tree.get(&next) {
                None => {
                    return Err(BindError::Missing {
                        existing_prefix: format!("/{prefix}"),
                        component: c.to_owned(),
                    });
                }
                Some(Some(kind)) => {
                    return Err(BindError::NotDirectory {
                        path: format!("/{next}"),
                        kind: *kind,
                    });
                }
                Some(None) => prefix = next,
            }
        }
        if !st.dirs.contains(target) {
            return Err(BindError::Os(format!(
                "{} does not exist",
                target.display()
            )));
        }
        let mut options = vec!["ro".to_owned()];
        options.extend(flags.iter().filter(|f| *f != "ro").cloned());
        st.next_id += 1;
        let e = MountEntry {
            id: st.next_id,
            parent: 1,
            root: format!("/{}", subdir.as_str()).into(),
            mount_point: target.to_owned(),
            options,
            fs_type: "fuse.mirrorfs".into(),
            source: format!("mirrorfs:{volume}"),
            super_options: vec!["rw".into()],
        };
        st.table.push(e);
        Ok(())
    }

    async fn remount_read_only(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        let e = st
            .table
            .iter_mut()
            .rev()
            .find(|e| e.mount_point == path)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        e.options.retain(|o| o != "rw");
        if !e.options.iter().any(|o| o == "ro") {
            e.options.insert(0, "ro".into());
        }
        Ok(())
    }

    async fn usage(&self, path: &Path) -> io::Result<Usage> {
        if self.st().broken.contains(path) {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        Ok(Usage {
            total_bytes: 1 << 30,
            available_bytes: 0,
            used_bytes: 1 << 20,
            total_inodes: 1000,
            free_inodes: 0,
            used_inodes: 10,
        })
    }

    fn check_fuse(&self) -> Result<(), String> {
        if self.st().fuse_missing {
            Err(
                "/dev/fuse does not exist: run the node plugin privileged with /dev/fuse available"
                    .into(),
            )
        } else {
            Ok(())
        }
    }
}
