//! Prefix-cache block hashes: a chain over full blocks of token ids, deterministic on every platform.

use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The hash of one full KV block: XXH3-128 over (parent hash, the block's token ids, extra keys).
///
/// The chain makes a block's hash name its whole prefix, so a lookup that misses once misses for
/// every later block too. XXH3 with its fixed default secret gives the same value natively and in
/// WASM (no per-process seed), so prefix-cache hits are reproducible and replayable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockHash(pub u128);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({:032x})", self.0)
    }
}

/// The parent of a sequence's first block (vLLM's `NONE_HASH`, fixed here rather than seeded).
pub fn none_hash() -> BlockHash {
    BlockHash(xxh3_128(b"waypoint-none-hash"))
}

/// Extra keys that take part in one block's hash besides its tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraKeys<'a> {
    /// The request's cache salt; only the first block of a sequence carries it.
    pub cache_salt: Option<&'a str>,
}

/// Hash one block: `H(parent, tokens, extra)` with a canonical little-endian byte encoding.
pub fn hash_block_tokens(parent: BlockHash, tokens: &[u32], extra: ExtraKeys<'_>) -> BlockHash {
    const CHUNK: usize = 64;
    let mut hasher = Xxh3::new();
    hasher.update(&parent.0.to_le_bytes());
    hasher.update(&(tokens.len() as u32).to_le_bytes());
    let mut buf = [0u8; CHUNK * 4];
    for chunk in tokens.chunks(CHUNK) {
        for (slot, token) in buf.chunks_exact_mut(4).zip(chunk) {
            slot.copy_from_slice(&token.to_le_bytes());
        }
        hasher.update(&buf[..chunk.len() * 4]);
    }
    match extra.cache_salt {
        None => hasher.update(&[0]),
        Some(salt) => {
            hasher.update(&[1]);
            hasher.update(&(salt.len() as u32).to_le_bytes());
            hasher.update(salt.as_bytes());
        }
    }
    BlockHash(hasher.digest128())
}

/// Extend `hashes` so that it holds one hash per full block of `tokens`.
///
/// Called when a request is created and whenever it gains tokens, so `hashes` grows over the
/// request's life, generated tokens included (vLLM's `request.block_hashes`).
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    tokens: &[u32],
    block_size: u32,
    cache_salt: Option<&str>,
) {
    let block_size = block_size as usize;
    let num_full = tokens.len() / block_size;
    while hashes.len() < num_full {
        let index = hashes.len();
        let parent = hashes.last().copied().unwrap_or_else(none_hash);
        let extra = ExtraKeys {
            cache_salt: if index == 0 { cache_salt } else { None },
        };
        let block = &tokens[index * block_size..(index + 1) * block_size];
        hashes.push(hash_block_tokens(parent, block, extra));
    }
}
