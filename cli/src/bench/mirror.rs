//! `mirrorfs bench mirror`: how closely a mirror follows its source, measured in one run on
//! embedded engines in a temporary directory. The mirror follows the source through a TCP proxy
//! that can add a one-way delay and cut the link, as a link between regions would.
//!
//! - **Lag**: for every create the source acknowledges at revision r, the time from the
//!   acknowledgement until the mirror's applied revision reaches r. At the highest rate the
//!   source sustains and at a paced moderate rate, on loopback and over a delayed link.
//! - **Apply throughput**: the link is cut while the source writes at full speed, then restored;
//!   source revisions the mirror applies per second while catching up, beside the revisions per
//!   second the source wrote.
//! - **Bootstrap**: a fresh mirror of a source holding N inodes, until it has applied the
//!   source's head.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use mirrorfs_api::meta::{self as pb, fs_client::FsClient};
use mirrorfs_api::{Ino, Revision};
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{NewVolume, Owner};
use mirrorfs_meta::keyspace::MIRRORED;
use mirrorfs_meta::{Engine, FsMeta, client, engine::prefix_end};
use mirrorfs_testkit::Proxy;
use tokio::sync::{oneshot, watch};

use crate::local::LocalMeta;

#[derive(clap::Args, Clone, Debug)]
pub struct MirrorBenchArgs {
    /// How long each lag measurement writes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients of the flat-out load (and of the writes the mirror catches up on).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Creates per second of the paced load.
    #[arg(long, default_value_t = 500)]
    pub paced_rate: u32,
    /// One-way delay of the slow link between mirror and source (a round trip gains twice this).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Creates the source writes while the mirror is cut off, for the apply throughput.
    #[arg(long, default_value_t = 50_000)]
    pub catch_up_creates: usize,
    /// Inodes in the source a fresh mirror bootstraps from (0 skips the bootstrap).
    #[arg(long, default_value_t = 1_000_000)]
    pub bootstrap_inodes: u64,
    /// Where the embedded engines keep their databases (default: a temporary directory on the
    /// same disk as the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// p99 lag target on loopback; over a delayed link the target adds the round trip.
const LAG_P99_LOOPBACK: Duration = Duration::from_millis(100);
/// The mirror must apply at least this many times faster than the source writes.
const APPLY_RATIO: f64 = 2.0;
/// Bootstrap time target, for [`BOOTSTRAP_TARGET_INODES`] inodes.
const BOOTSTRAP_SECS: f64 = 60.0;
const BOOTSTRAP_TARGET_INODES: u64 = 1_000_000;
/// Tasks that fill the bootstrap source, each in its own directory.
const BUILD_TASKS: usize = 256;
/// Clients of the paced load (each paced at its share of the rate).
const PACED_CLIENTS: usize = 8;
/// Longest wait for the mirror to reach a revision before the run is declared failed.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// The followers' longest reconnect backoff.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(250);

pub async fn mirror(a: MirrorBenchArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.paced_rate == 0 {
        bail!("--clients and --paced-rate must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mirrorfs-bench-")
        .tempdir()?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!(
        "mirrorfs bench mirror: embedded engines in {}, {} cores; the mirror follows through a \
         TCP proxy; {} per lag run, slow link {} one way",
        dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        humantime::format_duration(a.duration),
        humantime::format_duration(a.delay),
    );

    let mut table = Table::default();
    let rig = Rig::start(&dir, a.clients).await?;
    let links = [("loopback", Duration::ZERO), ("slow link", a.delay)];
    let mut round = 0;
    // The fastest the source wrote in this run, in revisions per second.
    let mut fastest_source = 0f64;
    for (link, delay) in links {
        rig.proxy.set_delay(delay);
        let target = LAG_P99_LOOPBACK + 2 * delay;
        let link = if delay.is_zero() {
            link.to_owned()
        } else {
            format!("{} ms delay", delay.as_millis())
        };
        let loads = [
            (format!("flat out, {} clients", a.clients), Pace::FlatOut),
            (
                format!("paced {}/s", a.paced_rate),
                Pace::Rate(f64::from(a.paced_rate)),
            ),
        ];
        for (load, pace) in loads {
            round += 1;
            eprintln!("lag: {link}, {load} ...");
            let lag = rig.lag(round, pace, a.duration).await?;
            fastest_source = fastest_source.max(lag.revision_rate);
            table.lag(&link, &load, &lag, target);
        }
    }
    rig.proxy.set_delay(Duration::ZERO);
    eprintln!(
        "apply throughput: {} creates while the mirror is cut off ...",
        a.catch_up_creates
    );
    round += 1;
    let catch_up = rig.catch_up(round, a.catch_up_creates).await?;
    table.catch_up(&catch_up, fastest_source);
    rig.stop().await?;

    if a.bootstrap_inodes > 0 {
        eprintln!(
            "bootstrap: filling a source with {} inodes ...",
            a.bootstrap_inodes
        );
        let boot = bootstrap(&dir, a.bootstrap_inodes).await?;
        table.bootstrap(&boot);
    }
    table.print();
    Ok(())
}

type Client = FsClient<client::Authed>;

/// A source, a proxy in front of it, a follower following through the proxy, and gRPC clients
/// of the source.
struct Rig {
    source: LocalMeta,
    proxy: Proxy,
    follower: FollowerHandle,
    stop_follower: watch::Sender<bool>,
    clients: Vec<Client>,
    volume: String,
}

impl Rig {
    async fn start(dir: &Path, clients: usize) -> anyhow::Result<Rig> {
        let source = LocalMeta::start(&subdir(dir, "source")?).await?;
        let (info, token) = source
            .fs
            .create_volume(NewVolume {
                name: "bench".into(),
                ..Default::default()
            })
            .await?;
        let proxy = Proxy::start(socket_addr(&source.url)?).await?;
        let mirror = Follower::start(&subdir(dir, "mirror")?, &proxy, &source.admin_token).await?;
        let mut channels = Vec::with_capacity(clients);
        for _ in 0..clients {
            let ch = client::connect(&source.url, Duration::from_secs(5)).await?;
            channels.push(client::fs(ch, &token)?);
        }
        let rig = Rig {
            source,
            proxy,
            follower: mirror.handle,
            stop_follower: mirror.stop,
            clients: channels,
            volume: info.name,
        };
        rig.caught_up().await?;
        Ok(rig)
    }

    async fn head(&self) -> anyhow::Result<Revision> {
        Ok(self.source.fs.engine().head().await?.revision)
    }

    /// Waits until the mirror has applied the source's current head.
    async fn caught_up(&self) -> anyhow::Result<Revision> {
        let head = self.head().await?;
        wait_applied(&self.follower, head, CATCH_UP_LIMIT).await?;
        Ok(head)
    }

    /// Runs one load and measures, for every create, acknowledgement → applied on the mirror.
    async fn lag(&self, round: usize, pace: Pace, duration: Duration) -> anyhow::Result<Lag> {
        self.caught_up().await?;
        let clients = match pace {
            Pace::FlatOut => &self.clients[..],
            Pace::Rate(_) => &self.clients[..PACED_CLIENTS.min(self.clients.len())],
        };
        let dirs = make_dirs(clients, &self.volume, round).await?;
        let timeline = Timeline::record(self.follower.applied());
        let before = self.head().await?;
        let load = run_load(
            clients,
            &self.volume,
            &dirs,
            pace,
            Until::Time(Instant::now() + duration),
        )
        .await?;
        let after = self.head().await?;
        let last = load.acks.iter().map(|&(_, r)| r).max().unwrap_or(0);
        wait_applied(&self.follower, Revision(last), CATCH_UP_LIMIT).await?;
        let applied = timeline.stop(Revision(last)).await?;
        let mut hist = Histogram::<u64>::new(3)?;
        for &(acked, r) in &load.acks {
            let i = applied.partition_point(|&(_, a)| a < r);
            let Some(&(at, _)) = applied.get(i) else {
                bail!("the mirror reached revision {last}, yet no record of it applying {r}");
            };
            // The mirror may apply a revision before its acknowledgement reaches the client.
            let lag = at.saturating_duration_since(acked);
            hist.record(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1))?;
        }
        Ok(Lag {
            creates: load.acks.len(),
            rate: load.acks.len() as f64 / load.elapsed.as_secs_f64(),
            revision_rate: (after.0 - before.0) as f64 / load.elapsed.as_secs_f64(),
            hist,
        })
    }

    /// Cuts the link, writes `creates` at full speed, restores the link and measures how fast
    /// the mirror applies what it missed.
    async fn catch_up(&self, round: usize, creates: usize) -> anyhow::Result<CatchUp> {
        self.caught_up().await?;
        let dirs = make_dirs(&self.clients, &self.volume, round).await?;
        self.proxy.cut();
        let before = self.head().await?;
        let load = run_load(
            &self.clients,
            &self.volume,
            &dirs,
            Pace::FlatOut,
            Until::Count(creates),
        )
        .await?;
        let after = self.head().await?;
        let was_applied = *self.follower.applied().borrow();
        if was_applied > before {
            bail!(
                "the mirror applied revision {} while cut off from the source (head {})",
                was_applied.0,
                before.0
            );
        }
        let timeline = Timeline::record(self.follower.applied());
        let restored = Instant::now();
        self.proxy.restore();
        wait_applied(&self.follower, after, CATCH_UP_LIMIT).await?;
        let done = Instant::now();
        let points = timeline.stop(after).await?;
        // From the first local commit after the restore (reconnecting is not applying) to the
        // one that reached the head.
        let first = points.iter().find(|&&(_, r)| r > was_applied.0);
        let last = points.iter().find(|&&(_, r)| r >= after.0);
        let (apply_revisions, apply_time) = match (first, last) {
            (Some(&(t1, r1)), Some(&(t2, r2))) if t2 > t1 && r2 > r1 => (r2 - r1, t2 - t1),
            // All of it in one local commit: count from the restore.
            _ => (after.0 - was_applied.0, done - restored),
        };
        Ok(CatchUp {
            creates: load.acks.len(),
            revisions: after.0 - before.0,
            write_time: load.elapsed,
            apply_revisions,
            apply_time,
            first_apply: first.map(|&(t, _)| t - restored),
            total: done - restored,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_follower.send(true);
        drop(self.clients);
        self.proxy.stop().await;
        self.source.stop().await
    }
}

/// A mirror engine and the follower that fills it.
struct Follower {
    engine: Arc<dyn Engine>,
    handle: FollowerHandle,
    stop: watch::Sender<bool>,
}

impl Follower {
    /// Opens an embedded engine in `dir` as a mirror and follows `proxy`'s upstream through it.
    async fn start(dir: &Path, proxy: &Proxy, token: &str) -> anyhow::Result<Follower> {
        let engine: Arc<dyn Engine> = Arc::new(EmbeddedEngine::open(&dir.join("meta.redb"))?);
        FsMeta::open_mirror(engine.clone()).await?;
        let mut config = FollowerConfig::new(proxy.url(), token);
        // Reconnect soon after the link comes back: the catch-up measures applying, not backoff.
        config.backoff_max = RECONNECT_BACKOFF_MAX;
        let (stop, stop_rx) = watch::channel(false);
        let handle = follower::start(engine.clone(), config, stop_rx).await?;
        Ok(Follower {
            engine,
            handle,
            stop,
        })
    }
}

/// Waits until the follower has applied `target`, failing early if it has given up.
async fn wait_applied(
    follower: &FollowerHandle,
    target: Revision,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut applied = follower.applied();
    loop {
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        tokio::select! {
            r = applied.wait_for(|r| *r >= target) => {
                r.context("the follower stopped")?;
                return Ok(());
            }
            () = tokio::time::sleep_until(tick.min(deadline)) => {}
        }
        let status = follower.status();
        if status.state == "failed" {
            bail!(
                "the follower failed at revision {} of {}: {}",
                status.applied_revision,
                target.0,
                status.last_error
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the mirror did not reach revision {} within {} (applied {}, state {}, last error {:?})",
                target.0,
                humantime::format_duration(limit),
                status.applied_revision,
                status.state,
                status.last_error
            );
        }
    }
}

/// Records when the follower's applied revision changes.
struct Timeline {
    stop: oneshot::Sender<u64>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
}

impl Timeline {
    fn record(mut applied: watch::Receiver<Revision>) -> Timeline {
        let (stop, mut stopped) = oneshot::channel::<u64>();
        let task = tokio::spawn(async move {
            let mut points = vec![(Instant::now(), applied.borrow_and_update().0)];
            let mut until = None;
            loop {
                if until.is_some_and(|u| points.last().is_some_and(|&(_, r)| r >= u)) {
                    break;
                }
                tokio::select! {
                    biased;
                    changed = applied.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        points.push((Instant::now(), applied.borrow_and_update().0));
                    }
                    u = &mut stopped, if until.is_none() => until = Some(u.unwrap_or(0)),
                }
            }
            points
        });
        Timeline { stop, task }
    }

    /// Stops recording once the timeline holds a point at or past `reached` (a revision the
    /// follower has already applied), and returns it.
    async fn stop(self, reached: Revision) -> anyhow::Result<Vec<(Instant, u64)>> {
        let _ = self.stop.send(reached.0);
        Ok(self.task.await?)
    }
}

#[derive(Clone, Copy)]
enum Pace {
    FlatOut,
    /// Creates per second over all clients.
    Rate(f64),
}

#[derive(Clone, Copy)]
enum Until {
    Time(Instant),
    Count(usize),
}

struct Load {
    /// When each create was acknowledged, and at which source revision.
    acks: Vec<(Instant, u64)>,
    elapsed: Duration,
}

/// One directory per client under the volume root, named for the round.
async fn make_dirs(clients: &[Client], volume: &str, round: usize) -> anyhow::Result<Vec<u64>> {
    let mut dirs = Vec::with_capacity(clients.len());
    for (c, ch) in clients.iter().enumerate() {
        let reply = ch
            .clone()
            .mkdir(pb::MkdirRequest {
                volume: vref(volume),
                parent: Ino::ROOT.0,
                name: format!("round-{round}-client-{c}").into_bytes(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await?
            .into_inner();
        dirs.push(reply.attr.map_or(0, |a| a.ino));
    }
    Ok(dirs)
}

fn vref(volume: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef {
        volume: volume.to_owned(),
    })
}

/// Each client creates files in its own directory until `until`, flat out or paced.
async fn run_load(
    clients: &[Client],
    volume: &str,
    dirs: &[u64],
    pace: Pace,
    until: Until,
) -> anyhow::Result<Load> {
    let issued = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .zip(dirs)
        .map(|(ch, &dir)| {
            let (mut ch, volume, issued) = (ch.clone(), vref(volume), issued.clone());
            let mut ticks = match pace {
                Pace::FlatOut => None,
                Pace::Rate(rate) => {
                    let period = Duration::from_secs_f64(clients.len() as f64 / rate);
                    Some(tokio::time::interval(period))
                }
            };
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0.. {
                    let more = match until {
                        Until::Time(t) => Instant::now() < t,
                        Until::Count(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                    };
                    if !more {
                        break;
                    }
                    if let Some(t) = &mut ticks {
                        t.tick().await;
                        if matches!(until, Until::Time(t) if Instant::now() >= t) {
                            break;
                        }
                    }
                    let reply = ch
                        .create(pb::CreateRequest {
                            volume: volume.clone(),
                            parent: dir,
                            name: format!("file-{i:07}").into_bytes(),
                            mode: 0o644,
                            uid: 0,
                            gid: 0,
                            exclusive: true,
                        })
                        .await?
                        .into_inner();
                    let acked = Instant::now();
                    let revision = match reply.revision {
                        0 => reply.attr.map_or(0, |a| a.revision),
                        r => r,
                    };
                    acks.push((acked, revision));
                }
                Ok::<_, anyhow::Error>(acks)
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    Ok(Load {
        acks,
        elapsed: start.elapsed(),
    })
}

struct Lag {
    creates: usize,
    /// Creates per second.
    rate: f64,
    /// Source revisions per second (creates and the source's own bookkeeping).
    revision_rate: f64,
    /// Microseconds.
    hist: Histogram<u64>,
}

impl Lag {
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

struct CatchUp {
    creates: usize,
    /// Source revisions written while the mirror was cut off.
    revisions: u64,
    write_time: Duration,
    /// Revisions applied between the first and the last local commit of the catch-up.
    apply_revisions: u64,
    apply_time: Duration,
    /// Restore → first local commit (reconnecting and resuming the changelog).
    first_apply: Option<Duration>,
    /// Restore → caught up.
    total: Duration,
}

impl CatchUp {
    fn write_rate(&self) -> f64 {
        self.revisions as f64 / self.write_time.as_secs_f64()
    }
    fn apply_rate(&self) -> f64 {
        self.apply_revisions as f64 / self.apply_time.as_secs_f64().max(1e-9)
    }
}

struct Boot {
    inodes: u64,
    build_time: Duration,
    revision: u64,
    keys: u64,
    time: Duration,
    check: Result<pb::CheckMirrorReply, String>,
}

/// Fills a fresh source with `inodes` inodes, then times a fresh mirror's bootstrap from it.
async fn bootstrap(dir: &Path, inodes: u64) -> anyhow::Result<Boot> {
    let source = LocalMeta::start(&subdir(dir, "bootstrap-source")?).await?;
    let fs = source.fs.clone();
    let (info, token) = fs
        .create_volume(NewVolume {
            name: "bootstrap".into(),
            ..Default::default()
        })
        .await?;
    let vol = fs.authenticate(&info.name, &token).await?;
    // The root and one directory per task count too.
    let tasks = BUILD_TASKS.min(usize::try_from(inodes.saturating_sub(1)).unwrap_or(usize::MAX));
    let files = inodes.saturating_sub(1 + tasks as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (fs, vol, next) = (fs.clone(), vol.clone(), next.clone());
            tokio::spawn(async move {
                let owner = Owner {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                };
                let d = fs
                    .mkdir(&vol, vol.root, format!("dir-{t:03}").as_bytes(), owner)
                    .await?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let name = format!("file-{i:08}");
                    fs.create(&vol, Ino(d.ino), name.as_bytes(), owner, true)
                        .await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let build_time = started.elapsed();
    let used = fs.statfs(&vol).await?.used_inodes;
    let head = fs.engine().head().await?.revision;
    eprintln!(
        "bootstrap: source filled with {used} inodes in {:.1} s; bootstrapping a mirror ...",
        build_time.as_secs_f64()
    );

    let proxy = Proxy::start(socket_addr(&source.url)?).await?;
    let mirror_dir = subdir(dir, "bootstrap-mirror")?;
    let started = Instant::now();
    let mirror = Follower::start(&mirror_dir, &proxy, &source.admin_token).await?;
    wait_applied(&mirror.handle, head, CATCH_UP_LIMIT).await?;
    let time = started.elapsed();
    let keys = count_mirrored_keys(mirror.engine.as_ref()).await;
    let check = mirror.handle.check().await.map_err(|e| e.to_string());
    let _ = mirror.stop.send(true);
    proxy.stop().await;
    source.stop().await?;
    Ok(Boot {
        inodes: used,
        build_time,
        revision: head.0,
        keys: keys?,
        time,
        check,
    })
}

/// Keys of the mirrored keyspace in `engine`, counted in pages.
async fn count_mirrored_keys(engine: &dyn Engine) -> anyhow::Result<u64> {
    let end = prefix_end(MIRRORED);
    let mut start = MIRRORED.to_vec();
    let mut n = 0u64;
    loop {
        let page = engine.range(&start, &end, 10_000).await?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        n += page.len() as u64;
        start = last.key.clone();
        start.push(0);
    }
}

fn subdir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("{url} is not http://ADDRESS:PORT"))
}

/// The one table the run prints: every figure beside its target or comparison.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
    verdicts: Vec<bool>,
}

impl Table {
    fn row(&mut self, what: String, measured: String, target: String, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        self.verdicts.extend(ok);
        self.rows.push([what, measured, target, verdict.to_owned()]);
    }

    fn lag(&mut self, link: &str, load: &str, lag: &Lag, target: Duration) {
        let p99 = lag.ms(0.99);
        self.row(
            format!(
                "lag p50/p99/max, {link}, {load} ({:.0} creates/s, {} creates)",
                lag.rate, lag.creates
            ),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                lag.ms(0.5),
                p99,
                lag.hist.max() as f64 / 1000.0
            ),
            format!("p99 < {} ms", target.as_millis()),
            Some(p99 < target.as_secs_f64() * 1000.0),
        );
    }

    fn catch_up(&mut self, c: &CatchUp, fastest_source: f64) {
        self.row(
            format!(
                "source writes, mirror cut off ({} creates, {} revisions)",
                c.creates, c.revisions
            ),
            format!("{:.0} rev/s", c.write_rate()),
            "the comparison".into(),
            None,
        );
        self.row(
            "source writes, fastest lag run above".into(),
            format!("{fastest_source:.0} rev/s"),
            "a second comparison".into(),
            None,
        );
        // Judged against the faster of the two, so a slow cut-off phase cannot flatter it.
        let ratio = c.apply_rate() / c.write_rate().max(fastest_source);
        self.row(
            format!(
                "mirror applies while catching up ({} revisions in {:.2} s)",
                c.apply_revisions,
                c.apply_time.as_secs_f64()
            ),
            format!(
                "{:.0} rev/s = {:.1}x / {:.1}x",
                c.apply_rate(),
                c.apply_rate() / c.write_rate(),
                c.apply_rate() / fastest_source.max(1e-9)
            ),
            format!(">= {APPLY_RATIO:.0}x both"),
            Some(ratio >= APPLY_RATIO),
        );
        self.row(
            "restore -> first apply / caught up".into(),
            format!(
                "{} / {:.2} s",
                c.first_apply
                    .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                c.total.as_secs_f64()
            ),
            format!(
                "reconnect backoff <= {} ms",
                RECONNECT_BACKOFF_MAX.as_millis()
            ),
            None,
        );
    }

    fn bootstrap(&mut self, b: &Boot) {
        let secs = b.time.as_secs_f64();
        self.row(
            format!(
                "source filled directly through FsMeta ({BUILD_TASKS} tasks, {} inodes)",
                b.inodes
            ),
            format!(
                "{:.1} s, {:.0} inodes/s",
                b.build_time.as_secs_f64(),
                b.inodes as f64 / b.build_time.as_secs_f64()
            ),
            String::new(),
            None,
        );
        let (target, ok) = if b.inodes >= BOOTSTRAP_TARGET_INODES {
            (
                format!("< {BOOTSTRAP_SECS:.0} s"),
                Some(secs < BOOTSTRAP_SECS),
            )
        } else {
            (
                format!("< {BOOTSTRAP_SECS:.0} s at {BOOTSTRAP_TARGET_INODES} inodes (not run)"),
                None,
            )
        };
        self.row(
            format!(
                "bootstrap: {} inodes, {} keys, to revision {}",
                b.inodes, b.keys, b.revision
            ),
            format!("{secs:.1} s, {:.0} keys/s", b.keys as f64 / secs),
            target,
            ok,
        );
        let (measured, ok) = match &b.check {
            Ok(c) if c.equal => (format!("equal, {} keys", c.keys_compared), Some(true)),
            Ok(c) => (format!("{} divergences", c.divergences.len()), Some(false)),
            Err(e) => (format!("failed: {e}"), Some(false)),
        };
        self.row(
            "difference check after bootstrap".into(),
            measured,
            "equal".into(),
            ok,
        );
    }

    fn print(&self) {
        let header = ["measurement", "measured", "target / comparison", ""];
        let mut width = header.map(str::len);
        for r in &self.rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        println!();
        let line = |r: [&str; 4]| {
            println!(
                "{:<w0$} | {:>w1$} | {:<w2$} | {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2]
            );
        };
        line(header);
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
        println!();
        println!(
            "lag: source acknowledgement of a create -> mirror applied its revision; creates \
             are durable on both sides. targets met: {} of {}.",
            self.verdicts.iter().filter(|&&v| v).count(),
            self.verdicts.len()
        );
    }
}
