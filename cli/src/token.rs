//! Secrets on disk: reading tokens and writing them with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// Reads a token file, trimming whitespace.
pub fn read(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let t = s.trim();
    anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
    Ok(t.to_owned())
}

/// Writes `token` to a new file readable only by its owner. Refuses to overwrite.
pub fn write_new(path: &Path, token: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write token file {}", path.display()))
}

/// A new random token: 32 bytes, hex.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
