//! The `mirrorfs` binary under test: `MIRRORFS_BIN` if set, else the workspace's own build in the
//! target directory of the running test, built first when it is missing or older than the
//! sources it is made of.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Crates the binary links, whose sources make it stale when newer than it.
const SOURCES: &[&str] = &[
    "cli",
    "csi",
    "fs",
    "meta",
    "api",
    "objstore",
    "replicator",
    "proto",
];

/// The path of the `mirrorfs` binary; builds it once per process if needed. Panics with what to
/// do when it cannot be found or built.
pub fn mirrorfs() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MIRRORFS_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "MIRRORFS_BIN={} is not a file",
                bin.display()
            );
            return bin;
        }
        let profile_dir = profile_dir();
        let bin = profile_dir.join("mirrorfs");
        if let Some(newer) = stale(&bin) {
            eprintln!(
                "building {} ({})",
                bin.display(),
                newer.map_or("missing".into(), |p| format!("older than {}", p.display()))
            );
            build(&profile_dir);
        }
        assert!(bin.is_file(), "no mirrorfs binary at {}", bin.display());
        bin
    })
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the workspace")
        .to_owned()
}

/// `target/<profile>` of the running test executable (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| deps.to_owned())
}

/// None when `bin` is up to date; Some(None) when missing; Some(Some(source)) when older than
/// `source`.
fn stale(bin: &Path) -> Option<Option<PathBuf>> {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return Some(None);
    };
    let root = workspace();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for dir in SOURCES {
        walk(&root.join(dir), &mut |p, t| {
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, p.to_owned()));
            }
        });
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        let p = root.join(f);
        if let Ok(t) = p.metadata().and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            newest = Some((t, p));
        }
    }
    match newest {
        Some((t, p)) if t > built => Some(Some(p)),
        _ => None,
    }
}

/// Calls `f` with every `.rs`, `.proto` and `Cargo.toml` file under `dir` (skipping `tests/`
/// and `benches/`, which the binary does not contain).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, SystemTime)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            let name = e.file_name();
            if name != "tests" && name != "benches" && name != "target" {
                walk(&p, f);
            }
        } else if let Ok(t) = meta.modified() {
            let keep = p.extension().is_some_and(|x| x == "rs" || x == "proto")
                || p.file_name().is_some_and(|n| n == "Cargo.toml");
            if keep {
                f(&p, t);
            }
        }
    }
}

fn build(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["build", "-p", "mirrorfs", "--bin", "mirrorfs"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .expect("run cargo to build the mirrorfs binary (set MIRRORFS_BIN to use a built one)");
    assert!(
        out.status.success(),
        "building the mirrorfs binary failed (set MIRRORFS_BIN to use a built one):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
