//! The read-check-write cycle of one file-system operation.
//!
//! A [`Tx`] reads records through the engine, remembers the revision of every key it read (or
//! that the key was absent), stages writes, and commits them as ONE engine transaction whose
//! compares are exactly that read set. If anything it read changed in between, the engine
//! refuses the commit and the operation runs again from scratch ([`Backoff`] bounds how often).
//! An operation that fails with a file-system error first checks that its reads still hold, so
//! that errors, like successes, describe one consistent state.

use std::collections::BTreeMap;
use std::time::Duration;

use mirrorfs_api::meta::FileKind;
use mirrorfs_api::records::{Dentry, Inode, UsageDelta};
use mirrorfs_api::{Ino, Revision};
use rand::Rng;

use super::{Volume, keys};
use crate::engine::{Compare, Engine, KeyValue, Mutation, Txn, TxnOutcome, prefix_end};
use crate::error::{MetaError, Result};

/// Attempts of one operation before it fails with [`MetaError::Contention`].
pub const MAX_ATTEMPTS: u32 = 64;

/// Bounded, randomised backoff between attempts of one operation.
pub struct Backoff<'a> {
    volume: &'a str,
    attempts: u32,
}

impl<'a> Backoff<'a> {
    pub fn new(volume: &'a str) -> Self {
        Self {
            volume,
            attempts: 0,
        }
    }

    /// Called after a conflict: waits a short random time, or gives up.
    pub async fn conflict(&mut self) -> Result<()> {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return Err(MetaError::Contention {
                volume: self.volume.to_owned(),
                attempts: self.attempts,
            });
        }
        // Up to 100 µs after the first conflict, doubling to at most 10 ms.
        let cap_us = (50u64 << self.attempts.min(8)).min(10_000);
        let wait = rand::rng().random_range(0..=cap_us);
        tokio::time::sleep(Duration::from_micros(wait)).await;
        Ok(())
    }
}

/// A signed change of a volume's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub bytes: i64,
    pub inodes: i64,
}

impl Delta {
    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }

    pub fn record(&self) -> UsageDelta {
        UsageDelta {
            bytes: self.bytes,
            inodes: self.inodes,
        }
    }
}

struct Slot {
    /// Revision the inode was read at (0: created by this transaction).
    revision: Revision,
    /// `None` once removed by this transaction.
    inode: Option<Inode>,
    dirty: bool,
}

pub struct Tx<'a> {
    engine: &'a dyn Engine,
    pub vol: &'a Volume,
    /// Every key read, with the revision it had (0: absent). These become the compares.
    read: BTreeMap<Vec<u8>, Revision>,
    inodes: BTreeMap<Ino, Slot>,
    dentries: BTreeMap<Vec<u8>, Option<Dentry>>,
    /// Other writes (extents), applied first, in order.
    extra: Vec<Mutation>,
    /// Usage change of the staged writes.
    pub delta: Delta,
    committed: bool,
}

/// The kind of an inode record that passed [`Tx::inode`].
pub fn kind(i: &Inode) -> FileKind {
    i.kind()
}

/// Decodes an inode record and checks what every reader relies on.
pub fn decode_inode(kv: &KeyValue) -> Result<Inode> {
    let inode: Inode = keys::decode(kv)?;
    if inode.kind() == FileKind::Unspecified {
        return Err(keys::corrupt(
            &kv.key,
            format!("inode has no valid kind ({})", inode.kind),
        ));
    }
    Ok(inode)
}

pub fn decode_dentry(kv: &KeyValue) -> Result<Dentry> {
    let d: Dentry = keys::decode(kv)?;
    if d.ino == 0 {
        return Err(keys::corrupt(&kv.key, "entry points to inode 0"));
    }
    Ok(d)
}

impl<'a> Tx<'a> {
    pub fn new(engine: &'a dyn Engine, vol: &'a Volume) -> Self {
        Self {
            engine,
            vol,
            read: BTreeMap::new(),
            inodes: BTreeMap::new(),
            dentries: BTreeMap::new(),
            extra: Vec::new(),
            delta: Delta::default(),
            committed: false,
        }
    }

    fn no_inode(&self, ino: Ino) -> MetaError {
        MetaError::NoInode {
            volume: self.vol.name.clone(),
            ino,
        }
    }

    /// Records that the transaction depends on `key` having `revision` (0: absent).
    pub fn depend(&mut self, key: Vec<u8>, revision: Revision) {
        self.read.entry(key).or_insert(revision);
    }

    /// Records that the transaction depends on `kv` being unchanged.
    pub fn depend_on(&mut self, kv: &KeyValue) {
        self.depend(kv.key.clone(), kv.mod_revision);
    }

    /// The inode `ino` as this transaction sees it (with its staged changes).
    pub async fn inode(&mut self, ino: Ino) -> Result<Inode> {
        if let Some(slot) = self.inodes.get(&ino) {
            return slot.inode.clone().ok_or_else(|| self.no_inode(ino));
        }
        let key = keys::inode(self.vol.id, ino);
        match self.engine.get(&key).await? {
            None => {
                self.depend(key, Revision(0));
                Err(self.no_inode(ino))
            }
            Some(kv) => {
                let inode = decode_inode(&kv)?;
                self.depend_on(&kv);
                self.inodes.insert(
                    ino,
                    Slot {
                        revision: kv.mod_revision,
                        inode: Some(inode.clone()),
                        dirty: false,
                    },
                );
                Ok(inode)
            }
        }
    }

    /// The inode `ino`, which must be a directory.
    pub async fn dir(&mut self, ino: Ino) -> Result<Inode> {
        let i = self.inode(ino).await?;
        if kind(&i) != FileKind::Directory {
            return Err(MetaError::NotDirectory {
                volume: self.vol.name.clone(),
                ino,
            });
        }
        Ok(i)
    }

    /// The revision the inode was read at (0 if this transaction created it).
    pub fn revision(&self, ino: Ino) -> Revision {
        self.inodes.get(&ino).map_or(Revision(0), |s| s.revision)
    }

    /// Stages a new version of a loaded inode.
    pub fn put_inode(&mut self, ino: Ino, inode: Inode) {
        let slot = self.inodes.entry(ino).or_insert(Slot {
            revision: Revision(0),
            inode: None,
            dirty: true,
        });
        slot.inode = Some(inode);
        slot.dirty = true;
    }

    /// Changes a loaded (or loadable) inode in place.
    pub async fn update(&mut self, ino: Ino, f: impl FnOnce(&mut Inode)) -> Result<Inode> {
        let mut i = self.inode(ino).await?;
        f(&mut i);
        self.put_inode(ino, i.clone());
        Ok(i)
    }

    /// Stages a new inode under a number that must not be in use.
    pub fn create_inode(&mut self, ino: Ino, inode: Inode) {
        self.depend(keys::inode(self.vol.id, ino), Revision(0));
        self.inodes.insert(
            ino,
            Slot {
                revision: Revision(0),
                inode: Some(inode),
                dirty: true,
            },
        );
        self.delta.inodes += 1;
    }

    /// Stages the removal of an inode (last link gone) and of its extents.
    pub fn remove_inode(&mut self, ino: Ino, inode: &Inode) {
        if kind(inode) == FileKind::File {
            let prefix = keys::extents(self.vol.id, ino);
            self.extra.push(Mutation::DeleteRange {
                end: prefix_end(&prefix),
                start: prefix,
            });
            self.delta.bytes -= i64::try_from(inode.size).unwrap_or(i64::MAX);
        }
        self.delta.inodes -= 1;
        if let Some(slot) = self.inodes.get_mut(&ino) {
            slot.inode = None;
            slot.dirty = true;
        } else {
            self.inodes.insert(
                ino,
                Slot {
                    revision: Revision(0),
                    inode: None,
                    dirty: true,
                },
            );
        }
    }

    /// The entry `name` of directory `parent`, as this transaction sees it.
    pub async fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        let key = keys::dentry(self.vol.id, parent, name);
        if let Some(staged) = self.dentries.get(&key) {
            return Ok(*staged);
        }
        match self.engine.get(&key).await? {
            None => {
                self.depend(key, Revision(0));
                Ok(None)
            }
            Some(kv) => {
                let d = decode_dentry(&kv)?;
                self.depend_on(&kv);
                Ok(Some(d))
            }
        }
    }

    pub fn put_dentry(&mut self, parent: Ino, name: &[u8], ino: Ino, kind: FileKind) {
        let d = Dentry {
            ino: ino.0,
            kind: kind as i32,
        };
        self.dentries
            .insert(keys::dentry(self.vol.id, parent, name), Some(d));
    }

    pub fn delete_dentry(&mut self, parent: Ino, name: &[u8]) {
        self.dentries
            .insert(keys::dentry(self.vol.id, parent, name), None);
    }

    /// Whether directory `ino` has no entries in the engine. The caller must have read the
    /// directory's inode through this transaction: every change of a directory's entries also
    /// writes the directory's inode, so the compare on that inode covers this range read.
    pub async fn is_empty_dir(&mut self, ino: Ino) -> Result<bool> {
        debug_assert!(self.inodes.contains_key(&ino));
        let prefix = keys::dir(self.vol.id, ino);
        Ok(self
            .engine
            .range(&prefix, &prefix_end(&prefix), 1)
            .await?
            .is_empty())
    }

    /// Stages a raw write (extents), applied before the other writes.
    pub fn push(&mut self, m: Mutation) {
        self.extra.push(m);
    }

    /// Commits the staged writes, with `usage_key` receiving the usage delta if it is not
    /// zero. `None` means a read changed meanwhile: run the operation again.
    pub async fn commit(
        &mut self,
        usage_key: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Revision>> {
        let mut txn = Txn::new();
        txn.compares = self
            .read
            .iter()
            .map(|(k, r)| Compare::ModRevision {
                key: k.clone(),
                revision: *r,
            })
            .collect();
        txn.mutations = std::mem::take(&mut self.extra);
        for (key, d) in &self.dentries {
            txn.mutations.push(match d {
                Some(d) => Mutation::Put {
                    key: key.clone(),
                    value: keys::encode(d),
                },
                None => Mutation::Delete { key: key.clone() },
            });
        }
        for (ino, slot) in &self.inodes {
            if !slot.dirty {
                continue;
            }
            let key = keys::inode(self.vol.id, *ino);
            txn.mutations.push(match &slot.inode {
                Some(i) => Mutation::Put {
                    key,
                    value: keys::encode(i),
                },
                None => Mutation::Delete { key },
            });
        }
        if !self.delta.is_zero() {
            txn.mutations.push(Mutation::Put {
                key: usage_key(),
                value: keys::encode(&self.delta.record()),
            });
        }
        match self.engine.txn(txn).await? {
            TxnOutcome::Committed(c) => {
                self.committed = true;
                Ok(Some(c.revision))
            }
            TxnOutcome::Conflict => Ok(None),
        }
    }

    /// Decides what to do with an error of an attempt: `Ok(Some(e))` to return it (the reads
    /// it was based on still hold, or it does not depend on them), `Ok(None)` to run the
    /// operation again because something it read has changed.
    pub async fn confirm(&self, e: MetaError) -> Result<Option<MetaError>> {
        if self.committed
            || matches!(
                e,
                MetaError::Engine(_)
                    | MetaError::Contention { .. }
                    | MetaError::CorruptRecord { .. }
            )
        {
            return Ok(Some(e));
        }
        for (key, rev) in &self.read {
            let now = self
                .engine
                .get(key)
                .await?
                .map_or(Revision(0), |kv| kv.mod_revision);
            if now != *rev {
                return Ok(None);
            }
        }
        Ok(Some(e))
    }
}
