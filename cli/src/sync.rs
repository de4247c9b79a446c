//! `mirrorfs sync SRC DST`: copies every object of a bucket (or prefix) that the destination
//! lacks, like `rclone copy`. Flags become a `SyncOptions`; the copying is
//! `mirrorfs_replicator::sync`. A progress bar with rate and ETA on a terminal, a log line every
//! few seconds otherwise, and a summary; exits non-zero if anything failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mirrorfs_objstore::{Bucket, BucketConfig, Credentials, ObjError};
use mirrorfs_replicator::sync::{ObjectOutcome, Progress, SyncOptions, human_bytes, sync};

#[derive(clap::Args, Clone, Debug)]
pub struct SyncArgs {
    /// Source bucket URL: file:///dir (or a plain path), s3://bucket/prefix.
    pub src: String,
    /// Destination bucket URL.
    pub dst: String,
    /// Source bucket option KEY=VALUE (endpoint, region, path_style, allow_http, ...);
    /// repeatable.
    #[arg(long = "source-opt", value_parser = crate::args::key_value)]
    pub source_opt: Vec<(String, String)>,
    /// Destination bucket option KEY=VALUE; repeatable.
    #[arg(long = "dest-opt", value_parser = crate::args::key_value)]
    pub dest_opt: Vec<(String, String)>,
    /// JSON file with the source bucket's access key. Default: MIRRORFS_SOURCE_ACCESS_KEY_ID /
    /// MIRRORFS_SOURCE_SECRET_ACCESS_KEY (/ MIRRORFS_SOURCE_SESSION_TOKEN).
    #[arg(long, env = "MIRRORFS_SOURCE_CREDENTIALS_FILE")]
    pub source_credentials_file: Option<PathBuf>,
    /// JSON file with the destination bucket's access key. Default:
    /// MIRRORFS_MIRROR_ACCESS_KEY_ID / MIRRORFS_MIRROR_SECRET_ACCESS_KEY.
    #[arg(long, env = "MIRRORFS_DEST_CREDENTIALS_FILE")]
    pub dest_credentials_file: Option<PathBuf>,
    /// Copies in flight at once.
    #[arg(
        short = 'j',
        long,
        env = "MIRRORFS_SYNC_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,
    /// Also compare objects present on both sides (BLAKE3) and re-copy the ones that differ.
    #[arg(long)]
    pub check: bool,
    /// List what would be copied; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Bandwidth limit in bytes per second, with an optional K, M or G suffix (powers of
    /// 1024), e.g. 50M.
    #[arg(long, env = "MIRRORFS_SYNC_BWLIMIT", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Only objects under this key directory (whole components), e.g. v7.
    #[arg(long)]
    pub under: Option<String>,
    /// Progress display: auto (a bar on a terminal, log lines otherwise), bar, log, none.
    #[arg(long, default_value = "auto")]
    pub progress: ProgressMode,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

/// `50M` -> 52428800. Plain numbers are bytes.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 50M, 512K or 1048576"))?;
    if v <= 0.0 || !v.is_finite() {
        return Err(format!("{s:?}: the limit must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

/// Opens a bucket with its options and credentials (credentials only matter for S3).
pub fn open_bucket(
    url: &str,
    opts: &[(String, String)],
    credentials_file: Option<&PathBuf>,
    env_prefix: &str,
) -> anyhow::Result<Bucket> {
    let credentials = match credentials_file {
        Some(path) => Some(Credentials::from_file(path)?),
        None => Credentials::from_env(env_prefix)?,
    };
    let mut cfg = BucketConfig::new(url).with_credentials(credentials);
    for (k, v) in opts {
        cfg.options.insert(k.clone(), v.clone());
    }
    Ok(Bucket::open(&cfg)?)
}

/// A local source directory must exist: a mistyped path would otherwise sync nothing and
/// report success.
fn check_local_source(url: &str) -> anyhow::Result<()> {
    if let Some(dir) = BucketConfig::new(url).local_dir()
        && !dir.is_dir()
    {
        bail!(
            "source bucket: the directory {} does not exist (check the path)",
            dir.display()
        );
    }
    Ok(())
}

pub async fn run(a: SyncArgs) -> anyhow::Result<()> {
    check_local_source(&a.src)?;
    let src = open_bucket(
        &a.src,
        &a.source_opt,
        a.source_credentials_file.as_ref(),
        "MIRRORFS_SOURCE_",
    )
    .context("source bucket")?;
    let dst = open_bucket(
        &a.dst,
        &a.dest_opt,
        a.dest_credentials_file.as_ref(),
        "MIRRORFS_MIRROR_",
    )
    .context("destination bucket")?;
    let opts = SyncOptions {
        concurrency: a.concurrency,
        check: a.check,
        dry_run: a.dry_run,
        bwlimit: a.bwlimit,
        under: a.under.clone(),
        ..SyncOptions::default()
    };
    let mode = match a.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Log,
        m => m,
    };
    eprintln!(
        "sync {} -> {}{}{}",
        src.display(),
        dst.display(),
        if a.check { " (check)" } else { "" },
        if a.dry_run { " (dry run)" } else { "" }
    );
    let display = Display::new(mode, a.dry_run);
    let ticker = display.start_ticker();
    let result = sync(&src, &dst, opts, display.clone()).await;
    display.finish();
    if let Some(t) = ticker {
        t.abort();
    }
    let summary = result?;
    println!("{summary}");
    if !summary.is_ok() {
        bail!(
            "sync incomplete: {} objects failed{}",
            summary.failed,
            if summary.incomplete.is_some() {
                ", and not every object was reached"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Progress shown while a sync runs.
#[derive(Clone)]
struct Display {
    inner: Arc<Inner>,
}

struct Inner {
    mode: ProgressMode,
    dry_run: bool,
    bar: Option<ProgressBar>,
    started: Instant,
    scanned: AtomicU64,
    to_copy_bytes: AtomicU64,
    done_bytes: AtomicU64,
    copied: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    listing_done: AtomicBool,
}

impl Display {
    fn new(mode: ProgressMode, dry_run: bool) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                     {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            inner: Arc::new(Inner {
                mode,
                dry_run,
                bar,
                started: Instant::now(),
                scanned: AtomicU64::new(0),
                to_copy_bytes: AtomicU64::new(0),
                done_bytes: AtomicU64::new(0),
                copied: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                listing_done: AtomicBool::new(false),
            }),
        }
    }

    fn message(&self) -> String {
        let i = &self.inner;
        format!(
            "scanned {}{}, copied {}, skipped {}, failed {}",
            i.scanned.load(Ordering::Relaxed),
            if i.listing_done.load(Ordering::Relaxed) {
                ""
            } else {
                " (listing)"
            },
            i.copied.load(Ordering::Relaxed),
            i.skipped.load(Ordering::Relaxed),
            i.failed.load(Ordering::Relaxed)
        )
    }

    /// Without a terminal: one line every 5 seconds.
    fn start_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.inner.mode != ProgressMode::Log {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let i = &this.inner;
                let done = i.done_bytes.load(Ordering::Relaxed);
                let total = i.to_copy_bytes.load(Ordering::Relaxed);
                let rate = done as f64 / i.started.elapsed().as_secs_f64().max(1e-3);
                let eta = if i.listing_done.load(Ordering::Relaxed) && rate > 0.0 {
                    format!(
                        ", ETA {}",
                        humantime::format_duration(Duration::from_secs(
                            (total.saturating_sub(done) as f64 / rate) as u64
                        ))
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "sync: {} / {} at {}/s{eta}; {}",
                    human_bytes(done),
                    human_bytes(total),
                    human_bytes(rate as u64),
                    this.message()
                );
            }
        }))
    }

    fn refresh(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.set_length(self.inner.to_copy_bytes.load(Ordering::Relaxed));
            bar.set_position(self.inner.done_bytes.load(Ordering::Relaxed));
            bar.set_message(self.message());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            self.refresh();
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn scanned(&self, _key: &str, bytes: u64, to_copy: bool) {
        self.inner.scanned.fetch_add(1, Ordering::Relaxed);
        if to_copy {
            self.inner.to_copy_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.refresh();
    }

    fn listing_done(&self) {
        self.inner.listing_done.store(true, Ordering::Relaxed);
        self.refresh();
    }

    fn done(&self, key: &str, bytes: u64, outcome: ObjectOutcome) {
        let i = &self.inner;
        match outcome {
            ObjectOutcome::Copied | ObjectOutcome::Replaced => {
                i.copied.fetch_add(1, Ordering::Relaxed);
                i.done_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            ObjectOutcome::Skipped => {
                i.skipped.fetch_add(1, Ordering::Relaxed);
            }
            ObjectOutcome::WouldCopy => {
                i.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                if i.dry_run {
                    match &i.bar {
                        Some(bar) => bar.println(format!("would copy {key} ({bytes} bytes)")),
                        None => println!("would copy {key} ({bytes} bytes)"),
                    }
                }
            }
        }
        self.refresh();
    }

    fn failed(&self, key: &str, error: &ObjError) {
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.println(format!("failed: {key}: {error}"));
        }
        self.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5GB/s"), Ok(3 << 29));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
