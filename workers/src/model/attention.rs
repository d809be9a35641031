//! The paged KV store and attention over it: each sequence's keys and values
//! live in the physical blocks its block table names, so blocks shared through
//! the prefix cache are computed once and read by every sequence that shares them.

use rayon::prelude::*;

use crate::kv_cache::BlockId;

/// K and V of every slot of every block, for every layer.
pub struct KvStore {
    layers: usize,
    block_size: usize,
    kv_dim: usize,
    /// `[block][layer][k or v][slot][kv_dim]`: a block's data is contiguous, so
    /// the OS commits memory only for blocks the cache has handed out (the
    /// zeroed allocation is lazily mapped).
    data: Vec<f32>,
}

impl KvStore {
    pub fn new(num_blocks: usize, block_size: usize, layers: usize, kv_dim: usize) -> KvStore {
        KvStore {
            layers,
            block_size,
            kv_dim,
            data: vec![0.0; num_blocks * layers * 2 * block_size * kv_dim],
        }
    }

    fn offset(&self, block: BlockId, layer: usize, which: usize, slot: usize) -> usize {
        let plane = (block.0 as usize * self.layers + layer) * 2 + which;
        (plane * self.block_size + slot) * self.kv_dim
    }

    /// Stores the K and V of the token at `position` of a sequence with `blocks`.
    pub fn write(
        &mut self,
        blocks: &[BlockId],
        position: usize,
        layer: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let (block, slot) = (
            blocks[position / self.block_size],
            position % self.block_size,
        );
        for (which, src) in [(0, k), (1, v)] {
            let at = self.offset(block, layer, which, slot);
            self.data[at..at + self.kv_dim].copy_from_slice(src);
        }
    }

    fn read(&self, blocks: &[BlockId], position: usize, layer: usize, which: usize) -> &[f32] {
        let (block, slot) = (
            blocks[position / self.block_size],
            position % self.block_size,
        );
        let at = self.offset(block, layer, which, slot);
        &self.data[at..at + self.kv_dim]
    }
}

/// Where one token of the step sits: its sequence's blocks and its position.
pub struct TokenPlace<'a> {
    pub blocks: &'a [BlockId],
    pub position: usize,
}

/// Causal grouped-query attention of every token of the step, each over its own
/// sequence's positions `0..=position` (all of whose K/V are stored by now).
/// `q: [tokens, heads, head_dim]`; returns the same shape.
pub fn attend(
    store: &KvStore,
    layer: usize,
    places: &[TokenPlace<'_>],
    q: &[f32],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; q.len()];
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(head_dim)
        .zip(q.par_chunks(head_dim))
        .enumerate()
        .for_each(|(i, (out, q))| {
            let place = &places[i / heads];
            let kv_at = (i % heads) / group * head_dim;
            let kv =
                |pos, which| &store.read(place.blocks, pos, layer, which)[kv_at..kv_at + head_dim];
            let mut scores: Vec<f32> = (0..=place.position)
                .map(|pos| scale * q.iter().zip(kv(pos, 0)).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for s in &mut scores {
                *s = (*s - max).exp();
                total += *s;
            }
            for (pos, s) in scores.iter().enumerate() {
                let weight = s / total;
                for (o, v) in out.iter_mut().zip(kv(pos, 1)) {
                    *o += weight * v;
                }
            }
        });
    out
}
