//! The driver's records in `--state-dir`, so a restarted plugin knows what it had done:
//! `volumes/<key>.json` (a staged volume and its publishes), `volumes/<key>.secrets` (the secrets
//! needed to remount it after a restart; mode 0600, never logged), `logs/<key>.log` (the mount
//! process's log) and `claims/<key>.json` (CreateVolume names, for idempotency). Files are
//! written to a temporary name and renamed, so a crashed plugin leaves the old or the new record.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache_dir::DiskCache;
use crate::capability::Access;
use crate::params::{Secrets, VolumeSpec};
use crate::relpath::RelPath;

/// A volume staged on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub volume: String,
    pub meta_address: String,
    pub subdir: String,
    pub lenient: bool,
    pub access: Access,
    /// The driver created the staging directory (and removes it at unstage).
    pub created_staging: bool,
    /// The FUSE mount's disk cache, fixed at staging (remounts use it; unstage deletes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DiskCache>,
    pub publishes: Vec<PublishRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub target: PathBuf,
    pub access: Access,
    pub readonly: bool,
}

impl StageRecord {
    pub fn spec(&self) -> VolumeSpec {
        VolumeSpec {
            volume: self.volume.clone(),
            meta_address: self.meta_address.clone(),
            subdir: RelPath::parse(&self.subdir).unwrap_or_default(),
            lenient: self.lenient,
        }
    }
}

/// A volume CreateVolume handed out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub name: String,
    pub volume_id: String,
    pub volume: String,
    pub meta_address: String,
    pub subdir: String,
    pub lenient: bool,
}

impl ClaimRecord {
    pub fn spec(&self) -> VolumeSpec {
        VolumeSpec {
            volume: self.volume.clone(),
            meta_address: self.meta_address.clone(),
            subdir: RelPath::parse(&self.subdir).unwrap_or_default(),
            lenient: self.lenient,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// The file-name key of a volume id or claim name: 32 hex characters of its BLAKE3 hash.
pub(crate) fn key(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..32].to_owned()
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    // No fsync: the records must survive a restart of the plugin (the page cache does), not of
    // the host, whose reboot ends every mount anyway; calls stay fast under concurrency.
    std::fs::rename(&tmp, path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Store {
    /// Opens (creating) the state directory.
    pub fn open(dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["volumes", "logs", "claims"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn volume_path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join("volumes").join(format!("{}.{ext}", key(id)))
    }

    pub fn log_file(&self, id: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", key(id)))
    }

    pub fn load(&self, id: &str) -> io::Result<Option<StageRecord>> {
        read_json(&self.volume_path(id, "json"))
    }

    pub fn save(&self, r: &StageRecord) -> io::Result<()> {
        let b = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
        write_atomic(&self.volume_path(&r.volume_id, "json"), &b, 0o600)
    }

    pub fn remove(&self, id: &str) -> io::Result<()> {
        remove(&self.volume_path(id, "json"))?;
        remove(&self.volume_path(id, "secrets"))
    }

    /// Every staged volume; unreadable records are reported and skipped.
    pub fn all(&self) -> Vec<StageRecord> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("volumes")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match read_json::<StageRecord>(&p) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable volume record"),
                }
            }
        }
        out
    }

    pub fn save_secrets(&self, id: &str, s: &Secrets) -> io::Result<()> {
        let b = serde_json::to_vec(s).map_err(io::Error::other)?;
        write_atomic(&self.volume_path(id, "secrets"), &b, 0o600)
    }

    pub fn load_secrets(&self, id: &str) -> io::Result<Option<Secrets>> {
        read_json(&self.volume_path(id, "secrets"))
    }

    fn claim_path(&self, name: &str) -> PathBuf {
        self.dir.join("claims").join(format!("{}.json", key(name)))
    }

    pub fn load_claim(&self, name: &str) -> io::Result<Option<ClaimRecord>> {
        read_json(&self.claim_path(name))
    }

    pub fn save_claim(&self, c: &ClaimRecord) -> io::Result<()> {
        let b = serde_json::to_vec_pretty(c).map_err(io::Error::other)?;
        write_atomic(&self.claim_path(&c.name), &b, 0o600)
    }

    /// The claim with this volume id, if any.
    pub fn claim_by_id(&self, id: &str) -> Option<ClaimRecord> {
        let rd = std::fs::read_dir(self.dir.join("claims")).ok()?;
        rd.flatten()
            .filter_map(|e| read_json::<ClaimRecord>(&e.path()).ok().flatten())
            .find(|c| c.volume_id == id)
    }

    pub fn remove_claim(&self, name: &str) -> io::Result<()> {
        remove(&self.claim_path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_and_secrets_round_trip_privately() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        let r = StageRecord {
            volume_id: "v/1".into(),
            staging_path: "/k/globalmount".into(),
            volume: "data".into(),
            meta_address: "http://m:1".into(),
            subdir: "a/b".into(),
            lenient: false,
            access: Access {
                mode: 3,
                flags: vec![],
            },
            created_staging: false,
            cache: Some(DiskCache {
                dir: "/cache/abc".into(),
                size: 1 << 30,
            }),
            publishes: vec![],
        };
        assert!(s.save(&r).is_ok());
        assert_eq!(s.load("v/1").ok().flatten(), Some(r.clone()));
        assert_eq!(s.all(), vec![r]);
        let sec = Secrets {
            token: "t".into(),
            mirror_bucket: None,
            source_bucket: None,
        };
        assert!(s.save_secrets("v/1", &sec).is_ok());
        let mode = std::fs::metadata(s.volume_path("v/1", "secrets"))
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        assert_eq!(s.load_secrets("v/1").ok().flatten(), Some(sec));
        assert!(s.remove("v/1").is_ok());
        assert_eq!(s.load("v/1").ok().flatten(), None);
        assert_eq!(s.load_secrets("v/1").ok().flatten(), None);
        assert!(s.remove("v/1").is_ok());
    }

    #[test]
    fn records_from_before_the_disk_cache_load_without_one() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        let old = r#"{"volume_id":"v","staging_path":"/k/g","volume":"data",
            "meta_address":"http://m:1","subdir":"","lenient":false,
            "access":{"mode":3,"flags":[]},"created_staging":true,"publishes":[]}"#;
        std::fs::write(s.volume_path("v", "json"), old).unwrap_or_else(|e| panic!("{e}"));
        let r = s.load("v").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.map(|r| (r.cache, r.created_staging)), Some((None, true)));
    }
}
