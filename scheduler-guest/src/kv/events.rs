//! KV-cache events: which blocks entered and left the prefix cache, in the order the block pool
//! changed, for routers that keep an index of every replica's cache (vLLM's `BlockStored`,
//! `BlockRemoved` and `AllBlocksCleared`).

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::hash::BlockHash;

/// A block hash as event consumers key on it: the low 64 bits of the [`BlockHash`], the integer
/// form of vLLM's `ExternalBlockHash`.
pub fn external_hash(hash: BlockHash) -> u64 {
    hash.low()
}

/// Full blocks that one allocation put into the prefix cache, in sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStored {
    /// The blocks' hashes ([`external_hash`]).
    pub block_hashes: Vec<u64>,
    /// The hash of the block before the first one, `None` when the first is a sequence's first.
    pub parent_block_hash: Option<u64>,
    /// The blocks' tokens: `block_size` per block.
    pub token_ids: Vec<u32>,
    /// The request's cache salt when the first block is the sequence's first (only that block
    /// hashes it).
    pub cache_salt: Option<String>,
}

/// Cached blocks whose hashes were dropped because the blocks are reused for other content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRemoved {
    /// The hashes ([`external_hash`]); another block may still be cached under the same one.
    pub block_hashes: Vec<u64>,
}

/// One change to the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// Blocks entered the cache.
    BlockStored(BlockStored),
    /// Blocks left the cache.
    BlockRemoved(BlockRemoved),
    /// The whole cache was cleared.
    AllBlocksCleared,
}
