//! The block cache: decoded SSTable data blocks shared by all readers, evicted least recently
//! used first once their bytes exceed the budget.
//!
//! Keys are (table number, block offset); table numbers are never reused, so a stale entry of a
//! deleted table is never served, only aged out. A lookup and an insert are O(log n).
//!
//! Recency is tracked lazily so a hit costs one ordered-map lookup: a hit only stamps the
//! entry with a fresh tick, and the recency queue keeps the tick the entry had when it was last
//! queued. Eviction pops the oldest queued tick; if the entry was touched since, it is queued
//! again under its current tick instead of being evicted. The evicted entry is still exactly the
//! least recently used one: every queued tick is at most its entry's current tick.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::block::Block;

type CacheKey = (u64, u64);

#[derive(Debug, Default)]
struct Lru {
    // The tick beside each block is the tick of its latest use.
    entries: BTreeMap<CacheKey, (u64, Arc<Block>)>,
    // Invariant: holds exactly one tick per entry, at most the tick stored beside it.
    recency: BTreeMap<u64, CacheKey>,
    tick: u64,
    // Invariant: the sum of `bytes()` over entries.
    bytes: usize,
}

/// A byte-budgeted LRU cache of blocks.
#[derive(Debug)]
pub struct BlockCache {
    lru: Mutex<Lru>,
    bytes_max: usize,
}

impl BlockCache {
    /// A cache holding at most `bytes_max` bytes of blocks (0 disables it).
    pub fn new(bytes_max: usize) -> BlockCache {
        BlockCache { lru: Mutex::new(Lru::default()), bytes_max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The cached block, marking it recently used.
    pub fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (used, block) = lru.entries.get_mut(&(table, offset))?;
        *used = tick;
        Some(Arc::clone(block))
    }

    /// Caches `block`, evicting the least recently used blocks past the budget.
    pub fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        if block.bytes() > self.bytes_max {
            return;
        }
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        lru.bytes += block.bytes();
        if let Some((_, old)) = lru.entries.insert((table, offset), (tick, block)) {
            // Already queued under an older tick: the lazy requeue below handles it.
            lru.bytes -= old.bytes();
        } else {
            lru.recency.insert(tick, (table, offset));
        }
        while lru.bytes > self.bytes_max {
            let Some((queued, key)) = lru.recency.pop_first() else { break };
            let used = lru.entries.get(&key).map(|(used, _)| *used);
            assert!(used.is_some_and(|used| used >= queued), "recency queue out of sync");
            if let Some(used) = used.filter(|&used| used != queued) {
                lru.recency.insert(used, key);
            } else if let Some((_, evicted)) = lru.entries.remove(&key) {
                lru.bytes -= evicted.bytes();
            }
        }
        assert_eq!(lru.entries.len(), lru.recency.len());
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockBuilder;

    fn block(size: usize) -> Arc<Block> {
        let mut builder = BlockBuilder::new(16);
        builder.add(b"k", &vec![0; size]);
        Arc::new(Block::new(builder.finish()).expect("valid"))
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let cache = BlockCache::new(350);
        cache.insert(1, 0, block(100));
        cache.insert(1, 1, block(100));
        cache.insert(1, 2, block(100));
        assert!(cache.get(1, 0).is_some());
        cache.insert(1, 3, block(100));
        assert!(cache.get(1, 1).is_none(), "least recently used goes first");
        assert!(cache.get(1, 0).is_some());
        assert!(cache.bytes() <= 350);
    }

    #[test]
    fn reinserted_and_repeatedly_hit_blocks_stay_in_lru_order() {
        let cache = BlockCache::new(250);
        cache.insert(1, 0, block(100));
        cache.insert(1, 1, block(100));
        cache.insert(1, 0, block(100)); // Replaces: (1, 0) is now the most recent.
        assert_eq!(cache.bytes(), block(100).bytes() * 2);
        for _ in 0..3 {
            assert!(cache.get(1, 1).is_some());
        }
        assert!(cache.get(1, 0).is_some());
        cache.insert(1, 2, block(100));
        assert!(cache.get(1, 1).is_none(), "(1, 1) was used before (1, 0)");
        assert!(cache.get(1, 0).is_some() && cache.get(1, 2).is_some());
        cache.insert(1, 3, block(100));
        assert!(cache.get(1, 0).is_none(), "(1, 0) is now the least recently used");
        assert!(cache.get(1, 2).is_some() && cache.get(1, 3).is_some());
    }
}
