//! `mirrorfs bench meta`: create, lookup, getattr and readdir throughput and latency over gRPC,
//! beside the same operations called directly on the metadata library over the same engine, in
//! the same run. The ratio between the two is the cost of the service. With `--etcd` (or
//! `--etcd-endpoints`) both paths also run over the etcd engine, printed in the same table
//! beside the embedded engine's.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mirrorfs_api::Ino;
use mirrorfs_api::meta::{self as pb, fs_client::FsClient};
use mirrorfs_meta::client;
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions};
use mirrorfs_meta::fs::{FsMeta, NewVolume, Owner, Volume};

use crate::local::LocalMeta;

#[derive(clap::Args, Clone, Debug)]
pub struct MetaBenchArgs {
    /// Files each client creates (and then looks up and stats).
    #[arg(long, default_value_t = 2000)]
    pub files_per_client: usize,
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Where the embedded engine keeps its database (default: a temporary directory on the
    /// same disk as the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also run both paths over the etcd engine, on a single-member etcd started for the run
    /// (needs the `etcd` binary: `sudo ./scripts/setup.sh etcd-server`).
    #[arg(long)]
    pub etcd: bool,
    /// Also run both paths over the etcd engine on this (dedicated, empty or mirrorfs-only)
    /// etcd cluster instead of starting one; comma separated host:port.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
}

/// One measured row.
struct Row {
    op: &'static str,
    /// "embedded" or "etcd".
    engine: &'static str,
    /// "grpc" or "direct".
    path: &'static str,
    clients: usize,
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn meta(a: MetaBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("mirrorfs-bench-")
        .tempdir()?;
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let embedded = LocalMeta::start(&dir).await?;

    println!(
        "mirrorfs bench meta: embedded engine in {}, {} files per client, {} cores",
        dir.display(),
        a.files_per_client,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // The etcd rows: the same operations, direct and over gRPC, with the etcd engine.
    let mut started_etcd = None;
    let etcd = if a.etcd || !a.etcd_endpoints.is_empty() {
        let (endpoints, options) = if a.etcd_endpoints.is_empty() {
            let cluster = mirrorfs_testkit::EtcdCluster::start(1).map_err(anyhow::Error::msg)?;
            let endpoints = cluster.endpoints();
            started_etcd = Some(cluster);
            let options = EtcdOptions {
                max_txn_ops: mirrorfs_testkit::etcd::MAX_TXN_OPS,
                max_request_bytes: mirrorfs_testkit::etcd::MAX_REQUEST_BYTES,
                ..EtcdOptions::default()
            };
            (endpoints, options)
        } else {
            (a.etcd_endpoints.clone(), EtcdOptions::default())
        };
        println!(
            "etcd engine on {} ({})",
            endpoints.join(","),
            if started_etcd.is_some() {
                "a single-member etcd started for this run"
            } else {
                "given with --etcd-endpoints"
            }
        );
        let engine = EtcdEngine::connect(&endpoints, options).await?;
        Some(LocalMeta::start_on(Arc::new(engine), None).await?)
    } else {
        None
    };
    let mut engines = vec![("embedded", &embedded)];
    engines.extend(etcd.iter().map(|e| ("etcd", e)));
    let mut rows = Vec::new();
    for (round, &clients) in a.clients.iter().enumerate() {
        for &(engine, local) in &engines {
            // Each path gets its own fresh volume so both do the same work on the same engine.
            let fs = &local.fs;
            let direct_vol = new_volume(fs, &format!("direct-{round}")).await?;
            let (grpc_info, token) = fs
                .create_volume(NewVolume {
                    name: format!("grpc-{round}"),
                    ..Default::default()
                })
                .await?;
            let mut channels = Vec::new();
            for _ in 0..clients {
                let ch = client::connect(&local.url, Duration::from_secs(5)).await?;
                channels.push(client::fs(ch, &token)?);
            }
            rows.extend(run_direct(fs, &direct_vol, clients, a.files_per_client, engine).await?);
            rows.extend(
                run_grpc(
                    &channels,
                    &grpc_info.name,
                    clients,
                    a.files_per_client,
                    engine,
                )
                .await?,
            );
        }
    }
    print_table(&rows);
    if let Some(etcd) = etcd {
        etcd.stop().await?;
    }
    drop(started_etcd);
    embedded.stop().await
}

async fn new_volume(fs: &FsMeta, name: &str) -> anyhow::Result<Volume> {
    let (info, token) = fs
        .create_volume(NewVolume {
            name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(fs.authenticate(&info.name, &token).await?)
}

fn file_name(i: usize) -> Vec<u8> {
    format!("file-{i:07}").into_bytes()
}

/// Runs `per_client(client_index)` on `clients` tasks; each returns its latencies.
async fn measure<F, Fut>(
    op: &'static str,
    (engine, path): (&'static str, &'static str),
    clients: usize,
    per_client: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Histogram<u64>>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(per_client(c))).collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(Row {
        op,
        engine,
        path,
        clients,
        ops: hist.len(),
        elapsed: start.elapsed(),
        hist,
    })
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    let _ = h.record(
        u64::try_from(since.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1),
    );
}

async fn run_direct(
    fs: &FsMeta,
    vol: &Volume,
    clients: usize,
    n: usize,
    engine: &'static str,
) -> anyhow::Result<Vec<Row>> {
    let path = (engine, "direct");
    let owner = Owner {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let mut dirs = Vec::new();
    for c in 0..clients {
        let d = fs
            .mkdir(
                vol,
                vol.root,
                format!("client-{c}").as_bytes(),
                Owner {
                    mode: 0o755,
                    ..owner
                },
            )
            .await?;
        dirs.push(Ino(d.ino));
    }
    let dirs = Arc::new(dirs);
    let mut rows = Vec::new();
    let ctx = |c: usize| (fs.clone(), vol.clone(), dirs[c]);
    rows.push(
        measure("create", path, clients, |c| {
            let (fs, vol, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for i in 0..n {
                    let t = Instant::now();
                    fs.create(&vol, dir, &file_name(i), owner, true).await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("lookup", path, clients, |c| {
            let (fs, vol, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for i in 0..n {
                    let t = Instant::now();
                    fs.lookup(&vol, dir, &file_name(i)).await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("getattr", path, clients, |c| {
            let (fs, vol, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for _ in 0..n {
                    let t = Instant::now();
                    fs.getattr(&vol, dir).await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("readdir(1000)", path, clients, |c| {
            let (fs, vol, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for _ in 0..LISTINGS {
                    let mut after = Vec::new();
                    loop {
                        let t = Instant::now();
                        let page = fs.readdir(&vol, dir, &after, 1000).await?;
                        record(&mut h, t);
                        match page.entries.last() {
                            Some(e) if page.more => after = e.name.clone(),
                            _ => break,
                        }
                    }
                }
                Ok(h)
            }
        })
        .await?,
    );
    Ok(rows)
}

type Client = FsClient<client::Authed>;

/// Full listings of its directory each client makes in the readdir rows.
const LISTINGS: usize = 10;

async fn run_grpc(
    channels: &[Client],
    volume: &str,
    clients: usize,
    n: usize,
    engine: &'static str,
) -> anyhow::Result<Vec<Row>> {
    let path = (engine, "grpc");
    let vref = || {
        Some(pb::VolumeRef {
            volume: volume.to_owned(),
        })
    };
    let mut dirs = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        let d = ch
            .clone()
            .mkdir(pb::MkdirRequest {
                volume: vref(),
                parent: Ino::ROOT.0,
                name: format!("client-{c}").into_bytes(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await?
            .into_inner();
        dirs.push(d.attr.map_or(0, |a| a.ino));
    }
    let ctx = |c: usize| (channels[c].clone(), vref(), dirs[c]);
    let mut rows = Vec::new();
    rows.push(
        measure("create", path, clients, |c| {
            let (mut ch, volume, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for i in 0..n {
                    let t = Instant::now();
                    ch.create(pb::CreateRequest {
                        volume: volume.clone(),
                        parent: dir,
                        name: file_name(i),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        exclusive: false,
                    })
                    .await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("lookup", path, clients, |c| {
            let (mut ch, volume, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for i in 0..n {
                    let t = Instant::now();
                    ch.lookup(pb::LookupRequest {
                        volume: volume.clone(),
                        parent: dir,
                        name: file_name(i),
                    })
                    .await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("getattr", path, clients, |c| {
            let (mut ch, volume, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for _ in 0..n {
                    let t = Instant::now();
                    ch.get_attr(pb::GetAttrRequest {
                        volume: volume.clone(),
                        ino: dir,
                    })
                    .await?;
                    record(&mut h, t);
                }
                Ok(h)
            }
        })
        .await?,
    );
    rows.push(
        measure("readdir(1000)", path, clients, |c| {
            let (mut ch, volume, dir) = ctx(c);
            async move {
                let mut h = Histogram::new(3)?;
                for _ in 0..LISTINGS {
                    let mut after = Vec::new();
                    loop {
                        let t = Instant::now();
                        let page = ch
                            .read_dir(pb::ReadDirRequest {
                                volume: volume.clone(),
                                ino: dir,
                                after: after.clone(),
                                limit: 1000,
                                plus: false,
                            })
                            .await?
                            .into_inner();
                        record(&mut h, t);
                        match page.entries.last() {
                            Some(e) if page.more => after = e.name.clone(),
                            _ => break,
                        }
                    }
                }
                Ok(h)
            }
        })
        .await?,
    );
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    let with_etcd = rows.iter().any(|r| r.engine == "etcd");
    let find = |engine: &str, path: &str, g: &Row| {
        rows.iter().find(|r| {
            r.engine == engine && r.path == path && r.op == g.op && r.clients == g.clients
        })
    };
    println!();
    print!(
        "{:<14} {:>7} {:<8} | {:>10} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>11}",
        "operation",
        "clients",
        "engine",
        "grpc ops/s",
        "p50 us",
        "p99 us",
        "direct ops/s",
        "p50 us",
        "p99 us",
        "grpc/direct"
    );
    if with_etcd {
        print!(" | {:>20}", "vs embedded (g, d)");
    }
    println!();
    for g in rows.iter().filter(|r| r.path == "grpc") {
        let Some(d) = find(g.engine, "direct", g) else {
            continue;
        };
        print!(
            "{:<14} {:>7} {:<8} | {:>10.0} {:>9.1} {:>9.1} | {:>12.0} {:>9.1} {:>9.1} | {:>10.2}x",
            g.op,
            g.clients,
            g.engine,
            g.rate(),
            g.us(0.5),
            g.us(0.99),
            d.rate(),
            d.us(0.5),
            d.us(0.99),
            g.rate() / d.rate()
        );
        if g.engine != "embedded"
            && let (Some(eg), Some(ed)) =
                (find("embedded", "grpc", g), find("embedded", "direct", g))
        {
            let ratios = format!("{:.2}x, {:.2}x", g.rate() / eg.rate(), d.rate() / ed.rate());
            print!(" | {ratios:>20}");
        }
        println!();
    }
    println!();
    println!(
        "creates are durable (acknowledged after fsync); each client works in its own directory."
    );
    if with_etcd {
        println!(
            "etcd: the same operations with the etcd engine behind the same service (grpc) and \
             library (direct); every read is one etcd round trip and every create one etcd \
             transaction (commits run concurrently). vs embedded: etcd ops/s / embedded ops/s, \
             grpc and direct."
        );
    }
}
