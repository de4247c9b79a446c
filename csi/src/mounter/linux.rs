//! The real [`Mounter`]: mount(2)/umount2(2) through nix, `openat2` with `RESOLVE_NO_SYMLINKS`,
//! `RESOLVE_BENEATH`, `RESOLVE_NO_MAGICLINKS` and `RESOLVE_NO_XDEV` one component at a time (so
//! a symlink anywhere on the path is refused and the first missing component is known), and the
//! bind taken from the resolved file descriptor (`/proc/self/fd/N`), so nothing can swap the path
//! between the check and the mount. Blocking calls run on the blocking pool with a deadline.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use super::{BindError, Health, Mounter, Usage};
use crate::mirror::Kind;
use crate::mountinfo::{self, MountEntry};
use crate::process::{self, FuseMount};
use crate::relpath::RelPath;

/// How long a `stat` of a possibly hung FUSE mount may take.
const STAT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long deleting a disk cache waits for the exiting mount process to release its lock.
const CACHE_RELEASE_WAIT: Duration = Duration::from_secs(20);
/// How long deleting one disk cache directory may take.
const CACHE_REMOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// The lock file a mount holds in its disk cache directory.
const CACHE_LOCK_FILE: &str = ".lock";

/// Deletes `dir` under its lock: `Ok(false)` while a mount process still holds the lock.
fn remove_unlocked_cache_dir(dir: &Path) -> io::Result<bool> {
    let _held = match std::fs::File::open(dir.join(CACHE_LOCK_FILE)) {
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, e)) => return Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(true),
    }
}

pub struct LinuxMounter {
    binary: PathBuf,
}

impl LinuxMounter {
    /// `binary`: the `mirrorfs` executable that runs FUSE mounts.
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    timeout: Duration,
) -> Option<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn ms_flags(flags: &[String]) -> MsFlags {
    let mut f = MsFlags::empty();
    for o in flags {
        f |= match o.as_str() {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    f
}

/// Opens `subdir` under `root` one component at a time, never following symlinks or leaving
/// the mount; returns an `O_PATH` descriptor of the directory.
fn resolve(root: &Path, subdir: &RelPath) -> Result<OwnedFd, BindError> {
    let os = |what: &str, e: Errno| BindError::Os(format!("{what}: {}", e.desc()));
    let mut cur = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| os(&format!("opening {}", root.display()), e))?;
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            )
    };
    let mut prefix = String::new();
    for c in subdir.components() {
        let here = format!("{prefix}/{c}");
        match openat2(&cur, c, how()) {
            Ok(fd) => cur = fd,
            Err(Errno::ENOENT) => {
                return Err(BindError::Missing {
                    existing_prefix: if prefix.is_empty() {
                        "/".into()
                    } else {
                        prefix
                    },
                    component: c.to_owned(),
                });
            }
            Err(Errno::ELOOP) => {
                return Err(BindError::NotDirectory {
                    path: here,
                    kind: Kind::Symlink,
                });
            }
            Err(Errno::ENOTDIR) => {
                let kind = match nix::sys::stat::fstatat(
                    &cur,
                    c,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Kind::File,
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Kind::Symlink,
                    _ => Kind::Other,
                };
                return Err(BindError::NotDirectory { path: here, kind });
            }
            Err(Errno::EXDEV) => {
                return Err(BindError::Os(format!(
                    "{here} crosses into another mount inside the volume; refusing"
                )));
            }
            Err(Errno::ENOSYS) => {
                return Err(BindError::Os(
                    "openat2 is not available: the node needs Linux 5.6 or later".into(),
                ));
            }
            Err(e) => return Err(os(&format!("resolving {here}"), e)),
        }
        prefix = here;
    }
    Ok(cur)
}

fn bind(root: &Path, subdir: &RelPath, target: &Path, flags: &[String]) -> Result<(), BindError> {
    let fd = resolve(root, subdir)?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        BindError::Os(format!(
            "bind mount of {}{} at {}: {}",
            root.display(),
            subdir.display_abs(),
            target.display(),
            e.desc()
        ))
    })?;
    drop(fd);
    // MS_RDONLY on the first MS_BIND is ignored by the kernel: a second, remounting call is
    // what makes the bind read-only.
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | ms_flags(flags);
    if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(BindError::Os(format!(
            "read-only remount of {}: {}",
            target.display(),
            e.desc()
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Mounter for LinuxMounter {
    async fn mount_table(&self) -> io::Result<Vec<MountEntry>> {
        let text = tokio::fs::read_to_string("/proc/self/mountinfo").await?;
        Ok(mountinfo::parse(&text))
    }

    async fn health(&self, path: &Path) -> Health {
        let p = path.to_owned();
        // statfs first: it always reaches a FUSE connection, while a stat may be answered from
        // the kernel's attribute cache long after the daemon died.
        let r = blocking(
            move || match nix::sys::statvfs::statvfs(&p) {
                Err(Errno::ENOENT) => Ok(None),
                Err(e) => Err(io_err(e)),
                Ok(_) => std::fs::metadata(&p).map(Some),
            },
            STAT_TIMEOUT,
        )
        .await;
        match r {
            None => Health::Broken(format!("statfs did not answer within {STAT_TIMEOUT:?}")),
            Some(Ok(Some(m))) if m.is_dir() => Health::Directory,
            Some(Ok(Some(_))) => Health::NotDirectory,
            Some(Ok(None)) => Health::Missing,
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Health::Missing,
            Some(Err(e)) => Health::Broken(e.to_string()),
        }
    }

    async fn make_dir(&self, path: &Path) -> io::Result<bool> {
        match tokio::fs::create_dir(path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        match tokio::fs::remove_dir(path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    async fn remove_cache_dir(&self, dir: &Path) -> io::Result<()> {
        let deadline = Instant::now() + CACHE_RELEASE_WAIT;
        loop {
            let d = dir.to_owned();
            let removed = blocking(move || remove_unlocked_cache_dir(&d), CACHE_REMOVE_TIMEOUT)
                .await
                .unwrap_or_else(|| Err(io::Error::other("deleting did not finish in time")))?;
            if removed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "still locked after {CACHE_RELEASE_WAIT:?} by a mirrorfs mount process that has not exited"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn mount_fuse(&self, m: &FuseMount) -> Result<(), String> {
        process::run(&self.binary, m, process::MOUNT_TIMEOUT).await
    }

    async fn unmount(&self, path: &Path) -> io::Result<()> {
        let p = path.to_owned();
        let r = blocking(
            move || match umount2(&p, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
                // Busy, or a dead FUSE connection: detach now, the kernel finishes later.
                Err(_) => match umount2(&p, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(io_err(e)),
                },
            },
            STAT_TIMEOUT,
        )
        .await;
        r.unwrap_or_else(|| Err(io::Error::other("umount did not answer in time")))
    }

    async fn bind_read_only(
        &self,
        root: &Path,
        subdir: &RelPath,
        target: &Path,
        flags: &[String],
    ) -> Result<(), BindError> {
        let (root, subdir, target, flags) = (
            root.to_owned(),
            subdir.clone(),
            target.to_owned(),
            flags.to_vec(),
        );
        blocking(move || bind(&root, &subdir, &target, &flags), STAT_TIMEOUT)
            .await
            .unwrap_or_else(|| {
                Err(BindError::Os(
                    "the bind mount did not finish in time".into(),
                ))
            })
    }

    async fn remount_read_only(&self, path: &Path) -> io::Result<()> {
        let p = path.to_owned();
        blocking(
            move || {
                let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
                mount(None::<&str>, &p, None::<&str>, f, None::<&str>).map_err(io_err)
            },
            STAT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|| Err(io::Error::other("remount did not answer in time")))
    }

    async fn usage(&self, path: &Path) -> io::Result<Usage> {
        let p = path.to_owned();
        let s = blocking(move || nix::sys::statvfs::statvfs(&p), STAT_TIMEOUT)
            .await
            .ok_or_else(|| io::Error::other("statfs did not answer in time"))?
            .map_err(io_err)?;
        let frsize = s.fragment_size() as u64;
        let blocks = s.blocks() as u64;
        let free = s.blocks_free() as u64;
        let files = s.files() as u64;
        let ffree = s.files_free() as u64;
        Ok(Usage {
            total_bytes: blocks * frsize,
            available_bytes: s.blocks_available() as u64 * frsize,
            used_bytes: blocks.saturating_sub(free) * frsize,
            total_inodes: files,
            free_inodes: ffree,
            used_inodes: files.saturating_sub(ffree),
        })
    }

    fn check_fuse(&self) -> Result<(), String> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata("/dev/fuse") {
            Ok(m) if m.file_type().is_char_device() => {}
            Ok(_) => return Err("/dev/fuse is not a character device".into()),
            Err(e) => {
                return Err(format!(
                    "/dev/fuse is not available ({e}): run the node plugin privileged with /dev/fuse"
                ));
            }
        }
        match std::fs::metadata(&self.binary) {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(format!(
                "the mount binary {} does not exist (--mount-binary)",
                self.binary.display()
            )),
        }
    }
}
