//! The real mounter against the real kernel (root needed; no FUSE): read-only bind mounts of a
//! resolved subdirectory, verified in /proc/self/mountinfo and by a write failing with EROFS;
//! symlinks (to inside and to outside the root), files and missing components refused with the
//! exact component; unmounting twice. Mounts are removed also when an assertion fails.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use mirrorfs_csi::RelPath;
use mirrorfs_csi::mirror::Kind;
use mirrorfs_csi::mounter::linux::LinuxMounter;
use mirrorfs_csi::mounter::{BindError, Health, Mounter};
use mirrorfs_csi::mountinfo;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests make bind mounts and need root (CAP_SYS_ADMIN); run them as root"
    );
}

/// Detaches the mount at a path when dropped, so a failing test leaves nothing mounted.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

fn tree() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = d.path().join("volume");
    std::fs::create_dir_all(root.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("a/b/data.txt"), b"mirror bytes").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.join("f"), b"file").unwrap_or_else(|e| panic!("{e}"));
    symlink("/etc", root.join("out")).unwrap_or_else(|e| panic!("{e}"));
    symlink("a", root.join("in")).unwrap_or_else(|e| panic!("{e}"));
    (d, root)
}

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

async fn top(m: &LinuxMounter, p: &Path) -> Option<mountinfo::MountEntry> {
    let t = m.mount_table().await.unwrap_or_else(|e| panic!("{e}"));
    mountinfo::top_at(&t, p).cloned()
}

#[tokio::test]
async fn bind_is_read_only_and_shows_the_subdirectory() {
    require_root();
    let (d, root) = tree();
    let target = d.path().join("target");
    std::fs::create_dir(&target).unwrap_or_else(|e| panic!("{e}"));
    let m = LinuxMounter::new("/nonexistent".into());
    let _guard = Unmount(target.clone());
    let r = m
        .bind_read_only(
            &root,
            &rel("a/b"),
            &target,
            &["nosuid".into(), "nodev".into()],
        )
        .await;
    assert_eq!(r, Ok(()));
    let e = top(&m, &target)
        .await
        .unwrap_or_else(|| panic!("not mounted"));
    assert!(
        e.read_only() && e.has_option("nosuid") && e.has_option("nodev"),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read(target.join("data.txt")).ok().as_deref(),
        Some(&b"mirror bytes"[..])
    );
    let w = std::fs::write(target.join("new"), b"x");
    assert_eq!(
        w.err().and_then(|e| e.raw_os_error()),
        Some(libc::EROFS),
        "a write through the bind must fail with EROFS"
    );
    assert_eq!(m.health(&target).await, Health::Directory);
    let u = m.usage(&target).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(u.total_bytes > 0);
    assert!(m.unmount(&target).await.is_ok());
    assert!(top(&m, &target).await.is_none());
    assert!(m.unmount(&target).await.is_ok(), "unmounting twice is fine");
}

#[tokio::test]
async fn symlinks_files_and_missing_components_are_refused() {
    require_root();
    let (d, root) = tree();
    let target = d.path().join("target");
    std::fs::create_dir(&target).unwrap_or_else(|e| panic!("{e}"));
    let m = LinuxMounter::new("/nonexistent".into());
    let _guard = Unmount(target.clone());
    let cases = [
        (
            "out",
            BindError::NotDirectory {
                path: "/out".into(),
                kind: Kind::Symlink,
            },
        ),
        (
            "in/b",
            BindError::NotDirectory {
                path: "/in".into(),
                kind: Kind::Symlink,
            },
        ),
        (
            "f",
            BindError::NotDirectory {
                path: "/f".into(),
                kind: Kind::File,
            },
        ),
        (
            "a/missing/deeper",
            BindError::Missing {
                existing_prefix: "/a".into(),
                component: "missing".into(),
            },
        ),
        (
            "nothing",
            BindError::Missing {
                existing_prefix: "/".into(),
                component: "nothing".into(),
            },
        ),
    ];
    for (sub, want) in cases {
        let r = m.bind_read_only(&root, &rel(sub), &target, &[]).await;
        assert_eq!(r, Err(want), "{sub}");
        assert!(top(&m, &target).await.is_none(), "{sub}: nothing mounted");
    }
}

#[tokio::test]
async fn health_tells_missing_from_files() {
    require_root();
    let (_d, root) = tree();
    let m = LinuxMounter::new("/nonexistent".into());
    assert_eq!(m.health(&root.join("nope")).await, Health::Missing);
    assert_eq!(m.health(&root.join("f")).await, Health::NotDirectory);
    assert_eq!(m.make_dir(&root.join("new")).await.ok(), Some(true));
    assert_eq!(m.make_dir(&root.join("new")).await.ok(), Some(false));
    assert!(m.remove_dir(&root.join("new")).await.is_ok());
    assert!(m.remove_dir(&root.join("new")).await.is_ok());
}

#[tokio::test]
async fn a_disk_cache_is_deleted_once_its_mount_process_lets_go() {
    use nix::fcntl::{Flock, FlockArg};
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = d.path().join("cache/0123abcd");
    std::fs::create_dir_all(dir.join("3f")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("3f/3fa9"), b"block").unwrap_or_else(|e| panic!("{e}"));
    let lock = std::fs::File::create(dir.join(".lock")).unwrap_or_else(|e| panic!("{e}"));
    // The lock a live mount holds.
    let held = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, e)| panic!("flock: {e}"));
    let m = std::sync::Arc::new(LinuxMounter::new("/nonexistent/mirrorfs".into()));
    let task = {
        let (m, dir) = (m.clone(), dir.clone());
        tokio::spawn(async move { m.remove_cache_dir(&dir).await })
    };
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(early.is_err(), "deleted while the lock was held");
    assert!(dir.join("3f/3fa9").exists());
    drop(held);
    let r = task.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_ok(), "{r:?}");
    assert!(!dir.exists());
    assert!(
        d.path().join("cache").is_dir(),
        "only the volume's directory goes"
    );
    // Deleting again (a retried unstage) is fine.
    let r = m.remove_cache_dir(&dir).await;
    assert!(r.is_ok(), "{r:?}");
}
