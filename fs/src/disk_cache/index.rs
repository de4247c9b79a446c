//! What the disk cache holds, in memory: every file's size and recency (least recently used
//! first), the total, and the blocks being written.

use std::collections::{BTreeMap, HashMap, HashSet};

use mirrorfs_api::Checksum;

struct Entry {
    size: u64,
    tick: u64,
}

/// The files of the cache directory by checksum, in recency order.
#[derive(Default)]
pub(super) struct Index {
    entries: HashMap<Checksum, Entry>,
    /// Recency order: tick → checksum, oldest first.
    order: BTreeMap<u64, Checksum>,
    tick: u64,
    total: u64,
    /// Blocks being written in the background.
    pending: HashSet<Checksum>,
}

impl Index {
    /// Bytes of the files.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks `c` used now; false when it is not in the cache.
    pub(super) fn touch(&mut self, c: &Checksum) -> bool {
        let tick = self.next_tick();
        let Some(e) = self.entries.get_mut(c) else {
            return false;
        };
        self.order.remove(&e.tick);
        e.tick = tick;
        self.order.insert(tick, *c);
        true
    }

    /// Adds (or replaces) `c` as the most recently used.
    pub(super) fn insert(&mut self, c: Checksum, size: u64) {
        self.remove(&c);
        let tick = self.next_tick();
        self.entries.insert(c, Entry { size, tick });
        self.order.insert(tick, c);
        self.total += size;
    }

    pub(super) fn remove(&mut self, c: &Checksum) -> bool {
        match self.entries.remove(c) {
            Some(e) => {
                self.order.remove(&e.tick);
                self.total -= e.size;
                true
            }
            None => false,
        }
    }

    /// Claims the write of `c`: false when it is cached or already being written.
    pub(super) fn start_write(&mut self, c: Checksum) -> bool {
        !self.entries.contains_key(&c) && self.pending.insert(c)
    }

    pub(super) fn end_write(&mut self, c: &Checksum) {
        self.pending.remove(c);
    }

    /// Removes the least recently used entries until the total is at most `target`; returns
    /// them.
    pub(super) fn victims(&mut self, target: u64) -> Vec<Checksum> {
        let mut out = Vec::new();
        while self.total > target {
            let Some((_, c)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&c) {
                self.total -= e.size;
            }
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> Checksum {
        Checksum([n; 32])
    }

    #[test]
    fn victims_are_least_recently_used_first() {
        let mut idx = Index::default();
        for n in 1..=4 {
            idx.insert(c(n), 10);
        }
        assert_eq!(idx.total(), 40);
        assert!(idx.touch(&c(1)));
        assert!(!idx.touch(&c(9)));
        // Re-inserting counts once and makes it the most recent.
        idx.insert(c(2), 10);
        assert_eq!((idx.total(), idx.len()), (40, 4));
        assert_eq!(idx.victims(20), vec![c(3), c(4)]);
        assert_eq!(idx.total(), 20);
        assert!(idx.remove(&c(1)));
        assert!(!idx.remove(&c(1)));
        assert_eq!(idx.victims(0), vec![c(2)]);
        assert_eq!((idx.total(), idx.len()), (0, 0));
    }

    #[test]
    fn one_write_per_block_at_a_time() {
        let mut idx = Index::default();
        assert!(idx.start_write(c(1)));
        assert!(!idx.start_write(c(1)), "already being written");
        idx.end_write(&c(1));
        idx.insert(c(1), 5);
        assert!(!idx.start_write(c(1)), "already cached");
        assert!(idx.start_write(c(2)));
    }
}
