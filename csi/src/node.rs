//! The Node service: one read-only FUSE mount of a volume per node at the staging path
//! (NodeStage), read-only bind mounts of the volume's directory into pods (NodePublish), their
//! removal (idempotent on missing, unmounted or broken targets), stats and condition, and the
//! recovery of staged volumes after a restart of the plugin.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache_dir;
use crate::capability::{self, Access};
use crate::config::Config;
use crate::csi;
use crate::error::{CsiError, Result};
use crate::locks::Locks;
use crate::mirror::{self, Follow, Lookup, MirrorView, MissingPath};
use crate::mounter::{BindError, Health, Mounter};
use crate::mountinfo::{self, MountEntry};
use crate::params::{Secrets, VolumeSpec};
use crate::process::FuseMount;
use crate::state::{PublishRecord, StageRecord, Store};
use crate::volume_id;

/// At most this many stacked mounts are removed from one path.
const MAX_STACK: usize = 16;
/// How long NodeGetVolumeStats waits for the mirror's lag.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NodeCore {
    config: Arc<Config>,
    mounter: Arc<dyn Mounter>,
    mirror: Arc<dyn MirrorView>,
    store: Store,
    locks: Locks,
}

fn os_err(what: String) -> impl FnOnce(std::io::Error) -> CsiError {
    move |e| CsiError::Internal(format!("{what}: {e}"))
}

impl NodeCore {
    pub fn new(
        config: Arc<Config>,
        mounter: Arc<dyn Mounter>,
        mirror: Arc<dyn MirrorView>,
        store: Store,
    ) -> Self {
        Self {
            config,
            mounter,
            mirror,
            store,
            locks: Locks::default(),
        }
    }

    /// A path from the CO: absolute, no `..`, inside `--kubelet-dir`.
    fn host_path(&self, field: &'static str, p: &str) -> Result<PathBuf> {
        if p.is_empty() {
            return Err(CsiError::MissingField(field));
        }
        let path = PathBuf::from(p);
        if p.contains('\0')
            || !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(CsiError::invalid(
                field,
                format!("{p:?} must be an absolute path without \".\" or \"..\" components"),
            ));
        }
        if !path.starts_with(&self.config.kubelet_dir) {
            return Err(CsiError::invalid(
                field,
                format!(
                    "{p:?} is outside the kubelet directory {} (--kubelet-dir); the driver mounts only where the kubelet asks",
                    self.config.kubelet_dir.display()
                ),
            ));
        }
        Ok(path)
    }

    async fn table(&self) -> Result<Vec<MountEntry>> {
        self.mounter
            .mount_table()
            .await
            .map_err(os_err("reading the mount table".into()))
    }

    /// Removes every mount stacked at `path`.
    async fn unmount_all(&self, path: &Path) -> Result<()> {
        for _ in 0..MAX_STACK {
            let table = self.table().await?;
            if mountinfo::top_at(&table, path).is_none() {
                return Ok(());
            }
            self.mounter
                .unmount(path)
                .await
                .map_err(os_err(format!("unmounting {}", path.display())))?;
        }
        Err(CsiError::Mount(format!(
            "{} still has mounts after {MAX_STACK} unmounts",
            path.display()
        )))
    }

    /// Whether the staged FUSE mount of `rec` is live and healthy.
    async fn stage_healthy(&self, rec: &StageRecord, table: &[MountEntry]) -> bool {
        match mountinfo::top_at(table, &rec.staging_path) {
            Some(e) if e.is_fuse() => {
                self.mounter.health(&rec.staging_path).await == Health::Directory
            }
            _ => false,
        }
    }

    /// Mounts the volume of `rec` at its staging path (removing a broken mount first) and checks
    /// it is read-only.
    async fn mount_stage(&self, rec: &StageRecord, secrets: &Secrets) -> Result<()> {
        let staging = &rec.staging_path;
        self.unmount_all(staging).await?;
        let m = FuseMount {
            volume: rec.volume.clone(),
            meta_address: rec.meta_address.clone(),
            mount_point: staging.clone(),
            log_file: self.store.log_file(&rec.volume_id),
            secrets: secrets.clone(),
            cache: rec.cache.clone(),
        };
        self.mounter.mount_fuse(&m).await.map_err(|msg| {
            CsiError::Mount(format!(
                "volume {:?}: mounting mirror volume {:?} from {} at {} failed: {msg}",
                rec.volume_id,
                rec.volume,
                rec.meta_address,
                staging.display()
            ))
        })?;
        let table = self.table().await?;
        let ro = mountinfo::top_at(&table, staging).map(|e| (e.is_fuse(), e.read_only()));
        match ro {
            Some((true, true)) => Ok(()),
            Some((true, false)) => {
                self.mounter
                    .remount_read_only(staging)
                    .await
                    .map_err(os_err(format!(
                        "remounting {} read-only",
                        staging.display()
                    )))?;
                let table = self.table().await?;
                if mountinfo::top_at(&table, staging).is_some_and(|e| e.read_only()) {
                    Ok(())
                } else {
                    let _ = self.unmount_all(staging).await;
                    Err(CsiError::Mount(format!(
                        "volume {:?}: the FUSE mount at {} is not read-only; unmounted it",
                        rec.volume_id,
                        staging.display()
                    )))
                }
            }
            _ => Err(CsiError::Mount(format!(
                "volume {:?}: mirrorfs mount reported success but {} is not a FUSE mount (see {})",
                rec.volume_id,
                staging.display(),
                m.log_file.display()
            ))),
        }
    }

    pub async fn stage(&self, r: csi::NodeStageVolumeRequest) -> Result<()> {
        let id = volume_id::check(&r.volume_id)?;
        let staging = self.host_path("staging_target_path", &r.staging_target_path)?;
        let spec = VolumeSpec::from_context(&r.volume_context)?;
        let access = capability::for_node(r.volume_capability.as_ref(), id, spec.lenient)?;
        let secrets = Secrets::parse(&r.secrets, "node-stage")?;
        let _guard = self.locks.lock(id).await?;
        let table = self.table().await?;
        let existing = self
            .store
            .load(id)
            .map_err(os_err(format!("reading the record of volume {id:?}")))?;
        if let Some(rec) = &existing {
            if rec.staging_path != staging || rec.spec() != spec || rec.access != access {
                return Err(CsiError::Conflict(format!(
                    "volume {id:?} is already staged at {} with other attributes or capability; unstage it first",
                    rec.staging_path.display()
                )));
            }
            if self.stage_healthy(rec, &table).await {
                // Newer secrets (a rotated token) are kept for later repairs.
                self.save_secrets(id, &secrets)?;
                return Ok(());
            }
            tracing::warn!(volume_id = id, staging = %staging.display(), "staged mount missing or broken: remounting");
        } else if let Some(e) = mountinfo::top_at(&table, &staging) {
            return Err(CsiError::Precondition(format!(
                "volume {id:?}: staging path {} is already a mount of {} ({}) that this driver did not make; unmount it",
                staging.display(),
                e.source,
                e.fs_type
            )));
        }
        // The directory must exist in the mirror before anything is mounted.
        mirror::locate(
            &*self.mirror,
            &spec,
            &secrets.token,
            id,
            self.config.path_wait,
        )
        .await?;
        let created = match self.mounter.health(&staging).await {
            Health::Missing => self
                .mounter
                .make_dir(&staging)
                .await
                .map_err(os_err(format!("creating {}", staging.display())))?,
            Health::NotDirectory => {
                return Err(CsiError::Precondition(format!(
                    "volume {id:?}: staging path {} is not a directory",
                    staging.display()
                )));
            }
            Health::Directory | Health::Broken(_) => false,
        };
        let rec = StageRecord {
            volume_id: id.to_owned(),
            staging_path: staging.clone(),
            volume: spec.volume.clone(),
            meta_address: spec.meta_address.clone(),
            subdir: spec.subdir.as_str().to_owned(),
            lenient: spec.lenient,
            access,
            created_staging: existing.as_ref().map_or(created, |r| r.created_staging),
            cache: match &existing {
                Some(r) => r.cache.clone(),
                None => cache_dir::for_volume(&self.config, id),
            },
            publishes: existing.map(|r| r.publishes).unwrap_or_default(),
        };
        // Recorded before mounting: a plugin that dies mid-way finds the volume on restart.
        self.save(&rec)?;
        self.save_secrets(id, &secrets)?;
        if let Err(e) = self.mount_stage(&rec, &secrets).await {
            if rec.publishes.is_empty() {
                let _ = self.store.remove(id);
                if rec.created_staging {
                    let _ = self.mounter.remove_dir(&staging).await;
                }
                if let Some(c) = &rec.cache {
                    let _ = self.mounter.remove_cache_dir(&c.dir).await;
                }
            }
            return Err(e);
        }
        tracing::info!(volume_id = id, volume = %spec.volume, staging = %staging.display(), "staged");
        Ok(())
    }

    fn save(&self, rec: &StageRecord) -> Result<()> {
        self.store.save(rec).map_err(os_err(format!(
            "writing the record of volume {:?} in {}",
            rec.volume_id,
            self.config.state_dir.display()
        )))
    }

    fn save_secrets(&self, id: &str, s: &Secrets) -> Result<()> {
        self.store.save_secrets(id, s).map_err(os_err(format!(
            "writing the secrets of volume {id:?} in {}",
            self.config.state_dir.display()
        )))
    }

    pub async fn unstage(&self, r: csi::NodeUnstageVolumeRequest) -> Result<()> {
        let id = volume_id::check_teardown(&r.volume_id)?;
        let staging = self.host_path("staging_target_path", &r.staging_target_path)?;
        let _guard = self.locks.lock(id).await?;
        let rec = self
            .store
            .load(id)
            .map_err(os_err(format!("reading the record of volume {id:?}")))?;
        if let Some(rec) = &rec
            && rec.staging_path != staging
        {
            return Err(CsiError::invalid(
                "staging_target_path",
                format!(
                    "volume {id:?} is staged at {}, not at {}",
                    rec.staging_path.display(),
                    staging.display()
                ),
            ));
        }
        let table = self.table().await?;
        let ours =
            rec.is_some() || mountinfo::top_at(&table, &staging).is_some_and(|e| e.is_fuse());
        if ours {
            self.unmount_all(&staging).await?;
        }
        if let Some(rec) = rec {
            if rec.created_staging {
                let _ = self.mounter.remove_dir(&staging).await;
            }
            // After the mount: its process must let go of the directory first. On failure the
            // record stays, so the kubelet's retry of the unstage deletes it.
            if let Some(c) = &rec.cache {
                self.mounter.remove_cache_dir(&c.dir).await.map_err(|e| {
                    CsiError::Internal(format!(
                        "volume {id:?}: unmounted, but cannot delete its disk cache {}: {e}",
                        c.dir.display()
                    ))
                })?;
            }
            self.store
                .remove(id)
                .map_err(os_err(format!("removing the record of volume {id:?}")))?;
            tracing::info!(volume_id = id, staging = %staging.display(), "unstaged");
        }
        Ok(())
    }

    /// The staged record of `id` at `staging`, its FUSE mount repaired if broken.
    async fn staged(
        &self,
        id: &str,
        staging: &Path,
        secrets: Option<&Secrets>,
    ) -> Result<(StageRecord, Vec<MountEntry>)> {
        let rec = self
            .store
            .load(id)
            .map_err(os_err(format!("reading the record of volume {id:?}")))?
            .filter(|r| r.staging_path == staging)
            .ok_or_else(|| {
                CsiError::Precondition(format!(
                    "volume {id:?} is not staged at {} on this node: NodeStageVolume must succeed first",
                    staging.display()
                ))
            })?;
        let table = self.table().await?;
        if !self.stage_healthy(&rec, &table).await {
            let stored;
            let secrets = match secrets {
                Some(s) => s,
                None => {
                    stored = self.stored_secrets(id)?;
                    &stored
                }
            };
            tracing::warn!(volume_id = id, staging = %staging.display(), "staged mount broken or gone: remounting");
            self.mount_stage(&rec, secrets).await?;
            return Ok((rec, self.table().await?));
        }
        Ok((rec, table))
    }

    fn stored_secrets(&self, id: &str) -> Result<Secrets> {
        self.store
            .load_secrets(id)
            .map_err(os_err(format!("reading the secrets of volume {id:?}")))?
            .ok_or_else(|| {
                CsiError::Precondition(format!(
                    "volume {id:?}: no secrets recorded to remount it; unstage and stage it again"
                ))
            })
    }

    pub async fn publish(&self, r: csi::NodePublishVolumeRequest) -> Result<()> {
        let id = volume_id::check(&r.volume_id)?;
        let target = self.host_path("target_path", &r.target_path)?;
        if r.staging_target_path.is_empty() {
            return Err(CsiError::Precondition(format!(
                "volume {id:?}: staging_target_path is empty; the mirrorfs driver stages volumes (STAGE_UNSTAGE_VOLUME) and inline volumes are not supported"
            )));
        }
        let staging = self.host_path("staging_target_path", &r.staging_target_path)?;
        let spec = VolumeSpec::from_context(&r.volume_context)?;
        let access = capability::for_node(r.volume_capability.as_ref(), id, spec.lenient)?;
        // A node-publish secret is optional: without a token the staged volume's secrets serve.
        let secrets = if r.secrets.contains_key(crate::params::SECRET_TOKEN) {
            Some(Secrets::parse(&r.secrets, "node-publish")?)
        } else {
            None
        };
        let _guard = self.locks.lock(id).await?;
        let (mut rec, table) = self.staged(id, &staging, secrets.as_ref()).await?;
        if rec.spec() != spec {
            return Err(CsiError::Conflict(format!(
                "volume {id:?} was staged with other volume attributes than this publish carries"
            )));
        }
        let current = mountinfo::top_at(&table, &target).cloned();
        if let Some(p) = rec.publishes.iter().find(|p| p.target == target) {
            if p.access != access || p.readonly != r.readonly {
                return Err(CsiError::Conflict(format!(
                    "volume {id:?} is already published at {} with another capability or readonly flag",
                    target.display()
                )));
            }
            if let Some(e) = &current
                && e.read_only()
                && self.mounter.health(&target).await == Health::Directory
            {
                return Ok(());
            }
            tracing::warn!(volume_id = id, target = %target.display(), "published mount broken or gone: binding again");
            self.unmount_all(&target).await?;
        } else if let Some(e) = &current {
            return Err(CsiError::Precondition(format!(
                "volume {id:?}: target {} is already a mount of {} ({}) that this driver did not make; unmount it or use another target",
                target.display(),
                e.source,
                e.fs_type
            )));
        } else if access.single_node()
            && let Some(other) = rec.publishes.iter().find(|p| p.target != target)
        {
            return Err(CsiError::Precondition(format!(
                "volume {id:?} has a single-node access mode and is already published at {}; use ReadOnlyMany to share it",
                other.target.display()
            )));
        }
        self.bind(id, &rec, &spec, &access, &target, secrets.as_ref())
            .await?;
        rec.publishes.retain(|p| p.target != target);
        rec.publishes.push(PublishRecord {
            target: target.clone(),
            access,
            readonly: r.readonly,
        });
        self.save(&rec)?;
        tracing::info!(volume_id = id, target = %target.display(), subdir = %spec.subdir, "published read-only");
        Ok(())
    }

    /// Creates `target` if needed, binds the volume's directory there read-only, verifies `ro`.
    async fn bind(
        &self,
        id: &str,
        rec: &StageRecord,
        spec: &VolumeSpec,
        access: &Access,
        target: &Path,
        secrets: Option<&Secrets>,
    ) -> Result<()> {
        let created = match self.mounter.health(target).await {
            Health::Missing => self.mounter.make_dir(target).await.map_err(|e| {
                CsiError::Precondition(format!(
                    "volume {id:?}: cannot create target {}: {e}",
                    target.display()
                ))
            })?,
            Health::Directory => false,
            Health::NotDirectory => {
                return Err(CsiError::Precondition(format!(
                    "volume {id:?}: target {} exists and is not a directory",
                    target.display()
                )));
            }
            Health::Broken(e) => {
                return Err(CsiError::Mount(format!(
                    "volume {id:?}: target {} is unusable ({e})",
                    target.display()
                )));
            }
        };
        let start = Instant::now();
        loop {
            let r = self
                .mounter
                .bind_read_only(&rec.staging_path, &spec.subdir, target, &access.flags)
                .await;
            let err = match r {
                Ok(()) => break,
                Err(BindError::Os(m)) => CsiError::Mount(format!(
                    "volume {id:?}: publishing {} of mirror volume {:?} at {} failed: {m}",
                    spec.subdir,
                    spec.volume,
                    target.display()
                )),
                Err(BindError::NotDirectory { kind, .. }) => CsiError::NotADirectory(Box::new(
                    self.local_missing(
                        id,
                        spec,
                        secrets,
                        Lookup::NotDirectory { revision: 0, kind },
                    )
                    .await,
                )),
                Err(BindError::Missing {
                    existing_prefix,
                    component,
                }) => {
                    // Ask the mirror: it may have the directory already (the mount catches up
                    // within moments), or lag behind a source that has it (wait), or not.
                    let token = match secrets {
                        Some(s) => Some(s.token.clone()),
                        None => self.store.load_secrets(id).ok().flatten().map(|s| s.token),
                    };
                    let remaining = self.config.path_wait.saturating_sub(start.elapsed());
                    let located = match &token {
                        Some(t) => {
                            Some(mirror::locate(&*self.mirror, spec, t, id, remaining).await)
                        }
                        None => None,
                    };
                    match located {
                        Some(Ok(_)) if start.elapsed() < self.config.path_wait => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Some(Ok(revision)) => CsiError::PathMissing(Box::new(
                            self.local_missing(id, spec, None, Lookup::Directory { revision })
                                .await,
                        )),
                        Some(Err(e @ (CsiError::PathMissing(_) | CsiError::NotADirectory(_)))) => e,
                        _ => CsiError::PathMissing(Box::new(
                            self.local_missing(
                                id,
                                spec,
                                None,
                                Lookup::Missing {
                                    revision: 0,
                                    existing_prefix,
                                    missing_component: component,
                                    blocking: None,
                                },
                            )
                            .await,
                        )),
                    }
                }
            };
            if created {
                let _ = self.mounter.remove_dir(target).await;
            }
            return Err(err);
        }
        let table = self.table().await?;
        match mountinfo::top_at(&table, target) {
            Some(e) if e.read_only() => Ok(()),
            other => {
                let what = other.map_or("not mounted".to_owned(), |e| e.options.join(","));
                let _ = self.unmount_all(target).await;
                Err(CsiError::Mount(format!(
                    "volume {id:?}: the bind mount at {} is not read-only ({what}); removed it",
                    target.display()
                )))
            }
        }
    }

    /// A missing-path report from what the node saw (when the mirror cannot be asked).
    async fn local_missing(
        &self,
        id: &str,
        spec: &VolumeSpec,
        secrets: Option<&Secrets>,
        lookup: Lookup,
    ) -> MissingPath {
        let follow = match secrets {
            Some(s) => self.mirror.follow(spec, &s.token).await,
            None => Follow::Unknown("not asked".into()),
        };
        MissingPath {
            csi_volume: id.to_owned(),
            spec: spec.clone(),
            lookup,
            follow,
            waited: Duration::ZERO,
        }
    }

    pub async fn unpublish(&self, r: csi::NodeUnpublishVolumeRequest) -> Result<()> {
        let id = volume_id::check_teardown(&r.volume_id)?;
        let target = self.host_path("target_path", &r.target_path)?;
        let _guard = self.locks.lock(id).await?;
        self.unmount_all(&target).await?;
        self.mounter.remove_dir(&target).await.map_err(|e| {
            CsiError::Internal(format!(
                "volume {id:?}: unmounted {} but cannot remove it: {e}",
                target.display()
            ))
        })?;
        if let Some(mut rec) = self
            .store
            .load(id)
            .map_err(os_err(format!("reading the record of volume {id:?}")))?
        {
            let before = rec.publishes.len();
            rec.publishes.retain(|p| p.target != target);
            if rec.publishes.len() != before {
                self.save(&rec)?;
            }
        }
        tracing::info!(volume_id = id, target = %target.display(), "unpublished");
        Ok(())
    }

    pub async fn stats(
        &self,
        r: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        let id = volume_id::check(&r.volume_id)?;
        if r.volume_path.is_empty() {
            return Err(CsiError::MissingField("volume_path"));
        }
        let path = PathBuf::from(&r.volume_path);
        let rec = self
            .store
            .load(id)
            .map_err(os_err(format!("reading the record of volume {id:?}")))?
            .ok_or_else(|| {
                CsiError::UnknownVolume(format!("volume {id:?} is not staged on this node"))
            })?;
        let known = rec.staging_path == path || rec.publishes.iter().any(|p| p.target == path);
        let table = self.table().await?;
        if !known || mountinfo::top_at(&table, &path).is_none() {
            return Err(CsiError::UnknownVolume(format!(
                "volume {id:?} is not mounted at {}",
                path.display()
            )));
        }
        let mut usage = Vec::new();
        let condition = match self.mounter.health(&path).await {
            Health::Directory => {
                match self.mounter.usage(&path).await {
                    Ok(u) => {
                        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                        usage.push(csi::VolumeUsage {
                            available: i(u.available_bytes),
                            total: i(u.total_bytes),
                            used: i(u.used_bytes),
                            unit: csi::volume_usage::Unit::Bytes as i32,
                        });
                        usage.push(csi::VolumeUsage {
                            available: i(u.free_inodes),
                            total: i(u.total_inodes),
                            used: i(u.used_inodes),
                            unit: csi::volume_usage::Unit::Inodes as i32,
                        });
                    }
                    Err(e) => tracing::warn!(volume_id = id, error = %e, "statfs failed"),
                }
                self.lag_condition(id, &rec).await
            }
            other => csi::VolumeCondition {
                abnormal: true,
                message: format!(
                    "the mount of mirror volume {:?} at {} is broken ({}); the driver remounts it at the next NodeStage/NodePublish: restart the pod",
                    rec.volume,
                    path.display(),
                    match other {
                        Health::Broken(e) => e,
                        Health::Missing => "missing".into(),
                        _ => "not a directory".into(),
                    }
                ),
            },
        };
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        })
    }

    async fn lag_condition(&self, id: &str, rec: &StageRecord) -> csi::VolumeCondition {
        let follow = match self.store.load_secrets(id).ok().flatten() {
            Some(s) => tokio::time::timeout(LAG_TIMEOUT, self.mirror.follow(&rec.spec(), &s.token))
                .await
                .unwrap_or(Follow::Unknown("status did not answer in time".into())),
            None => Follow::Unknown("no secrets recorded".into()),
        };
        let max = self.config.max_lag.as_secs_f64();
        match follow {
            Follow::Mirror {
                lag_seconds,
                lag_revisions,
                source_reachable,
            } if lag_seconds > max => csi::VolumeCondition {
                abnormal: true,
                message: format!(
                    "mirror volume {:?} is stale: lag {lag_seconds:.0} s ({lag_revisions} revisions) exceeds --max-lag {max:.0} s{}",
                    rec.volume,
                    if source_reachable {
                        ""
                    } else {
                        "; the source is unreachable"
                    }
                ),
            },
            Follow::Mirror {
                lag_seconds,
                lag_revisions,
                ..
            } => csi::VolumeCondition {
                abnormal: false,
                message: format!(
                    "mounted read-only; mirror lag {lag_seconds:.1} s ({lag_revisions} revisions)"
                ),
            },
            Follow::Source => csi::VolumeCondition {
                abnormal: false,
                message: "mounted read-only from a source cluster".into(),
            },
            Follow::Unknown(why) => csi::VolumeCondition {
                abnormal: false,
                message: format!("mounted read-only; mirror lag unknown ({why})"),
            },
        }
    }

    pub fn info(&self) -> csi::NodeGetInfoResponse {
        csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone().unwrap_or_default(),
            max_volumes_per_node: 0,
            accessible_topology: self.config.region.as_ref().map(|r| csi::Topology {
                segments: [(crate::TOPOLOGY_REGION_KEY.to_owned(), r.clone())].into(),
            }),
        }
    }

    /// After a restart: remount staged volumes whose FUSE mount is gone or broken, and bind
    /// their publishes again (binds never re-attach to a new FUSE connection).
    pub async fn recover(&self) {
        for rec in self.store.all() {
            let id = rec.volume_id.clone();
            let Some(_guard) = self.locks.try_lock_repair(&id) else {
                continue;
            };
            if let Err(e) = self.recover_one(&rec).await {
                tracing::error!(volume_id = %id, error = %e, "could not repair the staged volume");
            }
        }
    }

    async fn recover_one(&self, rec: &StageRecord) -> Result<()> {
        let table = self.table().await?;
        let mut remounted = false;
        if !self.stage_healthy(rec, &table).await {
            let secrets = self.stored_secrets(&rec.volume_id)?;
            tracing::warn!(volume_id = %rec.volume_id, "staged mount gone or broken after restart: remounting");
            self.mount_stage(rec, &secrets).await?;
            remounted = true;
        }
        let spec = rec.spec();
        for p in &rec.publishes {
            let table = self.table().await?;
            let live = mountinfo::top_at(&table, &p.target).is_some()
                && self.mounter.health(&p.target).await == Health::Directory;
            if live && !remounted {
                continue;
            }
            tracing::warn!(volume_id = %rec.volume_id, target = %p.target.display(), "binding the published path again");
            self.unmount_all(&p.target).await?;
            self.bind(&rec.volume_id, rec, &spec, &p.access, &p.target, None)
                .await?;
        }
        tracing::info!(volume_id = %rec.volume_id, staging = %rec.staging_path.display(), "staged volume checked after restart");
        Ok(())
    }
}
