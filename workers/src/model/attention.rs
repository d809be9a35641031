//! The paged KV store and attention over it: each sequence's keys and values
//! live in the physical blocks its block table names, so blocks shared through
//! the prefix cache are computed once and read by every sequence that shares them.

use rayon::prelude::*;

use super::matmul::dot_inline as dot;
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

    /// K (`which` 0) or V (1) of every slot of `block` in `layer`: `[slot][kv_dim]`.
    fn plane(&self, block: BlockId, layer: usize, which: usize) -> &[f32] {
        let at = self.offset(block, layer, which, 0);
        &self.data[at..at + self.block_size * self.kv_dim]
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
    let one = |(i, (out, q)): (usize, (&mut [f32], &[f32]))| {
        let head = Head {
            store,
            layer,
            place: &places[i / heads],
            kv_at: (i % heads) / group * head_dim,
            scale,
        };
        head.attend(q, out);
    };
    // Decoding a short sequence is a few microseconds of work per head, less than
    // handing heads to other threads costs.
    let work: usize = places
        .iter()
        .map(|p| (p.position + 1) * heads * head_dim)
        .sum();
    if work < PARALLEL_MIN_WORK {
        out.chunks_mut(head_dim)
            .zip(q.chunks(head_dim))
            .enumerate()
            .for_each(one);
    } else {
        out.par_chunks_mut(head_dim)
            .zip(q.par_chunks(head_dim))
            .enumerate()
            .for_each(one);
    }
    out
}

/// Multiply-adds (of K, and again of V) below which attention runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// One query head of one token, over its KV head's keys and values.
struct Head<'a> {
    store: &'a KvStore,
    layer: usize,
    place: &'a TokenPlace<'a>,
    /// Where the KV head starts within a token's K (or V).
    kv_at: usize,
    scale: f32,
}

impl Head<'_> {
    /// Adds the attention output of `q` to `out` (zeroed). Compiled for AVX-512
    /// and AVX2 too, chosen at run time, as the matrix products are.
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                // SAFETY: the CPU has AVX-512F, all `attend_avx512` is compiled for.
                return unsafe { self.attend_avx512(q, out) };
            }
            if has!("avx2") {
                // SAFETY: the CPU has AVX2, all `attend_avx2` is compiled for.
                return unsafe { self.attend_avx2(q, out) };
            }
        }
        self.attend_any(q, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn attend_avx512(&self, q: &[f32], out: &mut [f32]) {
        self.attend_any(q, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn attend_avx2(&self, q: &[f32], out: &mut [f32]) {
        self.attend_any(q, out)
    }

    /// Loops, not closures: a closure is compiled apart from the `target_feature`
    /// function it sits in, without its features.
    #[inline(always)]
    fn attend_any(&self, q: &[f32], out: &mut [f32]) {
        let len = self.place.position + 1;
        let mut scores = Vec::with_capacity(len);
        for (plane, slots) in self.planes(0, len) {
            for row in plane.chunks_exact(self.store.kv_dim).take(slots) {
                scores.push(self.scale * dot(q, self.head(row, q.len())));
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in &mut scores {
            *s = (*s - max).exp();
            total += *s;
        }
        let mut weights = scores.iter().map(|s| s / total);
        for (plane, slots) in self.planes(1, len) {
            for (row, weight) in plane
                .chunks_exact(self.store.kv_dim)
                .zip(&mut weights)
                .take(slots)
            {
                for (o, v) in out.iter_mut().zip(self.head(row, q.len())) {
                    *o += weight * v;
                }
            }
        }
    }

    /// K (`which` 0) or V (1) planes of the blocks holding positions `0..len`,
    /// each with how many of its slots those positions fill.
    #[inline(always)]
    fn planes(&self, which: usize, len: usize) -> impl Iterator<Item = (&[f32], usize)> {
        let size = self.store.block_size;
        self.place.blocks[..len.div_ceil(size)]
            .iter()
            .enumerate()
            .map(move |(i, &block)| {
                let plane = self.store.plane(block, self.layer, which);
                (plane, size.min(len - i * size))
            })
    }

    /// This head's part of a token's K or V row.
    #[inline(always)]
    fn head<'r>(&self, row: &'r [f32], head_dim: usize) -> &'r [f32] {
        &row[self.kv_at..self.kv_at + head_dim]
    }
}
