//! `mirrorfs volume …` and `mirrorfs status`: administration over the Admin API.

use std::time::Duration;

use anyhow::Context;
use mirrorfs_api::meta::{
    CreateVolumeRequest, DeleteVolumeRequest, ListVolumesRequest, StatusRequest, StorageConfig,
};
use mirrorfs_meta::client;

use crate::args::{AdminConn, VolumeCommand};
use crate::token;

type AdminClient = mirrorfs_api::meta::admin_client::AdminClient<client::Authed>;

async fn connect(conn: &AdminConn) -> anyhow::Result<AdminClient> {
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
fn explain(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

pub async fn volume(cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            conn,
            bucket,
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
                        options: Default::default(),
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
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:>6} {:>14} {:>12}  BUCKET",
                    "NAME", "ID", "USED BYTES", "INODES"
                );
                for v in vols {
                    let bucket = v.storage.map(|s| s.bucket_url).unwrap_or_default();
                    println!(
                        "{:<24} {:>6} {:>14} {:>12}  {}",
                        v.name, v.id, v.used_bytes, v.used_inodes, bucket
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
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
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
    }
    Ok(())
}
