//! Striped in-process locks on directories (and files being written).
//!
//! Operations that modify a directory take the stripe of `(volume, directory)` for the duration
//! of their read-check-commit cycle, so that the operations of one process on one directory
//! queue instead of conflicting with each other in the engine and retrying. Operations on
//! different directories almost always take different stripes and run concurrently. The locks
//! are an optimisation only: correctness comes from the compares of each transaction, which
//! also cover other processes.
//!
//! An operation that touches two directories (rename) takes both stripes at once, in stripe
//! order, and never takes another lock while holding them, so stripes cannot deadlock.

use mirrorfs_api::{Ino, VolumeId};
use tokio::sync::{Mutex, MutexGuard};

/// Number of stripes: enough that unrelated directories rarely share one.
const STRIPES: usize = 1024;

pub struct Stripes {
    locks: Box<[Mutex<()>]>,
}

/// Held stripes; dropping releases them.
pub struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for Stripes {
    fn default() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Stripes {
    fn index(vol: VolumeId, ino: Ino) -> usize {
        // A 64-bit mix (splitmix64 finaliser) so that consecutive inode numbers spread.
        let mut x = vol.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ino.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x % STRIPES as u64) as usize
    }

    /// Locks the stripes of every inode in `inos` (duplicates allowed), in stripe order.
    pub async fn lock(&self, vol: VolumeId, inos: &[Ino]) -> Held<'_> {
        let mut idx: Vec<usize> = inos.iter().map(|i| Self::index(vol, *i)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.locks[i].lock().await);
        }
        Held { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn opposite_orders_do_not_deadlock() {
        let s = Arc::new(Stripes::default());
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let (a, b) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
                for _ in 0..100 {
                    let _g = s.lock(VolumeId(1), &[Ino(a), Ino(b), Ino(a)]).await;
                    tokio::task::yield_now().await;
                }
            }));
        }
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(Duration::from_secs(20), all).await;
        assert!(done.is_ok(), "stripes deadlocked");
    }

    #[test]
    fn neighbouring_inodes_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..256 {
            seen.insert(Stripes::index(VolumeId(1), Ino(i)));
        }
        assert!(seen.len() > 200, "{}", seen.len());
    }
}
