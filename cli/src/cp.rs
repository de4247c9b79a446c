//! `mirrorfs cp SRC_DIR VOLUME[:/path]`: a local tree copied into a source volume without
//! mounting it, through the same file-system core a mount uses (so the result is what writing
//! through a mount would give): directories, regular files (several at a time), symlinks and
//! hard links, with modes and modification times (and owners when run as root). The contents
//! of SRC_DIR go into `/path` (created if missing); files that exist are overwritten. Special
//! files (devices, fifos, sockets) are skipped and counted. A mirror volume is refused: it
//! follows its source.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::StreamExt;
use mirrorfs_api::meta::FileKind;
use mirrorfs_fs::{BlockOptions, Blocks, FsConfig, FsCore, FsError, GrpcMeta, MetaClient, SetAttr};
use mirrorfs_replicator::sync::human_bytes;
use tokio::io::AsyncReadExt;

use crate::mount::{credentials, volume_token};

/// Bytes read from a local file and written to the volume per call.
const CHUNK: usize = 4 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct CpArgs {
    /// The local directory whose contents are copied.
    pub src: PathBuf,
    /// The destination: VOLUME (its root) or VOLUME:/path (created if missing).
    pub dest: String,
    /// The meta service holding the volume (a source cluster's).
    #[arg(long, env = "MIRRORFS_META", default_value = "http://127.0.0.1:7400")]
    pub meta: String,
    /// File holding the volume's token. Default: the token itself in env MIRRORFS_TOKEN.
    #[arg(long, env = "MIRRORFS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Files copied at the same time.
    #[arg(long, env = "MIRRORFS_CP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How long to wait for the meta service before failing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// JSON file {"access_key_id": …, "secret_access_key": …} for the volume's bucket.
    /// Default: MIRRORFS_SOURCE_ACCESS_KEY_ID / MIRRORFS_SOURCE_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_SOURCE_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
}

/// `VOLUME[:/path]` split; the path is relative to the volume root, without leading `/`.
pub fn parse_dest(dest: &str) -> anyhow::Result<(String, String)> {
    let (volume, path) = match dest.split_once(':') {
        Some((v, p)) => (v, p),
        None => (dest, ""),
    };
    anyhow::ensure!(
        !volume.is_empty(),
        "destination {dest:?}: expected VOLUME or VOLUME:/path"
    );
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    anyhow::ensure!(
        !parts.iter().any(|c| *c == "." || *c == ".."),
        "destination {dest:?}: the path may not contain . or .."
    );
    Ok((volume.to_owned(), parts.join("/")))
}

/// What was copied.
#[derive(Debug, Default)]
pub struct CpSummary {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// One entry of the local tree, parents before children.
enum Item {
    Dir(PathBuf),
    File(PathBuf, std::fs::Metadata),
    Symlink(PathBuf, std::fs::Metadata),
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<Item>, skipped: &mut u64) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        let md = std::fs::symlink_metadata(root.join(&rel))
            .with_context(|| format!("cannot stat {}", root.join(&rel).display()))?;
        let t = md.file_type();
        if t.is_dir() {
            out.push(Item::Dir(rel.clone()));
            walk(root, &rel, out, skipped)?;
        } else if t.is_file() {
            out.push(Item::File(rel, md));
        } else if t.is_symlink() {
            out.push(Item::Symlink(rel, md));
        } else {
            tracing::warn!(path = %root.join(&rel).display(), "special file skipped");
            *skipped += 1;
        }
    }
    Ok(())
}

/// Opens `volume` for writing through the core (no change stream: this is the only writer
/// that matters to it).
pub async fn open_core(
    meta_url: &str,
    volume: &str,
    token: &str,
    creds: Option<mirrorfs_objstore::Credentials>,
    connect_timeout: Duration,
) -> anyhow::Result<Arc<FsCore>> {
    let meta = GrpcMeta::connect(meta_url, token, volume, connect_timeout)
        .await
        .with_context(|| format!("volume {volume} at {meta_url}"))?;
    let v = meta
        .open_volume()
        .await
        .with_context(|| format!("volume {volume} at {meta_url}"))?;
    anyhow::ensure!(
        !v.read_only,
        "volume {volume} at {meta_url} is a mirror volume (read-only): copy into its source \
         volume on the source cluster; the mirror follows"
    );
    let blocks = Blocks::for_volume(
        &v,
        BlockOptions {
            credentials: creds,
            ..BlockOptions::default()
        },
    )
    .with_context(|| format!("the bucket of volume {volume}"))?;
    let config = FsConfig {
        watch: false,
        ..FsConfig::default()
    };
    Ok(FsCore::open_volume(Arc::new(meta), blocks, config).await?)
}

fn name_of(rel: &Path) -> Vec<u8> {
    rel.file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default()
}

/// The directory `path` (relative to the root), created with its parents if missing.
async fn ensure_dir(core: &FsCore, path: &str) -> anyhow::Result<u64> {
    let mut ino = core.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = mkdir_or_existing(core, ino, c.as_bytes(), 0o755, 0, 0).await?;
    }
    Ok(ino)
}

async fn mkdir_or_existing(
    core: &FsCore,
    parent: u64,
    name: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> anyhow::Result<u64> {
    match core.mkdir(parent, name, mode, uid, gid).await {
        Ok(a) => Ok(a.ino),
        Err(FsError::Exists(_)) => {
            let a = core.lookup(parent, name).await?;
            anyhow::ensure!(
                a.kind == FileKind::Directory as i32,
                "{} exists in the volume and is not a directory",
                String::from_utf8_lossy(name)
            );
            Ok(a.ino)
        }
        Err(e) => Err(e.into()),
    }
}

fn mtime(md: &std::fs::Metadata) -> Option<SystemTime> {
    md.modified().ok()
}

/// Copies the contents of `src` into directory `dest` of the volume. `progress` counts bytes.
pub async fn copy_tree(
    core: &Arc<FsCore>,
    src: &Path,
    dest: &str,
    concurrency: usize,
    progress: &AtomicU64,
) -> anyhow::Result<CpSummary> {
    let root_md = std::fs::metadata(src).with_context(|| format!("source {}", src.display()))?;
    anyhow::ensure!(
        root_md.is_dir(),
        "source {} is not a directory",
        src.display()
    );
    let mut items = Vec::new();
    let mut summary = CpSummary::default();
    let src_owned = src.to_owned();
    let (items, skipped) = tokio::task::spawn_blocking(move || {
        let mut skipped = 0;
        walk(&src_owned, Path::new(""), &mut items, &mut skipped).map(|()| (items, skipped))
    })
    .await??;
    summary.skipped = skipped;
    let owners = nix::unistd::geteuid().is_root();
    let own = |md: &std::fs::Metadata| {
        if owners {
            (md.uid(), md.gid())
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        }
    };
    let top = ensure_dir(core, dest).await?;
    // Directories first, parents before children.
    let mut dirs: HashMap<PathBuf, u64> = HashMap::new();
    dirs.insert(PathBuf::new(), top);
    let parent_of = |dirs: &HashMap<PathBuf, u64>, rel: &Path| -> u64 {
        dirs.get(rel.parent().unwrap_or(Path::new("")))
            .copied()
            .unwrap_or(top)
    };
    let mut dir_times = Vec::new();
    for item in &items {
        if let Item::Dir(rel) = item {
            let md = std::fs::symlink_metadata(src.join(rel))?;
            let (uid, gid) = own(&md);
            let ino = mkdir_or_existing(
                core,
                parent_of(&dirs, rel),
                &name_of(rel),
                md.mode() & 0o7777,
                uid,
                gid,
            )
            .await
            .with_context(|| format!("directory {}", rel.display()))?;
            dirs.insert(rel.clone(), ino);
            dir_times.push((ino, md));
            summary.dirs += 1;
        }
    }
    // Files: the first name of each local inode is copied, later names become hard links.
    let mut first: HashMap<(u64, u64), &Path> = HashMap::new();
    let mut copies = Vec::new();
    let mut links = Vec::new();
    for item in &items {
        match item {
            Item::File(rel, md) => {
                if md.nlink() > 1 {
                    if let Some(orig) = first.get(&(md.dev(), md.ino())) {
                        links.push((rel.as_path(), *orig));
                        continue;
                    }
                    first.insert((md.dev(), md.ino()), rel.as_path());
                }
                copies.push((rel.as_path(), md));
            }
            Item::Symlink(rel, md) => {
                let target = std::fs::read_link(src.join(rel))?;
                let (uid, gid) = own(md);
                let parent = parent_of(&dirs, rel);
                let name = name_of(rel);
                let target = target.as_os_str().as_bytes();
                let r = match core.symlink(parent, &name, target, uid, gid).await {
                    Err(FsError::Exists(_)) => {
                        core.unlink(parent, &name).await?;
                        core.symlink(parent, &name, target, uid, gid).await
                    }
                    r => r,
                };
                r.with_context(|| format!("symlink {}", rel.display()))?;
                summary.symlinks += 1;
            }
            Item::Dir(_) => {}
        }
    }
    let dirs = &dirs;
    let results: Vec<anyhow::Result<(PathBuf, u64, u64)>> = futures::stream::iter(copies)
        .map(|(rel, md)| async move {
            let (uid, gid) = own(md);
            let (ino, n) = copy_file(
                core,
                &src.join(rel),
                parent_of(dirs, rel),
                &name_of(rel),
                md,
                uid,
                gid,
                progress,
            )
            .await
            .with_context(|| format!("file {}", rel.display()))?;
            Ok((rel.to_owned(), ino, n))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut inos: HashMap<PathBuf, u64> = HashMap::new();
    for r in results {
        let (rel, ino, n) = r?;
        inos.insert(rel, ino);
        summary.files += 1;
        summary.bytes += n;
    }
    for (rel, orig) in links {
        let ino = inos[orig];
        let parent = parent_of(dirs, rel);
        let name = name_of(rel);
        let r = match core.link(ino, parent, &name).await {
            Err(FsError::Exists(_)) => {
                core.unlink(parent, &name).await?;
                core.link(ino, parent, &name).await
            }
            r => r,
        };
        r.with_context(|| format!("hard link {}", rel.display()))?;
        summary.hard_links += 1;
    }
    // Directory times last (creating their entries changed them), deepest first.
    for (ino, md) in dir_times.into_iter().rev() {
        let set = SetAttr {
            mtime: mtime(&md),
            ..SetAttr::default()
        };
        core.setattr(ino, set, None).await?;
    }
    core.flush_all().await?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn copy_file(
    core: &FsCore,
    path: &Path,
    parent: u64,
    name: &[u8],
    md: &std::fs::Metadata,
    uid: u32,
    gid: u32,
    progress: &AtomicU64,
) -> anyhow::Result<(u64, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mode = md.mode() & 0o7777;
    let (attr, fh) = core
        .create(parent, name, mode, uid, gid, libc::O_WRONLY | libc::O_TRUNC)
        .await?;
    let ino = attr.ino;
    let mut off = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let copied: anyhow::Result<()> = async {
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = f
                    .read(&mut buf[filled..])
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            core.write(ino, fh, off, &buf[..filled]).await?;
            off += filled as u64;
            progress.fetch_add(filled as u64, Ordering::Relaxed);
        }
    }
    .await;
    let released = core.release(ino, fh).await;
    copied?;
    released?;
    // An existing file keeps its mode on open: set it, with the owner and mtime.
    let set = SetAttr {
        mode: (attr.mode != mode).then_some(mode),
        uid: (attr.uid != uid).then_some(uid),
        gid: (attr.gid != gid).then_some(gid),
        mtime: mtime(md),
        ..SetAttr::default()
    };
    core.setattr(ino, set, None).await?;
    Ok((ino, off))
}

pub async fn run(a: CpArgs) -> anyhow::Result<()> {
    let (volume, dest) = parse_dest(&a.dest)?;
    let token = volume_token(a.token_file.as_deref(), &volume)?;
    let creds = credentials(a.credentials_file.as_deref(), "MIRRORFS_SOURCE_")
        .context("bucket credentials")?;
    let core = open_core(&a.meta, &volume, &token, creds, a.connect_timeout).await?;
    let started = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!(
                    "copied {} so far",
                    human_bytes(progress.load(Ordering::Relaxed))
                );
            }
        })
    };
    let r = copy_tree(&core, &a.src, &dest, a.concurrency, &progress).await;
    ticker.abort();
    core.close();
    let s = r?;
    let took = started.elapsed();
    println!(
        "copied {} into {volume}:/{dest}: {} files ({}), {} directories, {} symlinks, {} hard \
         links{} in {:.1} s ({:.1} MB/s)",
        a.src.display(),
        s.files,
        human_bytes(s.bytes),
        s.dirs,
        s.symlinks,
        s.hard_links,
        if s.skipped > 0 {
            format!(", {} special files skipped", s.skipped)
        } else {
            String::new()
        },
        took.as_secs_f64(),
        s.bytes as f64 / 1e6 / took.as_secs_f64().max(1e-3)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_dest("data").unwrap_or_default(),
            ("data".into(), String::new())
        );
        assert_eq!(
            parse_dest("data:/a//b/").unwrap_or_default(),
            ("data".into(), "a/b".into())
        );
        assert_eq!(
            parse_dest("data:/").unwrap_or_default(),
            ("data".into(), String::new())
        );
        assert!(parse_dest(":/x").is_err());
        assert!(parse_dest("data:/a/../b").is_err());
    }
}
