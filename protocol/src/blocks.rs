//! Block hashing: a prompt's tokens cut into full blocks of `block_size`, each
//! hash chaining its parent's, so one hash names a whole prefix. The gateway
//! and the workers must agree on this bit for bit; it lives here, once.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The hash of a block together with every block before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockHash(pub u64);

/// Seed of the first block's chain; any fixed value works as long as both sides use it.
const ROOT_SEED: u64 = 0x6c6c_6d67_7721;

/// Hashes of the full blocks of `tokens` (a trailing partial block has none).
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    salted_block_hashes(tokens, block_size, 0)
}

/// [`block_hashes`] of a prompt whose first block is salted (see
/// [`salted_block_hash`]); the rest chain from it as usual.
pub fn salted_block_hashes(tokens: &[u32], block_size: usize, salt: u64) -> Vec<BlockHash> {
    assert!(block_size > 0, "block_size must be positive");
    let mut parent = ROOT_SEED ^ salt;
    let mut bytes = Vec::with_capacity(block_size * 4);
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|t| t.to_le_bytes()));
            parent = xxh3_64_with_seed(&bytes, parent);
            BlockHash(parent)
        })
        .collect()
}

/// The hash of one more block after `parent` (or after the root when `None`).
pub fn next_block_hash(parent: Option<BlockHash>, block: &[u32]) -> BlockHash {
    salted_block_hash(parent, block, 0)
}

/// The hash of one more block whose cache entry also depends on something
/// besides its tokens (a LoRA adapter, multimodal inputs, a cache salt),
/// named by a nonzero `salt`: it never equals the unsalted block's hash, so
/// such blocks match only prompts with the same salt. Salt 0 is no salt.
pub fn salted_block_hash(parent: Option<BlockHash>, block: &[u32], salt: u64) -> BlockHash {
    let seed = parent.map_or(ROOT_SEED, |p| p.0) ^ salt;
    // Blocks of up to 64 tokens (every engine's default is 16) hash from the stack.
    let mut stack = [0u8; 256];
    let bytes = match stack.get_mut(..block.len() * 4) {
        Some(bytes) => {
            for (chunk, token) in bytes.chunks_exact_mut(4).zip(block) {
                chunk.copy_from_slice(&token.to_le_bytes());
            }
            &*bytes
        }
        None => &block
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    };
    BlockHash(xxh3_64_with_seed(bytes, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_blocks_are_hashed() {
        assert_eq!(block_hashes(&[1, 2, 3, 4, 5], 2).len(), 2);
        assert!(block_hashes(&[1], 2).is_empty());
    }

    #[test]
    fn equal_hashes_mean_equal_prefixes() {
        let a = block_hashes(&[1, 2, 3, 4, 5, 6], 2);
        let b = block_hashes(&[1, 2, 3, 4, 9, 9], 2);
        let c = block_hashes(&[9, 9, 3, 4, 5, 6], 2);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // Same block contents under a different parent hash differently.
        assert_ne!(a[1], c[1]);
    }

    #[test]
    fn a_salted_prompt_chains_from_its_salted_first_block() {
        let tokens: Vec<u32> = (0..8).collect();
        let salted = salted_block_hashes(&tokens, 4, 99);
        let first = salted_block_hash(None, &tokens[..4], 99);
        assert_eq!(salted, [first, next_block_hash(Some(first), &tokens[4..])]);
        assert_ne!(salted[0], block_hashes(&tokens, 4)[0]);
        assert_eq!(salted_block_hashes(&tokens, 4, 0), block_hashes(&tokens, 4));
    }

    #[test]
    fn incremental_hash_matches_batch() {
        let tokens: Vec<u32> = (0..12).collect();
        let all = block_hashes(&tokens, 4);
        let mut parent = None;
        for (i, block) in tokens.chunks(4).enumerate() {
            let h = next_block_hash(parent, block);
            assert_eq!(h, all[i]);
            parent = Some(h);
        }
    }
}
