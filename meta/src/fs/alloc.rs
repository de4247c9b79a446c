//! Inode-number allocation in batches.
//!
//! Each volume has a counter record (`m/c/i/<vol>`) holding the next inode number nobody has
//! reserved. A process reserves [`BATCH`] numbers at a time with one compare-and-set
//! transaction on the counter and hands them out from memory, so creating a file does not
//! touch the counter. Reserved ranges never overlap, whatever the number of processes; numbers
//! of a batch that a process does not use before it exits are skipped, never reused.

use mirrorfs_api::Ino;
use mirrorfs_api::records::Counter;
use tokio::sync::Mutex;

use super::Volume;
use super::keys;
use super::txn::Backoff;
use crate::engine::{Compare, Engine, Txn, TxnOutcome};
use crate::error::{MetaError, Result};

/// Inode numbers reserved per counter transaction.
pub const BATCH: u64 = 1024;
/// The first number a new volume hands out (the root directory is [`Ino::ROOT`]).
pub const FIRST_FREE: u64 = Ino::ROOT.0 + 1;

/// The unused part of this process's current batch for one volume.
#[derive(Default)]
pub struct InodePool {
    range: Mutex<(u64, u64)>,
}

impl InodePool {
    /// The next unused inode number of `vol`.
    pub async fn next(&self, engine: &dyn Engine, vol: &Volume) -> Result<Ino> {
        let mut r = self.range.lock().await;
        if r.0 >= r.1 {
            *r = reserve(engine, vol, BATCH).await?;
        }
        let ino = Ino(r.0);
        r.0 += 1;
        Ok(ino)
    }
}

/// Reserves `n` inode numbers of `vol`: `[start, end)`.
pub async fn reserve(engine: &dyn Engine, vol: &Volume, n: u64) -> Result<(u64, u64)> {
    let key = keys::inode_counter(vol.id);
    let mut backoff = Backoff::new(&vol.name);
    loop {
        let Some(kv) = engine.get(&key).await? else {
            return Err(MetaError::NoVolume {
                volume: vol.name.clone(),
            });
        };
        let counter: Counter = keys::decode(&kv)?;
        let start = counter.next.max(FIRST_FREE);
        let end = start.checked_add(n).ok_or_else(|| MetaError::NoSpace {
            volume: vol.name.clone(),
            what: "inode numbers are exhausted".into(),
        })?;
        let txn = Txn::new()
            .when(Compare::unchanged(&kv))
            .put(key.clone(), keys::encode(&Counter { next: end }));
        match engine.txn(txn).await? {
            TxnOutcome::Committed(_) => return Ok((start, end)),
            TxnOutcome::Conflict => backoff.conflict().await?,
        }
    }
}
