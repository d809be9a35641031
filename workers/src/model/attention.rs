//! The paged KV store and attention over it: each sequence's keys and values
//! live in the physical blocks its block table names, so blocks shared through
//! the prefix cache are computed once and read by every sequence that shares them.

use super::matmul::dot_inline as dot;
use super::team::Team;
use crate::kv_cache::BlockId;

/// K and V of every slot of every block, for every layer.
pub struct KvStore {
    layers: usize,
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `[block][layer][k or v][kv head][slot][head_dim]`: a block's data is
    /// contiguous, so the OS commits memory only for blocks the cache has
    /// handed out (the zeroed allocation is lazily mapped), and so is each KV
    /// head's part of it, which attention reads as one stream.
    data: Vec<f32>,
}

impl KvStore {
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> KvStore {
        let block = layers * 2 * kv_heads * block_size * head_dim;
        KvStore {
            layers,
            block_size,
            kv_heads,
            head_dim,
            data: vec![0.0; num_blocks * block],
        }
    }

    fn offset(
        &self,
        block: BlockId,
        layer: usize,
        which: usize,
        head: usize,
        slot: usize,
    ) -> usize {
        let plane = ((block.0 as usize * self.layers + layer) * 2 + which) * self.kv_heads + head;
        (plane * self.block_size + slot) * self.head_dim
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
            for (head, src) in src.chunks_exact(self.head_dim).enumerate() {
                let at = self.offset(block, layer, which, head, slot);
                self.data[at..at + self.head_dim].copy_from_slice(src);
            }
        }
    }

    /// K (`which` 0) or V (1) of KV head `head` for every slot of `block` in
    /// `layer`: `[slot][head_dim]`.
    fn plane(&self, block: BlockId, layer: usize, which: usize, head: usize) -> &[f32] {
        let at = self.offset(block, layer, which, head, 0);
        &self.data[at..at + self.block_size * self.head_dim]
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
#[allow(clippy::too_many_arguments)]
pub fn attend(
    team: &Team,
    store: &KvStore,
    layer: usize,
    places: &[TokenPlace<'_>],
    q: &[f32],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; q.len()];
    // One task per KV head of each token, with all the query heads that share
    // it: its keys and values are read once for the group.
    let group = (heads / kv_heads) * head_dim;
    let one = |i: usize, out: &mut [f32]| {
        let heads = Heads {
            store,
            layer,
            place: &places[i / kv_heads],
            kv_head: i % kv_heads,
            head_dim,
        };
        heads.attend(&q[i * group..(i + 1) * group], out);
    };
    // Decoding a short sequence is a few microseconds of work, less than
    // handing it to other threads costs.
    let work: usize = places
        .iter()
        .map(|p| (p.position + 1) * heads * head_dim)
        .sum();
    if work < PARALLEL_MIN_WORK {
        for (i, out) in out.chunks_mut(group).enumerate() {
            one(i, out);
        }
    } else {
        team.for_chunks(&mut out, group, one);
    }
    out
}

/// Multiply-adds (of K, and again of V) below which attention runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// The query heads of one token that share a KV head, over its keys and values.
struct Heads<'a> {
    store: &'a KvStore,
    layer: usize,
    place: &'a TokenPlace<'a>,
    kv_head: usize,
    head_dim: usize,
}

impl Heads<'_> {
    /// Writes the attention output of each head of `q` (`[heads, head_dim]`)
    /// into `out` (zeroed). Compiled for AVX-512 and AVX2 too, chosen at run
    /// time, as the matrix products are.
    fn attend(&self, q: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                // SAFETY: the CPU has AVX-512F, all `attend_avx512` is compiled for.
                return unsafe { self.attend_avx512(q, out) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, all `attend_avx2` is compiled for.
                return unsafe { self.attend_avx2(q, out) };
            }
        }
        self.attend_any(q, out, dot)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn attend_avx512(&self, q: &[f32], out: &mut [f32]) {
        self.attend_any(q, out, |a, b| dot_avx512(a, b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn attend_avx2(&self, q: &[f32], out: &mut [f32]) {
        self.attend_any(q, out, dot)
    }

    /// Inlined into each `target_feature` function above, so its loops take
    /// their features. `dot` is given: the AVX-512 build needs its own, as the
    /// compiler vectorized the portable one in 2-lane pieces there.
    #[inline(always)]
    fn attend_any(&self, q: &[f32], out: &mut [f32], dot: impl Fn(&[f32], &[f32]) -> f32) {
        let hd = self.head_dim;
        let len = self.place.position + 1;
        let scale = 1.0 / (hd as f32).sqrt();
        // `scores[h * len + t]`: head `h`'s score of position `t`.
        let mut scores = vec![0.0f32; q.len() / hd * len];
        let mut t = 0;
        for (plane, slots) in self.planes(0, len) {
            for key in plane.chunks_exact(hd).take(slots) {
                for (h, q) in q.chunks_exact(hd).enumerate() {
                    scores[h * len + t] = scale * dot(q, key);
                }
                t += 1;
            }
        }
        for scores in scores.chunks_exact_mut(len) {
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            for s in scores.iter_mut() {
                *s /= total;
            }
        }
        let mut t = 0;
        for (plane, slots) in self.planes(1, len) {
            for value in plane.chunks_exact(hd).take(slots) {
                for (h, out) in out.chunks_exact_mut(hd).enumerate() {
                    axpy(scores[h * len + t], value, out);
                }
                t += 1;
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
                let plane = self.store.plane(block, self.layer, which, self.kv_head);
                (plane, size.min(len - i * size))
            })
    }
}

/// `Σ a b` over 16 lanes, the last load masked to what is left.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let mask = (u32::MAX >> (32 - (n - i).min(16))) as u16;
        // SAFETY: the mask keeps both loads within elements `i..n`.
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, a.as_ptr().add(i)),
                _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)),
            )
        };
        acc = _mm512_fmadd_ps(a, b, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// `out += a x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o += a * x;
    }
}
