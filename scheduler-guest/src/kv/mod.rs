//! The paged KV cache: block pool with a reserved null block, LRU free queue, reference counts,
//! prefix caching by a hash chain over full blocks, per-request slot allocation, and the KV
//! events of the prefix cache's changes.
//!
//! Block ids handed out here are the real addresses of the model runner's KV memory: block `b`
//! holds token slots `b * block_size .. (b + 1) * block_size`.

pub mod block_pool;
pub mod events;
pub mod free_queue;
pub mod hash;

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

pub use block_pool::{BlockPool, NULL_BLOCK};
pub use events::{BlockRemoved, BlockStored, KvEvent};
pub use free_queue::FreeBlockQueue;
pub use hash::{BlockHash, BlockHasher};

use crate::request::Request;

/// A prefix-cache hit: whole blocks whose KV another request already computed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    /// Hit blocks, in sequence order.
    pub block_ids: Vec<u32>,
    /// Hit tokens (`block_ids.len() * block_size`).
    pub num_tokens: u32,
}

/// Prefix-cache counters, cumulative since the scheduler started (a caller takes differences).
///
/// Recorded once per admission, as vLLM 0.33 does; resumed (preempted) requests are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCacheStats {
    /// Admissions of never-preempted requests.
    pub requests: u64,
    /// Tokens looked up for them.
    pub queries: u64,
    /// Tokens found in the cache for them.
    pub hits: u64,
    /// Admissions of resumed requests.
    pub preempted_requests: u64,
    /// Tokens looked up for resumed requests.
    pub preempted_queries: u64,
    /// Tokens found for resumed requests.
    pub preempted_hits: u64,
    /// Successful prefix-cache resets.
    pub resets: u64,
}

/// Allocates KV slots for requests over one [`BlockPool`].
#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: u32,
    max_model_len: u32,
    /// `Some` exactly when prefix caching is on: requests' block hashes are kept only then.
    hasher: Option<BlockHasher>,
    stats: PrefixCacheStats,
}

fn blocks_for(tokens: u32, block_size: u32) -> u32 {
    tokens.div_ceil(block_size)
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens.
    pub fn new(num_blocks: u32, block_size: u32, max_model_len: u32, enable_caching: bool) -> Self {
        Self::from_parts(
            BlockPool::new(num_blocks),
            block_size,
            max_model_len,
            enable_caching,
            PrefixCacheStats::default(),
        )
    }

    /// A manager over a restored pool.
    pub(crate) fn from_parts(
        pool: BlockPool,
        block_size: u32,
        max_model_len: u32,
        enable_caching: bool,
        stats: PrefixCacheStats,
    ) -> Self {
        Self {
            pool,
            block_size,
            max_model_len,
            hasher: enable_caching.then(|| BlockHasher::new(block_size)),
            stats,
        }
    }

    /// Record KV events from now on.
    pub fn enable_events(&mut self) {
        self.pool.enable_events();
    }

    /// The KV events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.pool.take_events()
    }

    /// The block pool.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Whether prefix caching is on.
    pub fn caching_enabled(&self) -> bool {
        self.hasher.is_some()
    }

    /// The block size requests hash with, or `None` when caching is off (no hashes are kept).
    pub fn hash_block_size(&self) -> Option<u32> {
        self.hasher.as_ref().map(BlockHasher::block_size)
    }

    /// The hasher that extends requests' block hashes, or `None` when caching is off.
    pub fn block_hasher(&mut self) -> Option<&mut BlockHasher> {
        self.hasher.as_mut()
    }

    /// Cumulative prefix-cache counters.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Fraction of usable blocks held by live requests.
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    /// The longest cached prefix of `request`, in whole blocks, leaving at least one token to
    /// compute (so the last prompt token always produces logits).
    pub fn get_computed_blocks(&self, request: &Request) -> ComputedBlocks {
        if self.hasher.is_none() {
            return ComputedBlocks::default();
        }
        let max_hit_tokens = request.num_tokens().saturating_sub(1);
        let max_blocks = (max_hit_tokens / self.block_size) as usize;
        let block_ids: Vec<u32> = request
            .block_hashes
            .iter()
            .take(max_blocks)
            .map_while(|&hash| self.pool.lookup(hash))
            .collect();
        let num_tokens = block_ids.len() as u32 * self.block_size;
        ComputedBlocks {
            block_ids,
            num_tokens,
        }
    }

    /// Record one admission's lookup in the prefix-cache counters.
    pub fn record_admission(&mut self, resumed: bool, queries: u32, hits: u32) {
        if self.hasher.is_none() {
            return;
        }
        let (requests, total_queries, total_hits) = if resumed {
            let s = &mut self.stats;
            (
                &mut s.preempted_requests,
                &mut s.preempted_queries,
                &mut s.preempted_hits,
            )
        } else {
            let s = &mut self.stats;
            (&mut s.requests, &mut s.queries, &mut s.hits)
        };
        *requests += 1;
        *total_queries += u64::from(queries);
        *total_hits += u64::from(hits);
    }

    /// Give `request` slots for `num_new_tokens` more tokens after its computed ones (and after
    /// `hit`, a prefix-cache hit taken now). Returns how many blocks were allocated (the last of
    /// the request's block ids), or `None` when they do not fit; then nothing changed (hit
    /// blocks were not touched).
    ///
    /// With `full_sequence_must_fit`, the blocks for all of the request's tokens must be free
    /// too, not only those for this chunk (vLLM 0.33 admission, `scheduler_reserve_full_isl`).
    #[inline]
    pub fn allocate_slots(
        &mut self,
        request: &mut Request,
        num_new_tokens: u32,
        hit: &ComputedBlocks,
        full_sequence_must_fit: bool,
    ) -> Option<u32> {
        // Most calls are a decode token that lands in a block the request holds and fills none:
        // answered here, without a call, since every step makes one per running request.
        if hit.block_ids.is_empty() && !full_sequence_must_fit {
            let block_size = u64::from(self.block_size);
            let scheduled = request.num_computed_tokens + num_new_tokens;
            let held_slots = request.block_ids.len() as u64 * block_size;
            let fits = u64::from(scheduled.min(self.max_model_len)) <= held_slots;
            let fills_no_block = self.hasher.is_none()
                || !self.fills_a_block(request, scheduled.min(request.num_tokens()));
            if fits && fills_no_block {
                return Some(0);
            }
        }
        self.allocate_new_slots(request, num_new_tokens, hit, full_sequence_must_fit)
    }

    /// [`Self::allocate_slots`] for a prefix hit, new blocks or blocks that become full.
    fn allocate_new_slots(
        &mut self,
        request: &mut Request,
        num_new_tokens: u32,
        hit: &ComputedBlocks,
        full_sequence_must_fit: bool,
    ) -> Option<u32> {
        let computed = request.num_computed_tokens + hit.num_tokens;
        let need_slots = (computed + num_new_tokens).min(self.max_model_len);
        let held = request.block_ids.len() as u32 + hit.block_ids.len() as u32;
        let evictable_hits = hit
            .block_ids
            .iter()
            .filter(|&&block| self.pool.ref_count(block) == 0)
            .count() as u32;
        let num_new_blocks = blocks_for(need_slots, self.block_size).saturating_sub(held);
        let free = self.pool.num_free_blocks();
        if num_new_blocks + evictable_hits > free {
            return None;
        }
        if full_sequence_must_fit {
            let whole = blocks_for(request.num_tokens(), self.block_size).saturating_sub(held);
            if whole + evictable_hits > free {
                return None;
            }
        }
        self.pool.touch(&hit.block_ids);
        request.block_ids.extend_from_slice(&hit.block_ids);
        if request.num_cached_blocks == 0 {
            request.num_cached_blocks = hit.block_ids.len() as u32;
        }
        self.pool
            .get_new_blocks(num_new_blocks, &mut request.block_ids)
            .ok()?;
        if self.hasher.is_some() {
            self.cache_full_blocks(
                request,
                (computed + num_new_tokens).min(request.num_tokens()),
            );
        }
        Some(num_new_blocks)
    }

    /// Put the request's blocks that will be full after `num_tokens` tokens into the prefix-cache
    /// table. A block is cached once it is scheduled to be filled: within a step every layer
    /// writes KV before attention reads it.
    fn cache_full_blocks(&mut self, request: &mut Request, num_tokens: u32) {
        if !self.fills_a_block(request, num_tokens) {
            return;
        }
        let num_full = num_tokens / self.block_size;
        let first = request.num_cached_blocks;
        for index in first..num_full {
            let block = request.block_ids[index as usize];
            let hash = request.block_hashes[index as usize];
            self.pool.cache_block(block, hash);
        }
        let block_size = self.block_size as usize;
        self.pool.record(|| {
            let hashes = &request.block_hashes[first as usize..num_full as usize];
            KvEvent::BlockStored(BlockStored {
                block_hashes: hashes.iter().copied().map(events::external_hash).collect(),
                parent_block_hash: first
                    .checked_sub(1)
                    .map(|parent| events::external_hash(request.block_hashes[parent as usize])),
                token_ids: request.token_ids
                    [first as usize * block_size..num_full as usize * block_size]
                    .to_vec(),
                cache_salt: (first == 0).then(|| request.cache_salt.clone()).flatten(),
            })
        });
        request.num_cached_blocks = num_full;
    }

    /// Whether `num_tokens` tokens fill a block past the request's cached ones (multiplied
    /// rather than divided: the decode fast path asks this for every running request).
    fn fills_a_block(&self, request: &Request, num_tokens: u32) -> bool {
        u64::from(num_tokens)
            >= (u64::from(request.num_cached_blocks) + 1) * u64::from(self.block_size)
    }

    /// Release all of the request's blocks, tail first, so the tail is evicted before its prefix.
    pub fn free(&mut self, request: &mut Request) {
        self.pool.free_blocks(request.block_ids.drain(..).rev());
        request.num_cached_blocks = 0;
    }

    /// Clear the prefix cache; fails (returns false) while any block is held.
    pub fn reset_prefix_cache(&mut self) -> bool {
        let reset = self.pool.reset_prefix_cache();
        if reset {
            self.stats.resets += 1;
        }
        reset
    }
}
