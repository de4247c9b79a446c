//! `mirrorfs meta serve`: opens the engine, binds the listeners, and runs the meta service and
//! its HTTP endpoint until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mirrorfs_api::Revision;
use mirrorfs_meta::engine::embedded::EmbeddedEngine;
use mirrorfs_meta::engine::etcd::{EtcdEngine, EtcdOptions, EtcdTls};
use mirrorfs_meta::follower::{self, FollowerConfig};
use mirrorfs_meta::metrics::{MetaMetrics, MirrorMetrics};
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, FsMeta};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::args::{EtcdArgs, ServeArgs};
use crate::token;

pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create data directory {}", a.data_dir.display()))?;
    let engine = open_engine(&a).await?;
    let admin = AdminToken::new(&admin_token(&a)?);
    let replication = match &a.replication_token_file {
        Some(path) => Some(AdminToken::new(&token::read(path)?)),
        None => None,
    };
    let mut registry = Registry::default();
    let metrics = Arc::new(MetaMetrics::register(&mut registry));
    let (stop_tx, stop_rx) = watch::channel(false);

    let (fs, mirror) = match &a.mirror_of {
        None => (FsMeta::open(engine.clone()).await?, None),
        Some(source) => {
            let fs = FsMeta::open_mirror(engine.clone()).await?;
            let config = mirror_config(&a, source, &mut registry)?;
            let handle = follower::start(engine.clone(), config, stop_rx.clone()).await?;
            tracing::info!(%source, "following the source as a read-only mirror");
            (fs, Some(handle))
        }
    };
    let state = Arc::new(MetaState {
        fs,
        admin,
        metrics: metrics.clone(),
        started: Instant::now(),
        replication,
        mirror,
    });

    let grpc = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let http = TcpListener::bind(a.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics", a.metrics_listen))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    // Tests and scripts read these two lines to find the ports.
    println!("mirrorfs meta: serving gRPC on http://{grpc_addr}");
    println!("mirrorfs meta: serving /metrics and /healthz on http://{http_addr}");
    tracing::info!(%grpc_addr, %http_addr, engine = engine.kind(), data_dir = %a.data_dir.display(), "meta service started");

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_task = tokio::spawn(mirrorfs_meta::http::serve(
        http,
        Arc::new(registry),
        stopped(stop_rx.clone()),
    ));
    let upkeep = tokio::spawn(upkeep(
        engine,
        metrics,
        a.changelog_retention,
        stop_rx.clone(),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    mirrorfs_meta::service::run(grpc, state, stopped(stop_rx)).await?;
    let _ = upkeep.await;
    http_task.await??;
    Ok(())
}

/// How to follow the source of a mirror cluster.
fn mirror_config(
    a: &ServeArgs,
    source: &str,
    registry: &mut Registry,
) -> anyhow::Result<FollowerConfig> {
    let Some(token_file) = &a.mirror_token_file else {
        anyhow::bail!(
            "--mirror-of needs --mirror-token-file: a file with the source's replication token (or admin token)"
        );
    };
    let mut config = FollowerConfig::new(source, token::read(token_file)?);
    config.check_interval = (!a.mirror_check_interval.is_zero()).then_some(a.mirror_check_interval);
    config.replication.reconcile_every =
        (!a.reconcile_interval.is_zero()).then_some(a.reconcile_interval);
    config.metrics = Some(Arc::new(MirrorMetrics::register(registry)));
    Ok(config)
}

async fn open_engine(a: &ServeArgs) -> anyhow::Result<Arc<dyn Engine>> {
    if let Some(endpoints) = a.engine.strip_prefix("etcd://") {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        let engine = EtcdEngine::connect(&endpoints, etcd_options(&a.etcd)?).await?;
        return Ok(Arc::new(engine));
    }
    match a.engine.as_str() {
        "embedded" => {
            let path = a.data_dir.join("meta.redb");
            Ok(Arc::new(EmbeddedEngine::open(&path)?))
        }
        other => anyhow::bail!(
            "unknown engine {other:?}; the available engines are `embedded` and `etcd://host:port[,host:port...]`"
        ),
    }
}

/// The etcd engine's options from the command line.
pub fn etcd_options(a: &EtcdArgs) -> anyhow::Result<EtcdOptions> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = if a.etcd_ca_file.is_some() || a.etcd_cert_file.is_some() {
        Some(EtcdTls {
            ca_pem: a.etcd_ca_file.as_ref().map(read).transpose()?,
            identity_pem: match (&a.etcd_cert_file, &a.etcd_key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        })
    } else {
        None
    };
    let user = match (&a.etcd_user, &a.etcd_password_file) {
        (Some(u), Some(p)) => {
            let password = String::from_utf8(read(p)?)
                .with_context(|| format!("{} is not UTF-8", p.display()))?;
            Some((
                u.clone(),
                password.trim_end_matches(['\r', '\n']).to_string(),
            ))
        }
        _ => None,
    };
    Ok(EtcdOptions {
        prefix: a.etcd_prefix.as_bytes().to_vec(),
        max_txn_ops: a.etcd_max_txn_ops,
        max_request_bytes: a.etcd_max_request_bytes,
        user,
        tls,
        ..EtcdOptions::default()
    })
}

/// The admin token from --admin-token-file, or from `<data-dir>/admin.token`, generated there
/// on first start.
fn admin_token(a: &ServeArgs) -> anyhow::Result<String> {
    if let Some(path) = &a.admin_token_file {
        return token::read(path);
    }
    let path: PathBuf = a.data_dir.join("admin.token");
    if !path.exists() {
        token::write_new(&path, &token::generate())?;
        tracing::info!(path = %path.display(), "generated the admin token");
    }
    token::read(&path)
}

/// Keeps the revision gauges current and compacts the changelog beyond the retention window.
async fn upkeep(
    engine: Arc<dyn Engine>,
    metrics: Arc<MetaMetrics>,
    retention: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_compaction = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Ok(head) = engine.head().await else {
            continue;
        };
        metrics.revision.set(head.revision.0);
        metrics.compacted_revision.set(head.compacted.0);
        if retention > 0
            && last_compaction.elapsed() >= Duration::from_secs(60)
            && head.revision.0 > head.compacted.0 + retention
        {
            last_compaction = Instant::now();
            match engine.compact(Revision(head.revision.0 - retention)).await {
                Ok(r) => tracing::info!(compacted = %r, "changelog compacted"),
                Err(e) => tracing::warn!(error = %e, "changelog compaction failed"),
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
