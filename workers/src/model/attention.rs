//! The paged KV store and attention over it: each sequence's keys and values
//! live in the physical blocks its block table names, so blocks shared through
//! the prefix cache are computed once and read by every sequence that shares them.

use std::ops::Range;

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
///
/// Each KV head of each token is split into spans of positions, one task each
/// with all the query heads that share the KV head (its keys and values are
/// read once for the group); the spans' partial softmaxes are merged after.
/// Why split: unsplit, decoding one sequence has as few tasks as KV heads (3
/// for SmolLM2, uneven on 2 threads), and its K/V come from memory, which one
/// thread reads at a fraction of what two do.
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
    let group = heads / kv_heads;
    let positions = places.iter().map(|p| p.position + 1).sum::<usize>() * kv_heads;
    let span = positions
        .div_ceil(team.threads() * SPANS_PER_THREAD)
        .max(MIN_SPAN);
    // (token × KV head, its positions): the spans of one are adjacent.
    let spans: Vec<(usize, Range<usize>)> = (0..places.len() * kv_heads)
        .flat_map(|i| {
            let len = places[i / kv_heads].position + 1;
            let size = len.div_ceil(len.div_ceil(span));
            (0..len)
                .step_by(size)
                .map(move |p| (i, p..(p + size).min(len)))
        })
        .collect();
    let part_len = group * (head_dim + 2);
    let mut parts = vec![0.0f32; spans.len() * part_len];
    team.for_chunks(&mut parts, part_len, |j, part| {
        let (i, ref positions) = spans[j];
        let span = Span {
            store,
            layer,
            blocks: places[i / kv_heads].blocks,
            kv_head: i % kv_heads,
            head_dim,
            positions: positions.clone(),
        };
        span.attend(&q[i * group * head_dim..][..group * head_dim], part);
    });
    let mut out = vec![0.0f32; q.len()];
    let mut parts = spans
        .iter()
        .map(|&(i, _)| i)
        .zip(parts.chunks_exact(part_len))
        .peekable();
    for (i, out) in out.chunks_exact_mut(group * head_dim).enumerate() {
        let mut mine = Vec::new();
        while let Some((_, part)) = parts.next_if(|&(j, _)| j == i) {
            mine.push(part);
        }
        merge(&mine, group, head_dim, out);
    }
    out
}

/// Spans per thread when a step's positions are split: a whole number, so
/// the threads end together, and more than one, so a thread the OS preempts
/// leaves work the others take. A step with many tokens (prefill, large
/// batches) has that many tasks unsplit, and is not split.
const SPANS_PER_THREAD: usize = 4;

/// Fewest positions worth a span of their own: its fixed costs (a task, a
/// partial result to merge) would outweigh the work of fewer.
const MIN_SPAN: usize = 32;

/// A span's partial result per query head `h`: its largest score `m` (at
/// `h`), `Σ exp(s − m)` (at `group + h`), then `Σ exp(s − m) v` (`head_dim`
/// values at `2 group + h head_dim`).
fn merge(parts: &[&[f32]], group: usize, head_dim: usize, out: &mut [f32]) {
    for (h, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let max = parts.iter().map(|p| p[h]).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for part in parts {
            let weight = (part[h] - max).exp();
            total += weight * part[group + h];
            axpy(weight, &part[2 * group + h * head_dim..][..head_dim], out);
        }
        for o in out.iter_mut() {
            *o /= total;
        }
    }
}

/// The query heads of one token that share a KV head, over the keys and
/// values of some of its positions.
struct Span<'a> {
    store: &'a KvStore,
    layer: usize,
    blocks: &'a [BlockId],
    kv_head: usize,
    head_dim: usize,
    positions: Range<usize>,
}

impl Span<'_> {
    /// Writes the partial result of each head of `q` (`[heads, head_dim]`)
    /// into `part` (zeroed; laid out as `merge` reads it). Compiled for
    /// AVX-512 and AVX2 too, chosen at run time, as the matrix products are.
    fn attend(&self, q: &[f32], part: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                // SAFETY: the CPU has AVX-512F, all `attend_avx512` is compiled for.
                return unsafe { self.attend_avx512(q, part) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, all `attend_avx2` is compiled for.
                return unsafe { self.attend_avx2(q, part) };
            }
        }
        self.attend_any(q, part, dot)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn attend_avx512(&self, q: &[f32], part: &mut [f32]) {
        self.attend_any(q, part, |a, b| dot_avx512(a, b))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn attend_avx2(&self, q: &[f32], part: &mut [f32]) {
        self.attend_any(q, part, dot)
    }

    /// Inlined into each `target_feature` function above, so its loops take
    /// their features. `dot` is given: the AVX-512 build needs its own, as the
    /// compiler vectorized the portable one in 2-lane pieces there.
    #[inline(always)]
    fn attend_any(&self, q: &[f32], part: &mut [f32], dot: impl Fn(&[f32], &[f32]) -> f32) {
        let hd = self.head_dim;
        let group = q.len() / hd;
        let len = self.positions.len();
        let scale = 1.0 / (hd as f32).sqrt();
        // `scores[h * len + t]`: head `h`'s score of the span's position `t`.
        let mut scores = vec![0.0f32; group * len];
        let mut t = 0;
        for plane in self.planes(0) {
            for key in plane.chunks_exact(hd) {
                for (h, q) in q.chunks_exact(hd).enumerate() {
                    scores[h * len + t] = scale * dot(q, key);
                }
                t += 1;
            }
        }
        let (stats, values) = part.split_at_mut(2 * group);
        for (h, scores) in scores.chunks_exact_mut(len).enumerate() {
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            stats[h] = max;
            stats[group + h] = total;
        }
        let mut t = 0;
        for plane in self.planes(1) {
            for value in plane.chunks_exact(hd) {
                for (h, out) in values.chunks_exact_mut(hd).enumerate() {
                    axpy(scores[h * len + t], value, out);
                }
                t += 1;
            }
        }
    }

    /// The span's keys (`which` 0) or values (1) in each block it covers:
    /// `[slot][head_dim]`, cut to the span's slots.
    #[inline(always)]
    fn planes(&self, which: usize) -> impl Iterator<Item = &[f32]> {
        let (size, hd) = (self.store.block_size, self.head_dim);
        let Range { start, end } = self.positions;
        (start / size..end.div_ceil(size)).map(move |b| {
            let plane = self
                .store
                .plane(self.blocks[b], self.layer, which, self.kv_head);
            let slots = start.max(b * size) - b * size..end.min((b + 1) * size) - b * size;
            &plane[slots.start * hd..slots.end * hd]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention of one token's query heads over its sequence, in f64.
    fn naive(keys: &[Vec<f32>], values: &[Vec<f32>], q: &[f32], group: usize) -> Vec<f64> {
        let hd = q.len() / group;
        let mut out = Vec::new();
        for q in q.chunks(hd) {
            let scores: Vec<f64> = keys
                .iter()
                .map(|k| {
                    k.iter()
                        .zip(q)
                        .map(|(&k, &q)| f64::from(k * q))
                        .sum::<f64>()
                })
                .map(|s| s / (hd as f64).sqrt())
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            out.extend((0..hd).map(|d| {
                weights
                    .iter()
                    .zip(values)
                    .map(|(w, v)| w * f64::from(v[d]))
                    .sum::<f64>()
                    / total
            }));
        }
        out
    }

    #[test]
    fn long_sequences_split_into_spans_match_one_softmax() {
        // 150 positions: three spans of 50, which blocks of 4 do not align with.
        let (block_size, kv_heads, heads, hd, len) = (4, 2, 4, 8, 150usize);
        let mut store = KvStore::new(64, block_size, 2, kv_heads, hd);
        let blocks: Vec<BlockId> = (0..len.div_ceil(block_size) as u32)
            .map(|i| BlockId((i * 7) % 64))
            .collect();
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for p in 0..len {
            let k: Vec<f32> = (0..kv_heads * hd).map(|i| value(p * 31 + i)).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|i| value(p * 57 + i + 3)).collect();
            store.write(&blocks, p, 1, &k, &v);
            keys.push(k);
            values.push(v);
        }
        // Two tokens: the last position, and one within the first span.
        let places = [len - 1, 20].map(|position| TokenPlace {
            blocks: &blocks,
            position,
        });
        let q: Vec<f32> = (0..2 * heads * hd).map(|i| value(i * 13 + 5)).collect();
        let out = attend(&Team::new(2), &store, 1, &places, &q, heads, kv_heads, hd);
        let group = heads / kv_heads;
        for (t, place) in places.iter().enumerate() {
            for kv in 0..kv_heads {
                let head = |rows: &[Vec<f32>]| -> Vec<Vec<f32>> {
                    rows[..=place.position]
                        .iter()
                        .map(|r| r[kv * hd..(kv + 1) * hd].to_vec())
                        .collect()
                };
                let at = (t * kv_heads + kv) * group * hd;
                let q = &q[at..at + group * hd];
                let expected = naive(&head(&keys), &head(&values), q, group);
                for (ours, theirs) in out[at..at + group * hd].iter().zip(expected) {
                    assert!(
                        (f64::from(*ours) - theirs).abs() < 1e-5,
                        "{ours} vs {theirs}"
                    );
                }
            }
        }
    }
}
