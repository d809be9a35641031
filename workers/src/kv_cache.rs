//! The paged KV cache's bookkeeping: fixed-size blocks, a block table per
//! sequence, and a prefix cache keyed by chained block hashes, with
//! unreferenced cached blocks evicted least recently used first. Pure: no I/O,
//! no clocks; the engine owns it and drains its events.

use std::collections::{BTreeMap, HashMap};

use protocol::blocks::next_block_hash;
use protocol::{block_hashes, BlockHash, KvEvent};

/// A sequence the engine is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// A physical block of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub u32);

/// Not enough free blocks for the request; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of KV cache blocks")]
pub struct OutOfBlocks;

#[derive(Debug, Default)]
struct Block {
    refs: u32,
    /// Set while the block is registered in the prefix cache.
    hash: Option<BlockHash>,
    /// Key in the eviction queue while unreferenced and cached.
    released_at: u64,
}

#[derive(Debug)]
struct Table {
    blocks: Vec<BlockId>,
    /// Token ids occupying the sequence's slots, in order.
    tokens: Vec<u32>,
    /// Chained hashes of the leading full, computed blocks.
    hashes: Vec<BlockHash>,
}

#[derive(Debug)]
pub struct KvCache {
    block_size: usize,
    blocks: Vec<Block>,
    /// Unreferenced blocks holding nothing worth keeping.
    free: Vec<BlockId>,
    /// Unreferenced blocks still in the prefix cache, oldest release first.
    evictable: BTreeMap<u64, BlockId>,
    clock: u64,
    cached: HashMap<BlockHash, BlockId>,
    tables: HashMap<SeqId, Table>,
    events: Vec<KvEvent>,
}

/// How an allocation would be served.
struct Plan {
    hashes: Vec<BlockHash>,
    hits: Vec<BlockId>,
    new_blocks: usize,
}

impl KvCache {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let num_blocks = u32::try_from(num_blocks).expect("num_blocks fits in u32");
        KvCache {
            block_size,
            blocks: (0..num_blocks).map(|_| Block::default()).collect(),
            // Reversed so blocks are handed out in ascending order, which reads better in tests.
            free: (0..num_blocks).rev().map(BlockId).collect(),
            evictable: BTreeMap::new(),
            clock: 0,
            cached: HashMap::new(),
            tables: HashMap::new(),
            events: vec![KvEvent::Cleared],
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks referenced by some sequence; cached but unreferenced blocks count as free.
    pub fn used_blocks(&self) -> usize {
        self.blocks.len() - self.free.len() - self.evictable.len()
    }

    /// Whether [`KvCache::allocate`] of `tokens` would succeed now.
    pub fn can_allocate(&self, tokens: &[u32]) -> bool {
        let plan = self.plan(tokens);
        let hits_evictable = plan
            .hits
            .iter()
            .filter(|b| self.blocks[b.0 as usize].refs == 0)
            .count();
        plan.new_blocks <= self.free.len() + self.evictable.len() - hits_evictable
    }

    /// Gives `seq` slots for all of `tokens`, reusing the longest cached prefix.
    /// Returns how many leading tokens are already computed. At least the last
    /// token is always left to compute: the model needs it to produce the next one.
    pub fn allocate(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, OutOfBlocks> {
        debug_assert!(!self.tables.contains_key(&seq), "{seq:?} allocated twice");
        if !self.can_allocate(tokens) {
            return Err(OutOfBlocks);
        }
        let Plan {
            mut hashes,
            hits,
            new_blocks,
        } = self.plan(tokens);
        let mut blocks = Vec::with_capacity(hits.len() + new_blocks);
        // Take the hits first so that making room for the new blocks cannot evict them.
        for &id in &hits {
            let block = &mut self.blocks[id.0 as usize];
            if block.refs == 0 {
                self.evictable.remove(&block.released_at);
            }
            block.refs += 1;
            blocks.push(id);
        }
        for _ in 0..new_blocks {
            blocks.push(self.take_block().ok_or(OutOfBlocks)?);
        }
        hashes.truncate(hits.len());
        let cached_tokens = hits.len() * self.block_size;
        self.tables.insert(
            seq,
            Table {
                blocks,
                tokens: tokens.to_vec(),
                hashes,
            },
        );
        Ok(cached_tokens)
    }

    /// Gives `seq` a slot for one more token, taking a new block when the last is full.
    pub fn append_token(&mut self, seq: SeqId, token: u32) -> Result<(), OutOfBlocks> {
        let needs_block = self
            .tables
            .get(&seq)
            .is_some_and(|t| t.tokens.len() % self.block_size == 0);
        let new_block = if needs_block {
            Some(self.take_block().ok_or(OutOfBlocks)?)
        } else {
            None
        };
        let table = self
            .tables
            .get_mut(&seq)
            .expect("append_token on an allocated sequence");
        table.blocks.extend(new_block);
        table.tokens.push(token);
        Ok(())
    }

    /// Records that the first `computed` tokens of `seq` hold their KV now; every
    /// block this fills is registered in the prefix cache.
    pub fn mark_computed(&mut self, seq: SeqId, computed: usize) {
        let Some(table) = self.tables.get_mut(&seq) else {
            return;
        };
        let full = computed.min(table.tokens.len()) / self.block_size;
        let mut stored: Option<KvEvent> = None;
        for i in table.hashes.len()..full {
            let parent = table.hashes.last().copied();
            let hash = next_block_hash(
                parent,
                &table.tokens[i * self.block_size..(i + 1) * self.block_size],
            );
            table.hashes.push(hash);
            // Another sequence may have computed the same block meanwhile; the first copy
            // stays the cached one and this block is plain storage.
            if self.cached.contains_key(&hash) {
                self.events.extend(stored.take());
                continue;
            }
            let id = table.blocks[i];
            self.blocks[id.0 as usize].hash = Some(hash);
            self.cached.insert(hash, id);
            match &mut stored {
                Some(KvEvent::Stored { hashes, .. }) => hashes.push(hash),
                _ => {
                    stored = Some(KvEvent::Stored {
                        parent,
                        hashes: vec![hash],
                    })
                }
            }
        }
        self.events.extend(stored);
    }

    /// Releases `seq`'s blocks. Cached ones stay cached until their space is needed.
    pub fn free(&mut self, seq: SeqId) {
        let Some(table) = self.tables.remove(&seq) else {
            return;
        };
        // Last block first: it is then evicted first, and a prefix outlives its extensions.
        for &id in table.blocks.iter().rev() {
            let block = &mut self.blocks[id.0 as usize];
            block.refs -= 1;
            if block.refs > 0 {
                continue;
            }
            if block.hash.is_some() {
                self.clock += 1;
                block.released_at = self.clock;
                self.evictable.insert(self.clock, id);
            } else {
                self.free.push(id);
            }
        }
    }

    /// The physical blocks holding `seq`'s tokens, in order.
    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Leading tokens of `tokens` a new sequence would find cached now.
    pub fn cached_prefix_tokens(&self, tokens: &[u32]) -> usize {
        self.plan(tokens).hits.len() * self.block_size
    }

    /// Events since the last drain, oldest first.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    fn plan(&self, tokens: &[u32]) -> Plan {
        let hashes = block_hashes(&tokens[..tokens.len().saturating_sub(1)], self.block_size);
        let hits: Vec<BlockId> = hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect();
        let new_blocks = tokens.len().div_ceil(self.block_size) - hits.len();
        Plan {
            hashes,
            hits,
            new_blocks,
        }
    }

    /// A block for new tokens: a free one, else the least recently released cached one.
    fn take_block(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                let hash = self.blocks[id.0 as usize]
                    .hash
                    .take()
                    .expect("evictable blocks are cached");
                self.cached.remove(&hash);
                match self.events.last_mut() {
                    Some(KvEvent::Removed { hashes }) => hashes.push(hash),
                    _ => self.events.push(KvEvent::Removed { hashes: vec![hash] }),
                }
                id
            }
        };
        self.blocks[id.0 as usize].refs = 1;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn tokens(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    /// Allocates and computes a whole prompt, as a finished prefill would.
    fn prefill(cache: &mut KvCache, seq: u64, prompt: &[u32]) -> usize {
        let cached = cache.allocate(SeqId(seq), prompt).unwrap();
        cache.mark_computed(SeqId(seq), prompt.len());
        cached
    }

    #[test]
    fn a_repeated_prompt_reuses_its_full_blocks() {
        let mut cache = KvCache::new(16, BS);
        assert_eq!(prefill(&mut cache, 1, &tokens(10)), 0);
        // 10 tokens: two full blocks cached, the partial third is not.
        assert_eq!(prefill(&mut cache, 2, &tokens(10)), 8);
        let (a, b) = (
            cache.block_table(SeqId(1)).unwrap(),
            cache.block_table(SeqId(2)).unwrap(),
        );
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_eq!(cache.used_blocks(), 4);
    }

    #[test]
    fn the_last_token_is_always_computed() {
        let mut cache = KvCache::new(16, BS);
        prefill(&mut cache, 1, &tokens(8));
        // The whole prompt is cached, but the model must still see its last token.
        assert_eq!(cache.allocate(SeqId(2), &tokens(8)).unwrap(), 4);
        assert_eq!(cache.allocate(SeqId(3), &tokens(9)).unwrap(), 8);
    }

    #[test]
    fn only_computed_blocks_are_cached() {
        let mut cache = KvCache::new(16, BS);
        cache.allocate(SeqId(1), &tokens(12)).unwrap();
        cache.mark_computed(SeqId(1), 5);
        assert_eq!(cache.allocate(SeqId(2), &tokens(12)).unwrap(), 4);
    }

    #[test]
    fn shared_blocks_are_counted_once_and_outlive_one_owner() {
        let mut cache = KvCache::new(16, BS);
        prefill(&mut cache, 1, &tokens(8));
        assert_eq!(prefill(&mut cache, 2, &tokens(6)), 4);
        assert_eq!(cache.used_blocks(), 2 + 1);
        cache.free(SeqId(1));
        // Block 0 is still held by sequence 2; sequence 1's own second block went to the LRU.
        assert_eq!(cache.used_blocks(), 2);
        cache.free(SeqId(2));
        assert_eq!(cache.used_blocks(), 0);
        assert_eq!(prefill(&mut cache, 3, &tokens(9)), 8);
    }

    #[test]
    fn eviction_takes_free_blocks_first_then_oldest_cached() {
        let mut cache = KvCache::new(4, BS);
        let a: Vec<u32> = (100..108).collect();
        let b: Vec<u32> = (200..208).collect();
        prefill(&mut cache, 1, &a);
        cache.free(SeqId(1));
        prefill(&mut cache, 2, &b);
        cache.free(SeqId(2));
        cache.drain_events();
        // Four cached, unreferenced blocks; nothing plainly free. Take two.
        assert!(cache.can_allocate(&tokens(8)));
        cache.allocate(SeqId(3), &tokens(8)).unwrap();
        let a_hashes = block_hashes(&a, BS);
        // `a` was released first, its last block before its first.
        assert_eq!(
            cache.drain_events(),
            [KvEvent::Removed {
                hashes: vec![a_hashes[1], a_hashes[0]]
            }]
        );
        // `b` survived.
        cache.free(SeqId(3));
        assert_eq!(cache.allocate(SeqId(4), &b).unwrap(), 4);
    }

    #[test]
    fn a_hit_is_not_evicted_to_make_room_for_its_own_sequence() {
        let mut cache = KvCache::new(3, BS);
        prefill(&mut cache, 1, &tokens(8));
        cache.free(SeqId(1));
        // Needs the cached block 0 plus two new blocks: the free one and cached block 1.
        assert_eq!(cache.allocate(SeqId(2), &tokens(12)).unwrap(), 8);
        cache.free(SeqId(2));
        assert!(!cache.can_allocate(&tokens(16)));
        assert_eq!(cache.allocate(SeqId(3), &tokens(16)), Err(OutOfBlocks));
    }

    #[test]
    fn decode_fills_and_registers_blocks() {
        let mut cache = KvCache::new(4, BS);
        prefill(&mut cache, 1, &tokens(3));
        cache.drain_events();
        cache.append_token(SeqId(1), 3).unwrap();
        assert_eq!(cache.block_table(SeqId(1)).unwrap().len(), 1);
        cache.mark_computed(SeqId(1), 4);
        let h = block_hashes(&tokens(4), BS);
        assert_eq!(
            cache.drain_events(),
            [KvEvent::Stored {
                parent: None,
                hashes: h.clone()
            }]
        );
        cache.append_token(SeqId(1), 4).unwrap();
        assert_eq!(cache.block_table(SeqId(1)).unwrap().len(), 2);
        // A second sequence with the generated text as its prompt hits it.
        assert_eq!(cache.allocate(SeqId(2), &tokens(6)).unwrap(), 4);
    }

    #[test]
    fn append_fails_cleanly_when_full() {
        let mut cache = KvCache::new(1, BS);
        cache.allocate(SeqId(1), &tokens(4)).unwrap();
        assert_eq!(cache.append_token(SeqId(1), 9), Err(OutOfBlocks));
        assert_eq!(cache.block_table(SeqId(1)).unwrap().len(), 1);
        cache.free(SeqId(1));
        assert_eq!(cache.used_blocks(), 0);
    }

    #[test]
    fn events_chain_parents_and_skip_duplicates() {
        let mut cache = KvCache::new(16, BS);
        assert_eq!(cache.drain_events(), [KvEvent::Cleared]);
        let h = block_hashes(&tokens(12), BS);
        cache.allocate(SeqId(1), &tokens(12)).unwrap();
        cache.mark_computed(SeqId(1), 4);
        cache.mark_computed(SeqId(1), 12);
        assert_eq!(
            cache.drain_events(),
            [
                KvEvent::Stored {
                    parent: None,
                    hashes: vec![h[0]]
                },
                KvEvent::Stored {
                    parent: Some(h[0]),
                    hashes: vec![h[1], h[2]]
                },
            ]
        );
        // Computed concurrently by a second sequence before either finished: no new events.
        cache.allocate(SeqId(2), &tokens(13)).unwrap();
        cache.allocate(SeqId(3), &[7, 7, 7, 7, 7]).unwrap();
        cache.mark_computed(SeqId(2), 13);
        cache.mark_computed(SeqId(3), 5);
        let h3 = block_hashes(&[7, 7, 7, 7], BS);
        assert_eq!(
            cache.drain_events(),
            [KvEvent::Stored {
                parent: None,
                hashes: h3
            }]
        );
        assert!(cache.drain_events().is_empty());
    }
}
