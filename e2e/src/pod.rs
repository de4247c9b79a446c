//! A pod's container as a separate process (`mirrorfs-e2e-pod`), as root or as another user:
//! what it reads through a published volume, and the errno of each write it attempts.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The user `nobody`.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// The pod program (the `mirrorfs-e2e-pod` binary of this crate).
pub struct Pod {
    pub bin: PathBuf,
    /// (uid, gid) to run as; None: as this process (root).
    pub user: Option<(u32, u32)>,
}

/// What a pod read under a directory.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// Files by path relative to the directory (`/a/b.bin`), with their bytes.
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: Vec<String>,
    /// (path, operation, errno)
    pub errors: Vec<(String, String, i32)>,
}

impl Pod {
    pub fn new(bin: &str) -> Pod {
        Pod {
            bin: PathBuf::from(bin),
            user: None,
        }
    }

    pub fn as_user(&self, user: (u32, u32)) -> Pod {
        Pod {
            bin: self.bin.clone(),
            user: Some(user),
        }
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Value {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "the pod process failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the pod process printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Reads every file under `dir`.
    pub fn read(&self, dir: &Path) -> ReadReport {
        let v = self.run(&["read".as_ref(), dir.as_os_str()]);
        let mut r = ReadReport::default();
        if let Some(files) = v["files"].as_object() {
            for (k, hexed) in files {
                let bytes =
                    hex::decode(hexed.as_str().unwrap_or_default()).expect("the pod prints hex");
                r.files.insert(k.clone(), bytes);
            }
        }
        if let Some(dirs) = v["dirs"].as_array() {
            r.dirs = dirs
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect();
        }
        if let Some(errors) = v["errors"].as_array() {
            for e in errors {
                r.errors.push((
                    e["path"].as_str().unwrap_or_default().to_owned(),
                    e["op"].as_str().unwrap_or_default().to_owned(),
                    e["errno"].as_i64().unwrap_or(-1) as i32,
                ));
            }
        }
        r
    }

    /// Attempts every kind of write against `dir`, its file `file` and its subdirectory
    /// `subdir`; returns (operation, errno) with errno 0 for a write that succeeded.
    pub fn write_probe(&self, dir: &Path, file: &Path, subdir: &Path) -> Vec<(String, i32)> {
        let v = self.run(&[
            "write-probe".as_ref(),
            dir.as_os_str(),
            file.as_os_str(),
            subdir.as_os_str(),
        ]);
        v.as_array()
            .expect("the write probe prints an array")
            .iter()
            .map(|o| {
                (
                    o["op"].as_str().unwrap_or_default().to_owned(),
                    o["errno"].as_i64().unwrap_or(-1) as i32,
                )
            })
            .collect()
    }
}
