//! Starting FUSE mount processes: `mirrorfs mount VOLUME MOUNTPOINT --meta URL --read-only
//! --background --log-file FILE [--cache-dir DIR --cache-size BYTES]`, the token and bucket credentials in the environment (never on
//! the command line, where `ps` would show them). `--background` returns once the kernel mount
//! is live; the daemon runs in its own session and survives restarts of the node plugin.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::cache_dir::DiskCache;
use crate::params::Secrets;

/// One FUSE mount to start.
#[derive(Clone, Debug)]
pub struct FuseMount {
    pub volume: String,
    pub meta_address: String,
    pub mount_point: PathBuf,
    pub log_file: PathBuf,
    pub secrets: Secrets,
    /// The mount's own disk cache, if the node plugin has a `--cache-root`.
    pub cache: Option<DiskCache>,
}

/// How long the mount command may take before it is considered failed.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// The command for `m`, run with `binary`.
pub fn command(binary: &Path, m: &FuseMount) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(binary);
    c.arg("mount")
        .arg(&m.volume)
        .arg(&m.mount_point)
        .arg("--meta")
        .arg(&m.meta_address)
        .arg("--read-only")
        .arg("--background")
        .arg("--log-file")
        .arg(&m.log_file);
    if let Some(cache) = &m.cache {
        c.arg("--cache-dir")
            .arg(&cache.dir)
            .arg("--cache-size")
            .arg(cache.size.to_string());
    }
    // Only what the mount needs from the plugin's environment: no stray MIRRORFS_* settings.
    c.env_clear();
    for k in ["PATH", "MIRRORFS_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c.env("MIRRORFS_TOKEN", &m.secrets.token);
    if let Some(p) = &m.secrets.source_bucket {
        c.env("MIRRORFS_SOURCE_ACCESS_KEY_ID", &p.access_key_id)
            .env("MIRRORFS_SOURCE_SECRET_ACCESS_KEY", &p.secret_access_key);
    }
    if let Some(p) = &m.secrets.mirror_bucket {
        c.env("MIRRORFS_MIRROR_ACCESS_KEY_ID", &p.access_key_id)
            .env("MIRRORFS_MIRROR_SECRET_ACCESS_KEY", &p.secret_access_key);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs the mount command; the error is the command's own explanation (its stderr).
pub async fn run(binary: &Path, m: &FuseMount, timeout: Duration) -> Result<(), String> {
    let child = command(binary, m)
        .spawn()
        .map_err(|e| format!("cannot run {} mount: {e}", binary.display()))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("waiting for {} mount: {e}", binary.display()))?,
        Err(_) => {
            return Err(format!(
                "{} mount did not report the mount live within {timeout:?} (log: {})",
                binary.display(),
                m.log_file.display()
            ));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "mirrorfs mount of volume {:?} at {} failed ({}): {} (log: {})",
        m.volume,
        m.mount_point.display(),
        out.status,
        tail.join(" / ").trim(),
        m.log_file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyPair;

    fn mount() -> FuseMount {
        FuseMount {
            volume: "data".into(),
            meta_address: "http://meta:7400".into(),
            mount_point: "/stage/globalmount".into(),
            log_file: "/state/logs/v.log".into(),
            secrets: Secrets {
                token: "s3cret-token".into(),
                mirror_bucket: Some(KeyPair {
                    access_key_id: "MAK".into(),
                    secret_access_key: "MSK".into(),
                }),
                source_bucket: None,
            },
            cache: None,
        }
    }

    fn args(m: &FuseMount) -> Vec<String> {
        command(Path::new("/bin/mirrorfs"), m)
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cache_flags_only_with_a_disk_cache() {
        let plain = args(&mount());
        assert!(!plain.iter().any(|a| a.starts_with("--cache")), "{plain:?}");
        let mut m = mount();
        m.cache = Some(DiskCache {
            dir: "/var/lib/mirrorfs/cache/0123abcd".into(),
            size: 512 << 20,
        });
        let with = args(&m);
        assert_eq!(with[..plain.len()], plain[..]);
        assert_eq!(
            with[plain.len()..],
            [
                "--cache-dir",
                "/var/lib/mirrorfs/cache/0123abcd",
                "--cache-size",
                "536870912"
            ]
        );
        // The mount's own parser reads the size back exactly.
        assert_eq!(
            mirrorfs_api::size::parse_size(&with[with.len() - 1]),
            Ok(512 << 20)
        );
    }

    #[test]
    fn command_line_follows_the_contract_and_hides_secrets() {
        let c = command(Path::new("/bin/mirrorfs"), &mount());
        let std = c.as_std();
        let args: Vec<String> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "mount",
                "data",
                "/stage/globalmount",
                "--meta",
                "http://meta:7400",
                "--read-only",
                "--background",
                "--log-file",
                "/state/logs/v.log"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("s3cret")));
        let env: Vec<(String, Option<String>)> = std
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(get("MIRRORFS_TOKEN").as_deref(), Some("s3cret-token"));
        assert_eq!(get("MIRRORFS_MIRROR_ACCESS_KEY_ID").as_deref(), Some("MAK"));
        assert_eq!(
            get("MIRRORFS_MIRROR_SECRET_ACCESS_KEY").as_deref(),
            Some("MSK")
        );
        assert_eq!(get("MIRRORFS_SOURCE_ACCESS_KEY_ID"), None);
    }

    #[tokio::test]
    async fn a_failing_mount_reports_its_stderr() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("tempdir") };
        let script = dir.path().join("fake-mirrorfs");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"error: volume $2 is not a mirror\" >&2\nexit 3\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = run(&script, &mount(), Duration::from_secs(20)).await;
        let e = e.err().unwrap_or_default();
        assert!(e.contains("error: volume data is not a mirror"), "{e}");
        assert!(e.contains("/state/logs/v.log"), "{e}");
    }
}
