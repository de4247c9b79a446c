//! In-memory caches shared by every handle of a mounted volume:
//!
//! - [`BlockCache`]: verified blocks, least recently used evicted beyond a byte budget; a block
//!   being fetched is fetched once however many readers (and readahead) want it.
//! - [`MetaCache`]: attributes by inode, entries by (parent, name), symlink targets. Entries
//!   live until the volume watch (or this client's own mutation) invalidates them. A reply
//!   that raced with an invalidation is not cached: each key hashes to a shard whose
//!   generation every invalidation bumps, and a fill made with a generation read before the
//!   request is dropped if the shard moved on meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use mirrorfs_api::BlockId;
use mirrorfs_api::meta::Attr;

use crate::error::FsError;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Fetch = Shared<BoxFuture<'static, Result<Bytes, FsError>>>;

#[derive(Default)]
struct Lru {
    map: HashMap<BlockId, (Bytes, u64)>,
    order: BTreeMap<u64, BlockId>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    fn get(&mut self, id: &BlockId) -> Option<Bytes> {
        let (data, at) = self.map.get_mut(id)?;
        self.order.remove(at);
        self.tick += 1;
        *at = self.tick;
        self.order.insert(self.tick, id.clone());
        Some(data.clone())
    }

    fn insert(&mut self, id: BlockId, data: Bytes, budget: u64) {
        if data.len() as u64 > budget {
            return;
        }
        if let Some((old, at)) = self.map.remove(&id) {
            self.order.remove(&at);
            self.bytes -= old.len() as u64;
        }
        self.tick += 1;
        self.bytes += data.len() as u64;
        self.order.insert(self.tick, id.clone());
        self.map.insert(id, (data, self.tick));
        while self.bytes > budget {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&victim) {
                self.bytes -= d.len() as u64;
            }
        }
    }
}

/// Verified blocks in memory, with single-flight fetches.
pub struct BlockCache {
    budget: u64,
    lru: Mutex<Lru>,
    inflight: Mutex<HashMap<BlockId, Fetch>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl BlockCache {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            lru: Mutex::default(),
            inflight: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached block, if it is there.
    pub fn peek(&self, id: &BlockId) -> Option<Bytes> {
        lock(&self.lru).get(id)
    }

    pub fn contains_or_loading(&self, id: &BlockId) -> bool {
        // One lock at a time: `get_or_fetch` takes `inflight` before `lru`.
        let cached = lock(&self.lru).map.contains_key(id);
        cached || lock(&self.inflight).contains_key(id)
    }

    /// Adds a block this client wrote (so reading it back costs nothing).
    pub fn insert(&self, id: BlockId, data: Bytes) {
        lock(&self.lru).insert(id, data, self.budget);
    }

    /// The block `id`, from the cache or by running `fetch` (once, however many callers ask
    /// at the same time). A failed fetch is not cached.
    pub async fn get_or_fetch<F>(self: &Arc<Self>, id: &BlockId, fetch: F) -> Result<Bytes, FsError>
    where
        F: Future<Output = Result<Bytes, FsError>> + Send + 'static,
    {
        if let Some(b) = self.peek(id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let shared = {
            let mut inflight = lock(&self.inflight);
            // Checked again under the in-flight lock: a fetch may have finished meanwhile.
            if let Some(b) = lock(&self.lru).get(id) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(b);
            }
            match inflight.get(id) {
                Some(f) => f.clone(),
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let me = self.clone();
                    let key = id.clone();
                    let f = async move {
                        let r = fetch.await;
                        let mut inflight = lock(&me.inflight);
                        if let Ok(data) = &r {
                            lock(&me.lru).insert(key.clone(), data.clone(), me.budget);
                        }
                        inflight.remove(&key);
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(id.clone(), f.clone());
                    f
                }
            }
        };
        shared.await
    }

    pub fn clear(&self) {
        *lock(&self.lru) = Lru::default();
    }
}

const SHARDS: usize = 256;

/// Inserts into a cache map holding at most `limit` items: beyond it, arbitrary items are
/// dropped down to 90% of `limit` (dropping is always safe; the next use asks the service).
fn insert_bounded<K: Hash + Eq + Clone, V>(map: &mut HashMap<K, V>, k: K, v: V, limit: usize) {
    if map.len() >= limit && !map.contains_key(&k) {
        let excess = map.len() + 1 - limit * 9 / 10;
        let victims: Vec<K> = map.keys().take(excess).cloned().collect();
        for victim in victims {
            map.remove(&victim);
        }
    }
    map.insert(k, v);
}

/// Attribute, entry and symlink caches, invalidated by the volume watch, each bounded to
/// `limit` items.
pub struct MetaCache {
    limit: usize,
    hasher: RandomState,
    gens: Box<[AtomicU64]>,
    attrs: Mutex<HashMap<u64, Attr>>,
    /// (parent, name) → child inode.
    entries: Mutex<HashMap<(u64, Vec<u8>), u64>>,
    links: Mutex<HashMap<u64, Vec<u8>>>,
}

/// What a cache fill must present: the generation of its key's shard before the request.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64, usize);

/// The generation of every shard, taken before a request whose reply names keys not known in
/// advance (the entries of a listing, the inode a lookup finds).
pub struct Tickets(Box<[u64]>);

/// Items a [`MetaCache`] map holds by default (about 150 MB of attributes at most).
pub const META_CACHE_ITEMS: usize = 1_000_000;

impl Default for MetaCache {
    fn default() -> Self {
        Self::new(META_CACHE_ITEMS)
    }
}

impl MetaCache {
    /// A cache holding at most `limit` (at least 16) attributes, entries and symlink targets
    /// each.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(16),
            hasher: RandomState::new(),
            gens: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            attrs: Mutex::default(),
            entries: Mutex::default(),
            links: Mutex::default(),
        }
    }

    fn shard<K: Hash>(&self, k: K) -> usize {
        (self.hasher.hash_one(k) as usize) % SHARDS
    }

    fn ticket_of(&self, shard: usize) -> Ticket {
        Ticket(self.gens[shard].load(Ordering::Acquire), shard)
    }

    fn bump(&self, shard: usize) {
        self.gens[shard].fetch_add(1, Ordering::AcqRel);
    }

    fn valid(&self, t: Ticket) -> bool {
        self.gens[t.1].load(Ordering::Acquire) == t.0
    }

    pub fn attr_ticket(&self, ino: u64) -> Ticket {
        self.ticket_of(self.shard(("i", ino)))
    }

    pub fn entry_ticket(&self, parent: u64, name: &[u8]) -> Ticket {
        self.ticket_of(self.shard(("e", parent, name)))
    }

    pub fn tickets(&self) -> Tickets {
        Tickets(
            self.gens
                .iter()
                .map(|g| g.load(Ordering::Acquire))
                .collect(),
        )
    }

    /// The ticket of `ino`'s attributes as of `ts`.
    pub fn attr_ticket_in(&self, ts: &Tickets, ino: u64) -> Ticket {
        let shard = self.shard(("i", ino));
        Ticket(ts.0[shard], shard)
    }

    /// The ticket of the entry `(parent, name)` as of `ts`.
    pub fn entry_ticket_in(&self, ts: &Tickets, parent: u64, name: &[u8]) -> Ticket {
        let shard = self.shard(("e", parent, name));
        Ticket(ts.0[shard], shard)
    }

    pub fn attr(&self, ino: u64) -> Option<Attr> {
        lock(&self.attrs).get(&ino).copied()
    }

    /// Caches `attr` if nothing invalidated its inode since `t` was taken.
    pub fn fill_attr(&self, t: Ticket, attr: &Attr) {
        let mut attrs = lock(&self.attrs);
        if self.valid(t) {
            insert_bounded(&mut attrs, attr.ino, *attr, self.limit);
        }
    }

    /// Caches what this client itself just changed (newer than anything cached).
    pub fn put_attr(&self, attr: &Attr) {
        insert_bounded(&mut lock(&self.attrs), attr.ino, *attr, self.limit);
    }

    pub fn entry(&self, parent: u64, name: &[u8]) -> Option<u64> {
        lock(&self.entries).get(&(parent, name.to_vec())).copied()
    }

    pub fn fill_entry(&self, t: Ticket, parent: u64, name: &[u8], ino: u64) {
        let mut entries = lock(&self.entries);
        if self.valid(t) {
            insert_bounded(&mut entries, (parent, name.to_vec()), ino, self.limit);
        }
    }

    pub fn put_entry(&self, parent: u64, name: &[u8], ino: u64) {
        insert_bounded(
            &mut lock(&self.entries),
            (parent, name.to_vec()),
            ino,
            self.limit,
        );
    }

    pub fn link(&self, ino: u64) -> Option<Vec<u8>> {
        lock(&self.links).get(&ino).cloned()
    }

    /// Symlink targets never change (a new target is a new inode).
    pub fn put_link(&self, ino: u64, target: &[u8]) {
        insert_bounded(&mut lock(&self.links), ino, target.to_vec(), self.limit);
    }

    pub fn invalidate_attr(&self, ino: u64) {
        let mut attrs = lock(&self.attrs);
        self.bump(self.shard(("i", ino)));
        attrs.remove(&ino);
    }

    /// Drops the cached attributes of `ino` unless they are from `revision` or later.
    pub fn invalidate_attr_before(&self, ino: u64, revision: u64) {
        let mut attrs = lock(&self.attrs);
        if attrs.get(&ino).is_some_and(|a| a.revision >= revision) {
            return;
        }
        self.bump(self.shard(("i", ino)));
        attrs.remove(&ino);
    }

    pub fn invalidate_entry(&self, parent: u64, name: &[u8]) {
        let mut entries = lock(&self.entries);
        self.bump(self.shard(("e", parent, name)));
        entries.remove(&(parent, name.to_vec()));
    }

    /// Forgets an inode that is gone.
    pub fn forget(&self, ino: u64) {
        self.invalidate_attr(ino);
        lock(&self.links).remove(&ino);
    }

    /// Drops everything (a watch reset or a gap in the change stream).
    pub fn clear(&self) {
        let mut attrs = lock(&self.attrs);
        let mut entries = lock(&self.entries);
        for g in self.gens.iter() {
            g.fetch_add(1, Ordering::AcqRel);
        }
        attrs.clear();
        entries.clear();
    }

    /// Inodes with cached attributes (to tell the kernel after a reset).
    pub fn cached_inodes(&self) -> Vec<u64> {
        lock(&self.attrs).keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> BlockId {
        BlockId::parse(&format!("v1/00/{n:032}")).expect("valid id")
    }

    #[test]
    fn lru_evicts_the_least_recently_used_beyond_the_budget() {
        let mut l = Lru::default();
        l.insert(id(1), Bytes::from(vec![0; 4]), 10);
        l.insert(id(2), Bytes::from(vec![0; 4]), 10);
        assert!(l.get(&id(1)).is_some());
        l.insert(id(3), Bytes::from(vec![0; 4]), 10);
        assert!(l.get(&id(2)).is_none());
        assert!(l.get(&id(1)).is_some() && l.get(&id(3)).is_some());
        assert_eq!(l.bytes, 8);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = MetaCache::default();
        let attr = Attr {
            ino: 5,
            ..Default::default()
        };
        let t = c.attr_ticket(5);
        c.invalidate_attr(5);
        c.fill_attr(t, &attr);
        assert!(c.attr(5).is_none());
        let t = c.attr_ticket(5);
        c.fill_attr(t, &attr);
        assert!(c.attr(5).is_some());
    }

    #[test]
    fn each_map_stays_within_its_limit_and_keeps_the_newest() {
        let c = MetaCache::new(100);
        for ino in 0..1000u64 {
            let t = c.attr_ticket(ino);
            c.fill_attr(
                t,
                &Attr {
                    ino,
                    ..Default::default()
                },
            );
            c.put_entry(1, format!("n{ino}").as_bytes(), ino);
            c.put_link(ino, b"target");
            let lens = (
                lock(&c.attrs).len(),
                lock(&c.entries).len(),
                lock(&c.links).len(),
            );
            assert!(
                lens.0 <= 100 && lens.1 <= 100 && lens.2 <= 100,
                "at {ino}: {lens:?}"
            );
            // What was just put is there.
            assert_eq!(c.attr(ino).map(|a| a.ino), Some(ino));
            assert_eq!(c.entry(1, format!("n{ino}").as_bytes()), Some(ino));
        }
        assert!(
            lock(&c.attrs).len() >= 90,
            "evicts down to 90%, not further"
        );
    }

    #[test]
    fn tickets_taken_before_a_listing_drop_fills_of_keys_invalidated_since() {
        let c = MetaCache::default();
        let attr = |ino| Attr {
            ino,
            ..Default::default()
        };
        let ts = c.tickets();
        c.invalidate_attr(7);
        c.invalidate_entry(1, b"seven");
        for ino in [7, 8] {
            c.fill_attr(c.attr_ticket_in(&ts, ino), &attr(ino));
        }
        c.fill_entry(c.entry_ticket_in(&ts, 1, b"seven"), 1, b"seven", 7);
        c.fill_entry(c.entry_ticket_in(&ts, 1, b"eight"), 1, b"eight", 8);
        assert!(
            c.attr(7).is_none(),
            "invalidated after the tickets: not cached"
        );
        assert_eq!(c.entry(1, b"seven"), None);
        // Unless they share a shard with the invalidated keys, the others are cached.
        if c.shard(("i", 8u64)) != c.shard(("i", 7u64)) {
            assert!(c.attr(8).is_some());
        }
        if c.shard(("e", 1u64, b"eight".as_slice())) != c.shard(("e", 1u64, b"seven".as_slice())) {
            assert_eq!(c.entry(1, b"eight"), Some(8));
        }
    }
}
