//! Mirror mode: the metadata of a mirror cluster. Its mirrored keyspace is written only by the
//! follower, so every client mutation is refused with [`MetaError::ReadOnly`]. Its volumes are
//! its own: a mirror volume (cluster-local, `l/mv/<name>`) exposes a source volume under its
//! own name and token, so source tokens do not open mirror volumes and the reverse.

use mirrorfs_api::meta::{ReplicationTarget, VolumeInfo};
use mirrorfs_api::records::{self, MirrorVolume, VolumeName};
use mirrorfs_api::{Ino, Revision, VolumeId};

use super::{FsMeta, NewVolume, Volume, keys, names, now, random_hex, usage, volume_info};
use crate::engine::{Compare, KeyValue, Txn, TxnOutcome, prefix_end};
use crate::error::{MetaError, Result};

/// Mirror volume records, by name (cluster-local).
pub const MIRROR_VOLUME: &[u8] = b"l/mv/";

fn mirror_volume_key(name: &str) -> Vec<u8> {
    let mut k = MIRROR_VOLUME.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl FsMeta {
    /// Refuses a mutation on a mirror cluster.
    pub(super) fn writable(&self, vol: &Volume) -> Result<()> {
        if self.is_mirror() {
            return Err(MetaError::ReadOnly {
                volume: vol.name.clone(),
            });
        }
        Ok(())
    }

    /// The source volume named `name` in the mirrored keyspace.
    async fn source_volume(&self, name: &str) -> Result<Option<(VolumeId, records::Volume)>> {
        if names::check_volume_name(name).is_err() {
            return Ok(None);
        }
        let Some(name_kv) = self.engine.get(&keys::volume_name(name)).await? else {
            return Ok(None);
        };
        let id = VolumeId(keys::decode::<VolumeName>(&name_kv)?.id);
        let Some(vol_kv) = self.engine.get(&keys::volume(id)).await? else {
            return Ok(None);
        };
        Ok(Some((id, keys::decode(&vol_kv)?)))
    }

    async fn mirror_volume(&self, name: &str) -> Result<Option<(KeyValue, MirrorVolume)>> {
        if names::check_volume_name(name).is_err() {
            return Ok(None);
        }
        match self.engine.get(&mirror_volume_key(name)).await? {
            Some(kv) => {
                let rec = keys::decode(&kv)?;
                Ok(Some((kv, rec)))
            }
            None => Ok(None),
        }
    }

    /// The source volume a mirror volume exposes, or a message saying why it is not there.
    async fn exposed(&self, mv: &MirrorVolume) -> Result<(VolumeId, records::Volume)> {
        match self.source_volume(&mv.source_volume).await? {
            Some(found) => Ok(found),
            None => {
                let applied = self.engine.head().await?.revision;
                Err(MetaError::NoVolume {
                    volume: format!(
                        "{} (mirror volume {:?} exposes source volume {:?}, which this mirror does not have at local revision {applied}: not yet replicated, or deleted in the source)",
                        mv.source_volume, mv.name, mv.source_volume
                    ),
                })
            }
        }
    }

    pub(super) async fn create_mirror_volume(
        &self,
        new: NewVolume,
        source_volume: &str,
    ) -> Result<(VolumeInfo, String)> {
        names::check_volume_name(&new.name)?;
        if source_volume.is_empty() {
            return Err(MetaError::InvalidArgument(format!(
                "this cluster is a mirror: create volume {:?} with the source volume it exposes (--source-volume)",
                new.name
            )));
        }
        let storage = (!new.storage.bucket_url.is_empty()).then(|| new.storage.clone());
        let mv = MirrorVolume {
            name: new.name.clone(),
            source_volume: source_volume.to_owned(),
            token_hash: Vec::new(),
            created: Some(now()),
            storage,
        };
        let (_, source) = self.exposed(&mv).await?;
        let token = random_hex(32);
        let rec = MirrorVolume {
            token_hash: blake3::hash(token.as_bytes()).as_bytes().to_vec(),
            ..mv
        };
        let key = mirror_volume_key(&new.name);
        let txn = Txn::new()
            .when(Compare::absent(key.clone()))
            .put(key, keys::encode(&rec));
        match self.engine.txn(txn).await? {
            TxnOutcome::Committed(_) => {}
            TxnOutcome::Conflict => {
                return Err(MetaError::VolumeExists { volume: new.name });
            }
        }
        let t = usage::totals(self.engine.as_ref(), VolumeId(source.id)).await?;
        Ok((mirror_info(&rec, &source, &t), token))
    }

    pub(super) async fn list_mirror_volumes(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        for mv in self.mirror_volume_records().await? {
            let info = match self.source_volume(&mv.source_volume).await? {
                Some((id, source)) => {
                    let t = usage::totals(self.engine.as_ref(), id).await?;
                    mirror_info(&mv, &source, &t)
                }
                // Listed even when the source volume is gone, so it can be deleted.
                None => VolumeInfo {
                    name: mv.name.clone(),
                    source_volume: mv.source_volume.clone(),
                    created: mv.created,
                    storage: mv.storage.clone(),
                    ..Default::default()
                },
            };
            out.push(info);
        }
        Ok(out)
    }

    pub(super) async fn delete_mirror_volume(&self, name: &str) -> Result<Revision> {
        let Some((kv, _)) = self.mirror_volume(name).await? else {
            return Err(MetaError::NoVolume {
                volume: name.to_owned(),
            });
        };
        let txn = Txn::new()
            .when(Compare::unchanged(&kv))
            .delete(kv.key.clone());
        match self.engine.txn(txn).await? {
            TxnOutcome::Committed(c) => Ok(c.revision),
            TxnOutcome::Conflict => Err(MetaError::Contention {
                volume: name.to_owned(),
                attempts: 1,
            }),
        }
    }

    /// A mirror volume's storage as a client opening it sees it.
    pub(super) async fn mirror_volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let Some((_, mv)) = self.mirror_volume(name).await? else {
            return Err(MetaError::NoVolume {
                volume: name.to_owned(),
            });
        };
        let (id, source) = self.exposed(&mv).await?;
        let t = usage::totals(self.engine.as_ref(), id).await?;
        Ok(mirror_info(&mv, &source, &t))
    }

    /// Where the blocks of each source volume exposed by a mirror volume with its own bucket
    /// come from and go to (`only`: that source volume alone). Mirror volumes that share the
    /// source bucket need no replication and are left out.
    pub async fn replication_targets(
        &self,
        only: Option<VolumeId>,
    ) -> Result<Vec<ReplicationTarget>> {
        let mut by_source: std::collections::BTreeMap<u64, ReplicationTarget> = Default::default();
        for mv in self.mirror_volume_records().await? {
            let Some(storage) = mv.storage.clone().filter(|s| !s.bucket_url.is_empty()) else {
                continue;
            };
            let Some((id, source)) = self.source_volume(&mv.source_volume).await? else {
                continue;
            };
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let t = by_source.entry(id.0).or_insert_with(|| ReplicationTarget {
                source_volume_id: id.0,
                source_volume: source.name.clone(),
                source_storage: source.storage.clone(),
                mirror_storage: Vec::new(),
                mirror_volumes: Vec::new(),
            });
            if !t.mirror_storage.contains(&storage) {
                t.mirror_storage.push(storage);
            }
            t.mirror_volumes.push(mv.name);
        }
        Ok(by_source.into_values().collect())
    }

    /// Every mirror volume record, in name order.
    async fn mirror_volume_records(&self) -> Result<Vec<MirrorVolume>> {
        let end = prefix_end(MIRROR_VOLUME);
        let mut start = MIRROR_VOLUME.to_vec();
        let mut out = Vec::new();
        loop {
            let page = self.engine.range(&start, &end, 256).await?;
            for kv in &page {
                out.push(keys::decode(kv)?);
            }
            match page.last() {
                Some(last) if page.len() == 256 => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn authenticate_mirror(&self, name: &str, token: &str) -> Result<Volume> {
        let Some((kv, mv)) = self.mirror_volume(name).await? else {
            return Err(MetaError::NoVolume {
                volume: name.to_owned(),
            });
        };
        let stored: [u8; 32] = mv
            .token_hash
            .as_slice()
            .try_into()
            .map_err(|_| keys::corrupt(&kv.key, "the token hash is not 32 bytes"))?;
        // `blake3::Hash` compares in constant time.
        if blake3::Hash::from_bytes(stored) != blake3::hash(token.as_bytes()) {
            return Err(MetaError::Unauthenticated {
                what: format!("mirror volume {name:?}"),
            });
        }
        let (id, source) = self.exposed(&mv).await?;
        Ok(Volume {
            id,
            name: mv.name,
            root: if source.root_ino == 0 {
                Ino::ROOT
            } else {
                Ino(source.root_ino)
            },
        })
    }
}

/// A mirror volume as listed: the source volume's usage under the mirror's name; its storage is
/// its own bucket, or the source bucket it shares.
fn mirror_info(mv: &MirrorVolume, source: &records::Volume, t: &usage::Totals) -> VolumeInfo {
    let own = mv.storage.clone().filter(|s| !s.bucket_url.is_empty());
    VolumeInfo {
        name: mv.name.clone(),
        source_volume: mv.source_volume.clone(),
        created: mv.created,
        storage: own.or_else(|| source.storage.clone()),
        source_storage: source.storage.clone(),
        ..volume_info(source, t)
    }
}
