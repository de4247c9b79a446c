//! One test's world: a temporary directory holding a source and a mirror region, a mirror
//! volume with a data set, a kubelet root, and the driver (controller and node roles in one
//! process, as a single-node cluster runs them).
//!
//! Dropping it (also when the test panics) kills the driver, unmounts lazily everything
//! mounted under the directory, kills by pid the FUSE daemons started for it, stops the meta
//! services and removes the directory. After a panic it prints the driver's log and the mount
//! processes' logs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::driver::{Driver, DriverConfig};
use crate::kube::{Claim, Kubelet, Provisioner, StorageClass};
use crate::mounts::Sweeper;
use crate::regions::{DataSet, Regions};

pub const SOURCE_VOLUME: &str = "datasets";
pub const MIRROR_VOLUME: &str = "datasets-eu";
pub const NODE_ID: &str = "node-e2e-1";
pub const REGION: &str = "eu-west";

/// Options of [`Cluster::start_with`].
#[derive(Clone, Debug)]
pub struct Options {
    /// `--path-wait` of the driver.
    pub path_wait: String,
    /// `--max-lag` of the driver.
    pub max_lag: Option<String>,
    /// With a size: `--cache-root` [`Cluster::cache_root`] and this `--cache-size`.
    pub cache_size: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            path_wait: "3s".into(),
            max_lag: None,
            cache_size: None,
        }
    }
}

/// Fails the test (never skips it) when mounting is impossible here.
pub fn require_root_and_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CSI end-to-end tests mount file systems: run them as root (CI does)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "the CSI end-to-end tests need /dev/fuse (install fuse3; in a container, pass --device /dev/fuse)"
    );
}

pub struct Cluster {
    // Fields drop in this order: the driver first, then every mount and FUSE daemon, then the
    // meta services, then the directory.
    pub driver: Driver,
    sweeper: Sweeper,
    pub regions: Regions,
    pub kubelet: Kubelet,
    pub provisioner: Provisioner,
    pub data: DataSet,
    pub source_token: String,
    pub mirror_token: String,
    dir: TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Cluster {
        require_root_and_fuse();
        let dir = tempfile::Builder::new()
            .prefix("mirrorfs-e2e-")
            .tempdir()
            .expect("create the test directory");
        // Pods run as other users too: they must traverse down to their volumes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the test directory");
        let sweeper = Sweeper::new(dir.path());
        let regions = Regions::start(dir.path()).await;
        let data = DataSet::standard();
        let source_token = regions.source_volume(SOURCE_VOLUME).await;
        let rev = regions.write(SOURCE_VOLUME, &source_token, &data).await;
        regions.wait_applied(rev).await;
        let mirror_token = regions.mirror_volume(MIRROR_VOLUME, SOURCE_VOLUME).await;
        let kubelet = Kubelet::new(&dir.path().join("kubelet"));
        let cache_root = opts.cache_size.as_ref().map(|_| {
            let root = dir.path().join("cache");
            std::fs::create_dir(&root).expect("create the cache root");
            root
        });
        let config = DriverConfig {
            role: "all".into(),
            node_id: NODE_ID.into(),
            region: Some(REGION.into()),
            kubelet_dir: kubelet.root.clone(),
            state_dir: dir.path().join("csi-state"),
            path_wait: opts.path_wait.clone(),
            max_lag: opts.max_lag.clone(),
            cache_root,
            cache_size: opts.cache_size.clone(),
        };
        let driver = Driver::start(
            config,
            &dir.path().join("csi.sock"),
            &dir.path().join("csi.log"),
        )
        .await;
        Cluster {
            driver,
            sweeper,
            regions,
            kubelet,
            provisioner: Provisioner::default(),
            data,
            source_token,
            mirror_token,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The driver's `--cache-root` (with [`Options::cache_size`]).
    pub fn cache_root(&self) -> Option<&Path> {
        self.driver.config.cache_root.as_deref()
    }

    /// A StorageClass for the mirror volume with `extra` parameters.
    pub fn class(&self, extra: &[(&str, &str)]) -> StorageClass {
        StorageClass::mirror(
            MIRROR_VOLUME,
            &self.regions.mirror.url,
            &self.mirror_token,
            extra,
        )
    }

    /// A ReadOnlyMany claim in namespace `team-a`.
    pub fn claim(&self, name: &str) -> Claim {
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            fnv(name),
            fnv(name) ^ 0x5eed
        );
        Claim::read_only_many(name, "team-a", &uid)
    }

    /// The driver's state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.driver.config.state_dir.clone()
    }

    /// Pids of the FUSE daemons serving mounts at `mountpoint` (found by that exact path in
    /// their command line).
    pub fn mount_daemons(&self, mountpoint: &Path) -> Vec<i32> {
        crate::process::pids_with_arg_under(mountpoint)
            .into_iter()
            .filter(|p| {
                let c = crate::process::cmdline(*p);
                c.split(' ').any(|a| a == "mount") && Some(*p as u32) != self.driver.pid()
            })
            .collect()
    }

    /// Text for failure messages: the driver's log and every log in its state directory.
    pub fn logs(&self) -> String {
        let mut s = format!("---- driver log ----\n{}", self.driver.log());
        let mut stack = vec![self.state_dir()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    s.push_str(&format!("---- {} ----\n{text}", p.display()));
                }
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: String = {
                let n = logs.len().saturating_sub(20_000);
                let mut i = n;
                while !logs.is_char_boundary(i) {
                    i += 1;
                }
                logs[i..].to_owned()
            };
            eprintln!("{tail}");
        }
        self.driver.kill9();
        self.sweeper.sweep();
    }
}

/// FNV-1a, for stable fake uids.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
