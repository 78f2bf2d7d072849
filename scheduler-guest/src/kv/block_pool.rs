//! The block pool: every KV block's reference count and cached hash, the free queue, and the
//! prefix-cache table from block hash to block.

use alloc::vec::Vec;

use super::events::{external_hash, BlockRemoved, KvEvent};
use super::free_queue::FreeBlockQueue;
use super::hash::BlockHash;
use crate::error::NoFreeBlocks;
use crate::map::FxHashMap;
use hashbrown::HashTable;

/// Block 0: never handed out, never freed (vLLM's null block).
pub const NULL_BLOCK: u32 = 0;

/// All KV blocks of the cache and their bookkeeping.
#[derive(Clone, Debug)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    free: FreeBlockQueue,
    /// The prefix-cache table: for each cached hash, the block cached under it first. It holds
    /// only block ids (4 bytes an entry, the hash is in `hashes`), so the whole table stays in
    /// cache: every block a step allocates removes an entry here.
    cached: HashTable<u32>,
    /// The same content can be cached twice (two requests computed it separately); blocks are
    /// never de-duplicated so block tables stay append-only. The later blocks under a hash, in
    /// caching order; almost always empty.
    duplicates: FxHashMap<BlockHash, Vec<u32>>,
    /// Changes to the cache since the last [`BlockPool::take_events`], when events are on.
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks; block 0 is reserved, so `num_blocks - 1` are usable.
    ///
    /// # Panics
    /// If `num_blocks` is 0 (configuration validation rejects that first).
    pub fn new(num_blocks: u32) -> Self {
        let mut free = FreeBlockQueue::new(num_blocks);
        let null = free.popleft().expect("a pool has at least one block");
        debug_assert_eq!(null, NULL_BLOCK);
        Self {
            ref_counts: alloc::vec![0; num_blocks as usize],
            hashes: alloc::vec![None; num_blocks as usize],
            free,
            cached: HashTable::new(),
            duplicates: FxHashMap::default(),
            events: None,
        }
    }

    /// Rebuild a pool from exported parts; the caller has checked them (every usable block is
    /// either referenced or on `free_order`, ids in range, no block twice).
    pub(crate) fn restore(
        ref_counts: Vec<u32>,
        free_order: &[u32],
        cached: &[(u32, BlockHash)],
    ) -> Self {
        let num_blocks = ref_counts.len() as u32;
        let mut pool = Self {
            ref_counts,
            hashes: alloc::vec![None; num_blocks as usize],
            free: FreeBlockQueue::from_order(num_blocks, free_order),
            cached: HashTable::new(),
            duplicates: FxHashMap::default(),
            events: None,
        };
        for &(block, hash) in cached {
            pool.cache_block(block, hash);
        }
        pool
    }

    /// Record KV events from now on (the pool's contents so far are not reported).
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// Record `event` when events are on.
    pub(crate) fn record(&mut self, event: impl FnOnce() -> KvEvent) {
        if let Some(events) = &mut self.events {
            events.push(event());
        }
    }

    /// The events recorded since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events
            .as_mut()
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Every cached block with its hash, by block id.
    pub fn cached_blocks(&self) -> Vec<(u32, BlockHash)> {
        self.hashes
            .iter()
            .enumerate()
            .filter_map(|(block, hash)| hash.map(|hash| (block as u32, hash)))
            .collect()
    }

    /// Blocks in the pool, the null block included.
    pub fn num_blocks(&self) -> u32 {
        self.ref_counts.len() as u32
    }

    /// Blocks that can ever be handed out (`num_blocks - 1`).
    pub fn num_usable_blocks(&self) -> u32 {
        self.num_blocks() - 1
    }

    /// Free blocks, evictable cached ones included.
    pub fn num_free_blocks(&self) -> u32 {
        self.free.len()
    }

    /// Fraction of usable blocks referenced by live requests (`1 - free / usable`).
    pub fn usage(&self) -> f64 {
        let usable = self.num_usable_blocks();
        if usable == 0 {
            return 0.0;
        }
        1.0 - f64::from(self.num_free_blocks()) / f64::from(usable)
    }

    /// Reference count of `block`.
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    /// The hash `block` is cached under, if any.
    pub fn block_hash(&self, block: u32) -> Option<BlockHash> {
        self.hashes[block as usize]
    }

    /// The free queue, head (next to be reused) first.
    pub fn free_block_ids(&self) -> Vec<u32> {
        self.free.iter().collect()
    }

    /// Whether `block` is on the free queue.
    pub fn is_free(&self, block: u32) -> bool {
        self.free.contains(block)
    }

    /// Number of distinct hashes in the prefix-cache table.
    pub fn num_cached_hashes(&self) -> usize {
        self.cached.len()
    }

    /// Number of blocks cached under `hash`.
    pub fn num_blocks_cached_under(&self, hash: BlockHash) -> usize {
        match self.lookup(hash) {
            None => 0,
            Some(_) => 1 + self.duplicates.get(&hash).map_or(0, Vec::len),
        }
    }

    /// A block cached under `hash`, if any: the one cached first.
    pub fn lookup(&self, hash: BlockHash) -> Option<u32> {
        self.cached
            .find(hash.low(), |&block| {
                self.hashes[block as usize] == Some(hash)
            })
            .copied()
    }

    /// Take `n` blocks from the head of the free queue onto the end of `into`, evicting their
    /// cached hashes; each gets reference count 1. Takes nothing when fewer than `n` are free.
    pub fn get_new_blocks(&mut self, n: u32, into: &mut Vec<u32>) -> Result<(), NoFreeBlocks> {
        let first = into.len();
        self.free.popleft_n(n, into)?;
        for &block in &into[first..] {
            self.evict(block);
            self.ref_counts[block as usize] = 1;
        }
        Ok(())
    }

    /// Take a reference on cache-hit blocks; a free one leaves the free queue.
    pub fn touch(&mut self, blocks: &[u32]) {
        for &block in blocks {
            if self.ref_counts[block as usize] == 0 {
                self.free.remove(block);
            }
            self.ref_counts[block as usize] += 1;
        }
    }

    /// Drop one reference on each block, in the given order. Blocks that become free join the
    /// queue as vLLM 0.33 does: blocks without a hash go to the head (reused first, LIFO), cached
    /// ones to the tail (LRU, so a prefix freed together with its tail outlives the tail).
    pub fn free_blocks(&mut self, blocks: impl IntoIterator<Item = u32>) {
        let mut uncached = Vec::new();
        for block in blocks {
            let count = &mut self.ref_counts[block as usize];
            debug_assert!(*count > 0, "double free of block {block}");
            *count -= 1;
            if *count == 0 {
                if self.hashes[block as usize].is_some() {
                    self.free.append(block);
                } else {
                    uncached.push(block);
                }
            }
        }
        self.free.prepend_n(&uncached);
    }

    /// Record that `block` holds the content named `hash`.
    pub fn cache_block(&mut self, block: u32, hash: BlockHash) {
        debug_assert!(self.hashes[block as usize].is_none());
        if self.lookup(hash).is_some() {
            self.duplicates.entry(hash).or_default().push(block);
        } else {
            let hashes = &self.hashes;
            self.cached.insert_unique(hash.low(), block, |&cached| {
                hashes[cached as usize].map_or(0, BlockHash::low)
            });
        }
        self.hashes[block as usize] = Some(hash);
    }

    /// Forget the cached hash of `block` (it is about to be overwritten). Other blocks cached
    /// under the same hash stay cached.
    fn evict(&mut self, block: u32) {
        let Some(hash) = self.hashes[block as usize].take() else {
            return;
        };
        self.record(|| {
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: alloc::vec![external_hash(hash)],
            })
        });
        // The table is found by block id, so evicting reads no other block's hash.
        let first = self
            .cached
            .find_entry(hash.low(), |&cached| cached == block);
        let Some(later) = self.duplicates.get_mut(&hash) else {
            if let Ok(first) = first {
                first.remove();
            }
            return;
        };
        match first {
            Ok(mut first) => *first.get_mut() = later.remove(0),
            Err(_) => later.retain(|&cached| cached != block),
        }
        if later.is_empty() {
            self.duplicates.remove(&hash);
        }
    }

    /// Evict a free, cached block now (as a later reuse would). Returns whether it was cached.
    pub fn evict_cached_block(&mut self, block: u32) -> bool {
        let was_cached = self.hashes[block as usize].is_some();
        self.evict(block);
        was_cached
    }

    /// Clear the whole prefix cache. Succeeds only when no block is referenced.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free_blocks() != self.num_usable_blocks() {
            return false;
        }
        self.cached.clear();
        self.duplicates.clear();
        self.hashes.iter_mut().for_each(|hash| *hash = None);
        self.record(|| KvEvent::AllBlocksCleared);
        true
    }
}
