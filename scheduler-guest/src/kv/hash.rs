//! Prefix-cache block hashes: a chain over full blocks of token ids, deterministic on every platform.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// The hash of one full KV block: XXH3-128 over (parent hash, the block's token ids, extra keys).
///
/// The chain makes a block's hash name its whole prefix, so a lookup that misses once misses for
/// every later block too. XXH3 with its fixed default secret gives the same value natively and in
/// WASM (no per-process seed), so prefix-cache hits are reproducible and replayable.
///
/// The value is held as two halves rather than a `u128`: a `u128` is 16-byte aligned, and the
/// WASM guest's allocator served such vectors only through an aligned copy on every growth. It
/// converts to and from the `u128` it is, serialises as one, and orders like one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "u128", into = "u128")]
pub struct BlockHash {
    high: u64,
    low: u64,
}

impl BlockHash {
    /// The low 64 bits: the hash KV events name a block by.
    pub const fn low(self) -> u64 {
        self.low
    }
}

impl From<u128> for BlockHash {
    fn from(value: u128) -> Self {
        Self {
            high: (value >> 64) as u64,
            low: value as u64,
        }
    }
}

impl From<BlockHash> for u128 {
    fn from(hash: BlockHash) -> Self {
        (u128::from(hash.high) << 64) | u128::from(hash.low)
    }
}

/// One word of an XXH3 output is already uniformly spread, so a hash table needs no more of it
/// (equal hashes have equal low words).
impl Hash for BlockHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.low);
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({:032x})", u128::from(*self))
    }
}

/// The parent of a sequence's first block (vLLM's `NONE_HASH`, fixed here rather than seeded).
pub fn none_hash() -> BlockHash {
    BlockHash::from(xxh3_128(b"waypoint-none-hash"))
}

/// Extra keys that take part in one block's hash besides its tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraKeys<'a> {
    /// The request's cache salt; only the first block of a sequence carries it.
    pub cache_salt: Option<&'a str>,
}

/// Hash one block: `H(parent, tokens, extra)` with a canonical little-endian byte encoding.
pub fn hash_block_tokens(parent: BlockHash, tokens: &[u32], extra: ExtraKeys<'_>) -> BlockHash {
    hash_block_with(&mut Vec::new(), parent, tokens, extra)
}

/// [`hash_block_tokens`], gathering the block's bytes in `message` and hashing them in one call.
/// One-shot XXH3 gives the same value as streaming and skips its state, which dominated hashing
/// in a WASM guest; reusing `message` along a chain of blocks allocates once for all of them.
fn hash_block_with(
    message: &mut Vec<u8>,
    parent: BlockHash,
    tokens: &[u32],
    extra: ExtraKeys<'_>,
) -> BlockHash {
    message.clear();
    let salt_len = extra.cache_salt.map_or(0, |salt| 4 + salt.len());
    message.reserve(16 + 4 + tokens.len() * 4 + 1 + salt_len);
    message.extend_from_slice(&u128::from(parent).to_le_bytes());
    message.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    // Little-endian targets (x86, ARM, WASM) hold the tokens in their encoding already: one
    // copy, where a loop over tokens cost a WASM guest an interruption check per token.
    #[cfg(target_endian = "little")]
    message.extend_from_slice(bytemuck::cast_slice(tokens));
    #[cfg(not(target_endian = "little"))]
    message.extend(tokens.iter().flat_map(|token| token.to_le_bytes()));
    match extra.cache_salt {
        None => message.push(0),
        Some(salt) => {
            message.push(1);
            message.extend_from_slice(&(salt.len() as u32).to_le_bytes());
            message.extend_from_slice(salt.as_bytes());
        }
    }
    BlockHash::from(xxh3_128(message))
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
    BlockHasher::new(block_size).extend(hashes, tokens, cache_salt);
}

/// [`extend_block_hashes`] with one message buffer kept across calls: decode fills one block at a
/// time, and a buffer allocated and freed per filled block cost a WASM guest more than the hash.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    block_size: u32,
    message: Vec<u8>,
}

impl BlockHasher {
    /// A hasher over blocks of `block_size` tokens.
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size,
            message: Vec::new(),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Extend `hashes` so that it holds one hash per full block of `tokens`.
    pub fn extend(
        &mut self,
        hashes: &mut Vec<BlockHash>,
        tokens: &[u32],
        cache_salt: Option<&str>,
    ) {
        let block_size = self.block_size as usize;
        let num_full = tokens.len() / block_size;
        // A new request's prompt blocks in one allocation; later blocks grow it amortised.
        hashes.reserve(num_full.saturating_sub(hashes.len()));
        while hashes.len() < num_full {
            let index = hashes.len();
            let parent = hashes.last().copied().unwrap_or_else(none_hash);
            let extra = ExtraKeys {
                cache_salt: if index == 0 { cache_salt } else { None },
            };
            let block = &tokens[index * block_size..(index + 1) * block_size];
            hashes.push(hash_block_with(&mut self.message, parent, block, extra));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::Xxh3;

    /// Hashes name cached blocks across runs and platforms, so their encoding must not drift.
    #[test]
    fn block_hashes_keep_their_pinned_values() {
        let tokens: Vec<u32> = (0..16).map(|t| t * 7 + 3).collect();
        let first = hash_block_tokens(none_hash(), &tokens, ExtraKeys::default());
        let salted = hash_block_tokens(
            first,
            &tokens,
            ExtraKeys {
                cache_salt: Some("tenant-a"),
            },
        );
        let long: Vec<u32> = (0..200).collect();
        let long_block = hash_block_tokens(salted, &long, ExtraKeys::default());
        assert_eq!(u128::from(none_hash()), 0x659d59869494d6d50eb877183b6e8f22);
        assert_eq!(u128::from(first), 0x01cffb342eeb155f062cd201aff492c7);
        assert_eq!(u128::from(salted), 0xa38a733dd6f4492a694db65b4ca54f9e);
        assert_eq!(u128::from(long_block), 0x7862ad46ab268bb9abb28184411b6f22);
    }

    /// One-shot hashing of the gathered message gives what streaming the same bytes gives,
    /// for short and long blocks, with and without a salt.
    #[test]
    fn gathered_messages_hash_as_streamed_ones_do() {
        let salt = "s".repeat(40);
        for len in 60..90u32 {
            let tokens: Vec<u32> = (0..len).map(|t| t.wrapping_mul(2_654_435_761)).collect();
            for cache_salt in [None, Some(salt.as_str())] {
                let mut streaming = Xxh3::new();
                streaming.update(&u128::from(none_hash()).to_le_bytes());
                streaming.update(&len.to_le_bytes());
                for token in &tokens {
                    streaming.update(&token.to_le_bytes());
                }
                match cache_salt {
                    None => streaming.update(&[0]),
                    Some(salt) => {
                        streaming.update(&[1]);
                        streaming.update(&(salt.len() as u32).to_le_bytes());
                        streaming.update(salt.as_bytes());
                    }
                }
                let hash = hash_block_tokens(none_hash(), &tokens, ExtraKeys { cache_salt });
                assert_eq!(
                    u128::from(hash),
                    streaming.digest128(),
                    "{len} tokens, salt {cache_salt:?}"
                );
            }
        }
    }

    /// The scheduler keeps one hasher for every request: its reused buffer must carry nothing
    /// from one chain into the next, whether a chain grows a token at a time (decode) or many
    /// blocks at once (a prompt), salted (a longer message) or not.
    #[test]
    fn a_shared_hasher_extends_every_chain_as_a_fresh_one_does() {
        let mut shared = BlockHasher::new(4);
        for (seed, cache_salt) in [
            (1u32, Some("a-long-tenant-salt")),
            (2, None),
            (3, Some("b")),
        ] {
            let tokens: Vec<u32> = (0..23).map(|t| t * 31 + seed).collect();
            let mut fresh = Vec::new();
            extend_block_hashes(&mut fresh, &tokens, 4, cache_salt);
            let mut grown = Vec::new();
            shared.extend(&mut grown, &tokens[..9], cache_salt);
            for end in 10..=tokens.len() {
                shared.extend(&mut grown, &tokens[..end], cache_salt);
            }
            assert_eq!(grown, fresh, "seed {seed}");
            assert_eq!(grown.len(), 5);
        }
    }
}
