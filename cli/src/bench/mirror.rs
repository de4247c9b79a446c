//! `mirrorfs bench mirror`: how closely a mirror follows its source, measured in one run on
//! embedded engines in a temporary directory and, with `--etcd`, again with etcd engines (the
//! source on one single-member etcd, the mirror on another, both started for the run), printed
//! side by side. The mirror follows the source through a TCP proxy that can add a one-way delay
//! and cut the link, as a link between regions would.
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
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions};
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::fs::{NewVolume, Owner};
use mirrorfs_meta::keyspace::MIRRORED;
use mirrorfs_meta::{Engine, FsMeta, client, engine::prefix_end};
use mirrorfs_testkit::{EtcdCluster, Proxy};
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
    /// Also run every measurement with etcd engines: the source and the mirror each on a
    /// single-member etcd started for the run (needs the `etcd` binary:
    /// `sudo ./scripts/setup.sh etcd-server`).
    #[arg(long)]
    pub etcd: bool,
    /// Inodes of the etcd bootstrap (0 skips it); filling etcd is slower than the embedded
    /// engine, so it defaults to fewer than `--bootstrap-inodes`.
    #[arg(long, default_value_t = 100_000)]
    pub etcd_bootstrap_inodes: u64,
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
        "mirrorfs bench mirror: embedded engines in {}{}, {} cores; the mirror follows through a \
         TCP proxy; {} per lag run, slow link {} one way",
        dir.display(),
        if a.etcd {
            "; then etcd engines (source and mirror each on a single-member etcd started for the run)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        humantime::format_duration(a.duration),
        humantime::format_duration(a.delay),
    );
    let mut runs = vec![(
        "embedded",
        measure_all(&a, &Engines::Embedded(dir.clone()), a.bootstrap_inodes).await?,
    )];
    if a.etcd {
        runs.push((
            "etcd",
            measure_all(&a, &Engines::Etcd, a.etcd_bootstrap_inodes).await?,
        ));
    }
    Table::new(&runs).print();
    Ok(())
}

/// Where a run's engines live: one embedded database per role in a directory, or one
/// single-member etcd per role (a mirror and its source are separate clusters).
enum Engines {
    Embedded(PathBuf),
    Etcd,
}

impl Engines {
    fn name(&self) -> &'static str {
        match self {
            Engines::Embedded(_) => "embedded",
            Engines::Etcd => "etcd",
        }
    }

    /// A fresh engine for `role`, and the etcd that serves it (to drop after the engine).
    async fn open(&self, role: &str) -> anyhow::Result<(Arc<dyn Engine>, Option<EtcdCluster>)> {
        match self {
            Engines::Embedded(dir) => {
                let path = subdir(dir, role)?.join("meta.redb");
                Ok((Arc::new(EmbeddedEngine::open(&path)?), None))
            }
            Engines::Etcd => {
                let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
                    .await?
                    .map_err(anyhow::Error::msg)?;
                let options = EtcdOptions {
                    max_txn_ops: mirrorfs_testkit::etcd::MAX_TXN_OPS,
                    max_request_bytes: mirrorfs_testkit::etcd::MAX_REQUEST_BYTES,
                    ..EtcdOptions::default()
                };
                let engine = EtcdEngine::connect(&cluster.endpoints(), options).await?;
                Ok((Arc::new(engine), Some(cluster)))
            }
        }
    }
}

/// Everything one engine's run measured.
struct Results {
    /// Link, load, lag and its target.
    lags: Vec<(String, String, Lag, Duration)>,
    catch_up: CatchUp,
    /// The fastest the source wrote in the lag runs, in revisions per second.
    fastest_source: f64,
    boot: Option<Boot>,
}

/// Lag under load on both links, apply throughput, and bootstrap, on `engines`.
async fn measure_all(
    a: &MirrorBenchArgs,
    engines: &Engines,
    bootstrap_inodes: u64,
) -> anyhow::Result<Results> {
    let name = engines.name();
    let rig = Rig::start(engines, a.clients).await?;
    let links = [("loopback", Duration::ZERO), ("slow link", a.delay)];
    let mut round = 0;
    let mut lags = Vec::new();
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
            eprintln!("{name}: lag: {link}, {load} ...");
            let lag = rig.lag(round, pace, a.duration).await?;
            fastest_source = fastest_source.max(lag.revision_rate);
            lags.push((link.clone(), load, lag, target));
        }
    }
    rig.proxy.set_delay(Duration::ZERO);
    eprintln!(
        "{name}: apply throughput: {} creates while the mirror is cut off ...",
        a.catch_up_creates
    );
    round += 1;
    let catch_up = rig.catch_up(round, a.catch_up_creates).await?;
    rig.stop().await?;

    let boot = if bootstrap_inodes > 0 {
        eprintln!("{name}: bootstrap: filling a source with {bootstrap_inodes} inodes ...");
        Some(bootstrap(engines, bootstrap_inodes).await?)
    } else {
        None
    };
    Ok(Results {
        lags,
        catch_up,
        fastest_source,
        boot,
    })
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
    /// The etcd clusters of the source and the mirror, if on etcd.
    _etcd: [Option<EtcdCluster>; 2],
}

impl Rig {
    async fn start(engines: &Engines, clients: usize) -> anyhow::Result<Rig> {
        let (source_engine, source_etcd) = engines.open("source").await?;
        let (mirror_engine, mirror_etcd) = engines.open("mirror").await?;
        let source = LocalMeta::start_on(source_engine, None).await?;
        let (info, token) = source
            .fs
            .create_volume(NewVolume {
                name: "bench".into(),
                ..Default::default()
            })
            .await?;
        let proxy = Proxy::start(socket_addr(&source.url)?).await?;
        let mirror = Follower::start(mirror_engine, &proxy, &source.admin_token).await?;
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
            _etcd: [source_etcd, mirror_etcd],
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
    /// Opens `engine` as a mirror and follows `proxy`'s upstream through it.
    async fn start(
        engine: Arc<dyn Engine>,
        proxy: &Proxy,
        token: &str,
    ) -> anyhow::Result<Follower> {
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
async fn bootstrap(engines: &Engines, inodes: u64) -> anyhow::Result<Boot> {
    let (source_engine, _source_etcd) = engines.open("bootstrap-source").await?;
    let (mirror_engine, _mirror_etcd) = engines.open("bootstrap-mirror").await?;
    let source = LocalMeta::start_on(source_engine, None).await?;
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
    let started = Instant::now();
    let mirror = Follower::start(mirror_engine, &proxy, &source.admin_token).await?;
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

/// The one table the run prints: every figure of every engine, beside its target or comparison.
struct Table {
    engines: Vec<&'static str>,
    /// Measurement, one cell per engine, target.
    rows: Vec<(String, Vec<String>, String, String)>,
    /// Every verdict given, per engine.
    verdicts: Vec<Vec<bool>>,
}

impl Table {
    fn new(runs: &[(&'static str, Results)]) -> Table {
        let mut t = Table {
            engines: runs.iter().map(|(name, _)| *name).collect(),
            rows: Vec::new(),
            verdicts: vec![Vec::new(); runs.len()],
        };
        let results: Vec<&Results> = runs.iter().map(|(_, r)| r).collect();
        if let Some(first) = results.first() {
            for i in 0..first.lags.len() {
                t.lag(&results, i);
            }
        }
        t.catch_up(&results);
        t.bootstrap(&results);
        t
    }

    /// A row: `cell` gives each engine's measurement and verdict (`None`: not judged).
    fn row<F>(&mut self, what: String, target: String, results: &[&Results], cell: F)
    where
        F: Fn(&Results) -> (String, Option<bool>),
    {
        let cells: Vec<_> = results.iter().map(|r| cell(r)).collect();
        let judged = cells.iter().any(|(_, ok)| ok.is_some());
        let verdict = if judged {
            let words: Vec<&str> = cells
                .iter()
                .map(|(_, ok)| match ok {
                    Some(true) => "ok",
                    Some(false) => "MISSED",
                    None => "-",
                })
                .collect();
            words.join(" / ")
        } else {
            String::new()
        };
        for (v, (_, ok)) in self.verdicts.iter_mut().zip(&cells) {
            v.extend(*ok);
        }
        let measured = cells.into_iter().map(|(m, _)| m).collect();
        self.rows.push((what, measured, target, verdict));
    }

    fn lag(&mut self, results: &[&Results], i: usize) {
        let (link, load, _, target) = &results[0].lags[i];
        self.row(
            format!("lag p50/p99/max, {link}, {load}"),
            format!("p99 < {} ms", target.as_millis()),
            results,
            |r| {
                let Some((_, _, lag, target)) = r.lags.get(i) else {
                    return ("-".into(), None);
                };
                let p99 = lag.ms(0.99);
                (
                    format!(
                        "{:.1} / {:.1} / {:.1} ms at {:.0} creates/s",
                        lag.ms(0.5),
                        p99,
                        lag.hist.max() as f64 / 1000.0,
                        lag.rate
                    ),
                    Some(p99 < target.as_secs_f64() * 1000.0),
                )
            },
        );
    }

    fn catch_up(&mut self, results: &[&Results]) {
        let creates = results[0].catch_up.creates;
        self.row(
            format!("source writes, mirror cut off ({creates} creates)"),
            "the comparison".into(),
            results,
            |r| {
                let c = &r.catch_up;
                (
                    format!("{:.0} rev/s ({} revisions)", c.write_rate(), c.revisions),
                    None,
                )
            },
        );
        self.row(
            "source writes, fastest lag run above".into(),
            "a second comparison".into(),
            results,
            |r| (format!("{:.0} rev/s", r.fastest_source), None),
        );
        self.row(
            "mirror applies while catching up (vs cut-off / fastest writes)".into(),
            format!(">= {APPLY_RATIO:.0}x both"),
            results,
            |r| {
                let c = &r.catch_up;
                // Judged against the faster of the two, so a slow cut-off phase cannot flatter it.
                let ratio = c.apply_rate() / c.write_rate().max(r.fastest_source);
                (
                    format!(
                        "{:.0} rev/s = {:.1}x / {:.1}x ({} revisions in {:.2} s)",
                        c.apply_rate(),
                        c.apply_rate() / c.write_rate(),
                        c.apply_rate() / r.fastest_source.max(1e-9),
                        c.apply_revisions,
                        c.apply_time.as_secs_f64()
                    ),
                    Some(ratio >= APPLY_RATIO),
                )
            },
        );
        self.row(
            "restore -> first apply / caught up".into(),
            format!(
                "reconnect backoff <= {} ms",
                RECONNECT_BACKOFF_MAX.as_millis()
            ),
            results,
            |r| {
                let c = &r.catch_up;
                (
                    format!(
                        "{} / {:.2} s",
                        c.first_apply
                            .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                        c.total.as_secs_f64()
                    ),
                    None,
                )
            },
        );
    }

    fn bootstrap(&mut self, results: &[&Results]) {
        if results.iter().all(|r| r.boot.is_none()) {
            return;
        }
        let not_run = || ("not run".to_owned(), None);
        self.row(
            format!("source filled directly through FsMeta ({BUILD_TASKS} tasks)"),
            String::new(),
            results,
            |r| match &r.boot {
                Some(b) => (
                    format!(
                        "{} inodes in {:.1} s, {:.0} inodes/s",
                        b.inodes,
                        b.build_time.as_secs_f64(),
                        b.inodes as f64 / b.build_time.as_secs_f64()
                    ),
                    None,
                ),
                None => not_run(),
            },
        );
        self.row(
            "bootstrap: inodes / keys / to revision".into(),
            String::new(),
            results,
            |r| match &r.boot {
                Some(b) => (format!("{} / {} / {}", b.inodes, b.keys, b.revision), None),
                None => not_run(),
            },
        );
        self.row(
            "bootstrap time".into(),
            format!(
                "< {BOOTSTRAP_SECS:.0} s at {BOOTSTRAP_TARGET_INODES} inodes (judged at that size)"
            ),
            results,
            |r| match &r.boot {
                Some(b) => {
                    let secs = b.time.as_secs_f64();
                    (
                        format!("{secs:.1} s, {:.0} keys/s", b.keys as f64 / secs),
                        (b.inodes >= BOOTSTRAP_TARGET_INODES).then_some(secs < BOOTSTRAP_SECS),
                    )
                }
                None => not_run(),
            },
        );
        self.row(
            "difference check after bootstrap".into(),
            "equal".into(),
            results,
            |r| match &r.boot {
                Some(b) => match &b.check {
                    Ok(c) if c.equal => (format!("equal, {} keys", c.keys_compared), Some(true)),
                    Ok(c) => (format!("{} divergences", c.divergences.len()), Some(false)),
                    Err(e) => (format!("failed: {e}"), Some(false)),
                },
                None => not_run(),
            },
        );
    }

    fn print(&self) {
        let mut header = vec!["measurement".to_owned()];
        header.extend(self.engines.iter().map(|e| e.to_string()));
        header.push("target / comparison".into());
        header.push(String::new());
        let lines: Vec<Vec<String>> = std::iter::once(header)
            .chain(self.rows.iter().map(|(what, measured, target, verdict)| {
                let mut line = vec![what.clone()];
                line.extend(measured.iter().cloned());
                line.push(target.clone());
                line.push(verdict.clone());
                line
            }))
            .collect();
        let columns = self.engines.len() + 3;
        let width: Vec<usize> = (0..columns)
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        println!();
        for line in &lines {
            let mut out = String::new();
            for (c, cell) in line.iter().enumerate() {
                let w = width[c];
                let piece = if c == 0 || c >= columns - 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                };
                if c > 0 {
                    out.push_str(" | ");
                }
                out.push_str(&piece);
            }
            println!("{}", out.trim_end());
        }
        println!();
        let met: Vec<String> = self
            .engines
            .iter()
            .zip(&self.verdicts)
            .map(|(e, v)| format!("{e} {} of {}", v.iter().filter(|&&ok| ok).count(), v.len()))
            .collect();
        println!(
            "lag: source acknowledgement of a create -> mirror applied its revision; creates \
             are durable on both sides. targets met: {}.",
            met.join(", ")
        );
    }
}
