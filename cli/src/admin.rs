//! `mirrorfs volume …` and `mirrorfs status`: administration over the Admin API.

use std::time::Duration;

use anyhow::Context;
use mirrorfs_api::meta::{
    CheckMirrorReply, CheckMirrorRequest, CreateVolumeRequest, DeleteVolumeRequest,
    ListVolumesRequest, MirrorStatus, ReplicationStatus, StatusRequest, StorageConfig, Timestamp,
};
use mirrorfs_meta::client;

use crate::args::{AdminConn, VolumeCommand};
use crate::token;

type AdminClient = mirrorfs_api::meta::admin_client::AdminClient<client::Authed>;

pub(crate) async fn connect(conn: &AdminConn) -> anyhow::Result<AdminClient> {
    let token = match (&conn.admin_token, &conn.admin_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => token::read(path)?,
        (None, None) => anyhow::bail!(
            "no admin token: pass --admin-token-file (the meta service writes <data-dir>/admin.token) or set MIRRORFS_ADMIN_TOKEN"
        ),
    };
    let channel = client::connect(&conn.meta, Duration::from_secs(5)).await?;
    Ok(client::admin(channel, &token)?)
}

/// A status message without the gRPC framing, for people.
pub(crate) fn explain(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

pub async fn volume(cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            conn,
            bucket,
            bucket_opt,
            capacity_bytes,
            capacity_inodes,
            token_file,
            source_volume,
        } => {
            if let Some(path) = &token_file {
                anyhow::ensure!(
                    !path.exists(),
                    "token file {} already exists; choose a new path",
                    path.display()
                );
            }
            let mut admin = connect(&conn).await?;
            let reply = admin
                .create_volume(CreateVolumeRequest {
                    name: name.clone(),
                    storage: Some(StorageConfig {
                        bucket_url: bucket,
                        options: bucket_opt.into_iter().collect(),
                    }),
                    capacity_bytes,
                    capacity_inodes,
                    source_volume: source_volume.unwrap_or_default(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            let id = reply.volume.map_or(0, |v| v.id);
            match token_file {
                Some(path) => {
                    token::write_new(&path, &reply.token)
                        .with_context(|| format!("volume {name:?} was created but its token could not be saved; delete and re-create it"))?;
                    println!(
                        "created volume {name} (id {id}); token written to {}",
                        path.display()
                    );
                }
                None => {
                    println!("created volume {name} (id {id})");
                    println!("token: {}", reply.token);
                    println!("(the token is shown only once; store it now)");
                }
            }
        }
        VolumeCommand::List { conn, json } => {
            let mut admin = connect(&conn).await?;
            let vols = admin
                .list_volumes(ListVolumesRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .volumes;
            if json {
                let rows: Vec<_> = vols
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "name": v.name, "id": v.id,
                            "bucket": v.storage.as_ref().map_or("", |s| s.bucket_url.as_str()),
                            "used_bytes": v.used_bytes, "used_inodes": v.used_inodes,
                            "capacity_bytes": v.capacity_bytes, "capacity_inodes": v.capacity_inodes,
                            "source_volume": v.source_volume,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mirror = vols.iter().any(|v| !v.source_volume.is_empty());
                let source = |v: &mirrorfs_api::meta::VolumeInfo| match mirror {
                    true => format!("{:<24} ", v.source_volume),
                    false => String::new(),
                };
                println!(
                    "{:<24} {}{:>6} {:>14} {:>12}  BUCKET",
                    "NAME",
                    if mirror {
                        format!("{:<24} ", "SOURCE VOLUME")
                    } else {
                        String::new()
                    },
                    "ID",
                    "USED BYTES",
                    "INODES"
                );
                for v in &vols {
                    let bucket = v.storage.as_ref().map_or("", |s| s.bucket_url.as_str());
                    println!(
                        "{:<24} {}{:>6} {:>14} {:>12}  {}",
                        v.name,
                        source(v),
                        v.id,
                        v.used_bytes,
                        v.used_inodes,
                        bucket
                    );
                }
            }
        }
        VolumeCommand::Delete { name, conn } => {
            let mut admin = connect(&conn).await?;
            let r = admin
                .delete_volume(DeleteVolumeRequest { name: name.clone() })
                .await
                .map_err(explain)?
                .into_inner();
            println!("deleted volume {name} at revision {}", r.revision);
        }
    }
    Ok(())
}

pub async fn status(conn: AdminConn, json: bool) -> anyhow::Result<()> {
    let mut admin = connect(&conn).await?;
    let s = admin
        .status(StatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let last_commit = s.last_commit.map_or(0, |t| t.seconds);
    if json {
        let v = serde_json::json!({
            "cluster_id": s.cluster_id, "role": s.role, "engine": s.engine,
            "revision": s.revision, "compacted_revision": s.compacted_revision,
            "last_commit_unix": last_commit, "uptime_seconds": s.uptime_seconds,
            "volumes": s.volumes, "version": s.version,
            "mirror": s.mirror.as_ref().map(mirror_json),
            "replication": s.replication.as_ref().map(replication_json),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("cluster    {} ({})", s.cluster_id, s.role);
    println!("engine     {}", s.engine);
    println!(
        "revision   {} (changelog from {})",
        s.revision,
        s.compacted_revision + 1
    );
    println!("volumes    {}", s.volumes);
    println!("uptime     {}s", s.uptime_seconds);
    println!("version    {}", s.version);
    if let Some(m) = &s.mirror {
        println!();
        println!(
            "mirror of  {} (cluster {})",
            m.source_url, m.source_cluster_id
        );
        println!("state      {}", m.state);
        println!(
            "applied    source revision {} of {} (lag {} revisions, {:.3} s)",
            m.applied_revision, m.source_revision, m.lag_revisions, m.lag_seconds
        );
        match &m.unreachable_since {
            Some(t) if !m.source_reachable => {
                println!(
                    "source     UNREACHABLE since {} (serving reads from local state)",
                    rfc3339(t)
                )
            }
            _ => println!("source     reachable"),
        }
        if m.bootstraps > 0 {
            println!(
                "bootstrap  {} so far; last at source revision {} ({})",
                m.bootstraps,
                m.last_bootstrap_revision,
                m.last_bootstrap.as_ref().map_or_else(String::new, rfc3339)
            );
        }
        if !m.last_error.is_empty() {
            println!("error      {}", m.last_error);
        }
        if let Some(c) = &m.last_check {
            println!("check      {}", check_summary(c));
        }
    }
    if let Some(r) = &s.replication {
        print_replication(r);
    }
    Ok(())
}

fn print_replication(r: &ReplicationStatus) {
    println!();
    let about = if r.counted_exactly { "" } else { "at least " };
    if r.replicated_volumes.is_empty() {
        println!("replication  none (every mirror volume reads the source bucket)");
        return;
    }
    println!(
        "replication  into the own buckets of {}",
        r.replicated_volumes.join(", ")
    );
    println!(
        "backlog      {about}{} ready ({} retrying), {} leased, {} full sync(s) in progress",
        r.ready, r.retrying, r.leased, r.full_syncs
    );
    if let Some(t) = &r.oldest_enqueued {
        println!("oldest task  queued {}", rfc3339(t));
    }
    println!(
        "done         {} copied or already there, {} failed, {} bytes copied (since this meta service started)",
        r.completed_total, r.failed_total, r.bytes_copied_total
    );
    println!(
        "enqueuer     at local revision {} ({} behind)",
        r.enqueuer_revision, r.enqueuer_lag
    );
    if !r.last_error.is_empty() {
        println!("last error   {}", r.last_error);
    }
}

fn replication_json(r: &ReplicationStatus) -> serde_json::Value {
    serde_json::json!({
        "replicated_volumes": r.replicated_volumes, "ready": r.ready, "leased": r.leased,
        "retrying": r.retrying, "full_syncs": r.full_syncs, "counted_exactly": r.counted_exactly,
        "oldest_enqueued_unix": r.oldest_enqueued.map(|t| t.seconds),
        "completed_total": r.completed_total, "failed_total": r.failed_total,
        "bytes_copied_total": r.bytes_copied_total, "enqueuer_revision": r.enqueuer_revision,
        "enqueuer_lag": r.enqueuer_lag, "last_error": r.last_error,
    })
}

pub async fn check(conn: AdminConn, json: bool) -> anyhow::Result<()> {
    let mut admin = connect(&conn).await?;
    let c = admin
        .check_mirror(CheckMirrorRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&check_json(&c))?);
    } else {
        println!("{}", check_summary(&c));
        for d in &c.divergences {
            println!("  {}: {}", d.section, d.detail);
        }
    }
    anyhow::ensure!(
        c.equal,
        "the mirror differs from its source at revision {}",
        c.revision
    );
    Ok(())
}

fn check_summary(c: &CheckMirrorReply) -> String {
    let when = c.checked.as_ref().map_or_else(String::new, rfc3339);
    if c.equal {
        format!(
            "equal to the source at revision {} ({} keys compared, {when})",
            c.revision, c.keys_compared
        )
    } else {
        format!(
            "DIFFERS from the source at revision {} in {} section(s) ({when})",
            c.revision,
            c.divergences.len()
        )
    }
}

fn check_json(c: &CheckMirrorReply) -> serde_json::Value {
    serde_json::json!({
        "revision": c.revision, "equal": c.equal, "keys_compared": c.keys_compared,
        "checked_unix": c.checked.map_or(0, |t| t.seconds),
        "divergences": c.divergences.iter().map(|d| serde_json::json!({"section": d.section, "detail": d.detail})).collect::<Vec<_>>(),
    })
}

fn mirror_json(m: &MirrorStatus) -> serde_json::Value {
    let unix = |t: &Option<Timestamp>| t.map(|t| t.seconds);
    serde_json::json!({
        "source_url": m.source_url, "source_cluster_id": m.source_cluster_id, "state": m.state,
        "applied_revision": m.applied_revision, "applied_committed_unix": unix(&m.applied_committed),
        "source_revision": m.source_revision, "lag_revisions": m.lag_revisions, "lag_seconds": m.lag_seconds,
        "source_reachable": m.source_reachable, "unreachable_since_unix": unix(&m.unreachable_since),
        "bootstraps": m.bootstraps, "last_bootstrap_revision": m.last_bootstrap_revision,
        "last_bootstrap_unix": unix(&m.last_bootstrap), "last_error": m.last_error,
        "last_check": m.last_check.as_ref().map(check_json),
    })
}

/// A timestamp as UTC RFC 3339, to the second.
fn rfc3339(t: &Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
