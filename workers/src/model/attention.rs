//! The paged KV store and attention over it: each sequence's keys and values
//! live in the physical blocks its block table names, so blocks shared through
//! the prefix cache are computed once and read by every sequence that shares them.

use std::ops::Range;

use half::f16;

use super::exp::exp;
use super::team::Team;
use crate::kv_cache::BlockId;

/// K and V of every slot of every block, for every layer, in f16 (as
/// llama.cpp's cache by default): attention's time goes mostly to reading
/// them, and the same memory holds twice the blocks.
pub struct KvStore {
    layers: usize,
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `[block][layer][k or v][kv head]`, then keys `[head_dim][slot]` and
    /// values `[slot][head_dim]`: a block's data is contiguous, so the OS
    /// commits memory only for blocks the cache has handed out (the zeroed
    /// allocation is lazily mapped), and so is each KV head's part of it,
    /// which attention reads as one stream. Keys are transposed so a query's
    /// scores for 16 slots are one vector of sums, with no horizontal adds.
    /// Held as the bits, so the zeroed allocation is one the OS maps lazily
    /// (`vec!` of zeros gets that for primitive types, not for `f16`).
    data: Vec<u16>,
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
            data: vec![0; num_blocks * block],
        }
    }

    fn data(&self) -> &[f16] {
        bytemuck::cast_slice(&self.data)
    }

    fn data_mut(&mut self) -> &mut [f16] {
        bytemuck::cast_slice_mut(&mut self.data)
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
        let size = self.block_size;
        for (head, k) in k.chunks_exact(self.head_dim).enumerate() {
            let at = self.offset(block, layer, 0, head, 0);
            let plane = &mut self.data_mut()[at..];
            for (d, &k) in k.iter().enumerate() {
                plane[d * size + slot] = f16::from_f32(k);
            }
        }
        for (head, v) in v.chunks_exact(self.head_dim).enumerate() {
            let at = self.offset(block, layer, 1, head, slot);
            for (to, &v) in self.data_mut()[at..at + v.len()].iter_mut().zip(v) {
                *to = f16::from_f32(v);
            }
        }
    }

    /// K (`which` 0, `[head_dim][slot]`) or V (1, `[slot][head_dim]`) of KV
    /// head `head` for every slot of `block` in `layer`.
    fn plane(&self, block: BlockId, layer: usize, which: usize, head: usize) -> &[f16] {
        let at = self.offset(block, layer, which, head, 0);
        &self.data()[at..at + self.block_size * self.head_dim]
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
    // A sequence's first token in the step finds its K/V in memory (the
    // weights have streamed through the caches since it was last read); the
    // rest of a prefill chunk, after it, finds the same positions in cache.
    let first = |t: usize| {
        t == 0
            || places[t - 1].position + 1 != places[t].position
            || !std::ptr::eq(places[t - 1].blocks, places[t].blocks)
    };
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
            from_memory: first(i / kv_heads),
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
/// batches) has enough tasks already: its spans are whole sequences.
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
    /// Its K/V are likely in memory, not in cache: ask for them first.
    from_memory: bool,
}

impl Span<'_> {
    /// Writes the partial result of each head of `q` (`[heads, head_dim]`)
    /// into `part` (zeroed; laid out as `merge` reads it). Compiled for
    /// AVX-512 and AVX2 too, chosen at run time, as the matrix products are.
    fn attend(&self, q: &[f32], part: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("f16c") {
                // SAFETY: the CPU has AVX-512F and F16C, all `attend_avx512` is compiled for.
                return unsafe { self.attend_avx512(q, part) };
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                // SAFETY: the CPU has AVX2, FMA and F16C, all `attend_avx2` is compiled for.
                return unsafe { self.attend_avx2(q, part) };
            }
        }
        self.attend_any(q, part, |a, b, c| a * b + c, |h| h.map(f16::to_f32))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma,f16c")]
    fn attend_avx512(&self, q: &[f32], part: &mut [f32]) {
        use std::arch::x86_64::*;
        self.attend_any(q, part, f32::mul_add, |h| {
            let mut out = [0.0f32; LANES];
            // SAFETY: the CPU has AVX-512F and F16C (this function's
            // features); the load reads `h`'s 32 bytes, the store writes `out`'s 64.
            unsafe {
                let wide = _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast()));
                _mm512_storeu_ps(out.as_mut_ptr(), wide);
            }
            out
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn attend_avx2(&self, q: &[f32], part: &mut [f32]) {
        use std::arch::x86_64::*;
        self.attend_any(q, part, f32::mul_add, |h| {
            let mut out = [0.0f32; LANES];
            // SAFETY: the CPU has AVX2 and F16C (this function's features);
            // the loads read `h`'s 32 bytes and the stores write `out`'s 64.
            unsafe {
                for i in [0, 8] {
                    let narrow = _mm_loadu_si128(h[i..].as_ptr().cast());
                    _mm256_storeu_ps(out[i..].as_mut_ptr(), _mm256_cvtph_ps(narrow));
                }
            }
            out
        })
    }

    /// Inlined into each `target_feature` function above, so its loops take
    /// their features. `madd(a, b, c)` is `a b + c`: fused where the target
    /// has FMA, plain elsewhere (where `mul_add` would be a library call).
    /// `widen` turns 16 stored values into f32, in one instruction where the
    /// target has F16C. The heads go in chunks of up to [`HEADS`], each chunk
    /// reading the values once.
    #[inline(always)]
    fn attend_any(
        &self,
        q: &[f32],
        part: &mut [f32],
        madd: impl Fn(f32, f32, f32) -> f32,
        widen: impl Fn(&[f16; LANES]) -> [f32; LANES],
    ) {
        let hd = self.head_dim;
        if self.from_memory {
            for (b, _) in self.blocks_covered() {
                prefetch_l2(self.plane(b, 0));
                prefetch_l2(self.plane(b, 1));
            }
        }
        let group = q.len() / hd;
        let (stats, values) = part.split_at_mut(2 * group);
        let (maxes, totals) = stats.split_at_mut(group);
        let chunks = q.chunks(HEADS * hd).zip(values.chunks_mut(HEADS * hd));
        for (c, (q, out)) in chunks.enumerate() {
            let heads = c * HEADS..c * HEADS + q.len() / hd;
            let stats = (&mut maxes[heads.clone()], &mut totals[heads.clone()]);
            match heads.len() {
                1 => self.heads::<1>(q, stats, out, &madd, &widen),
                2 => self.heads::<2>(q, stats, out, &madd, &widen),
                3 => self.heads::<3>(q, stats, out, &madd, &widen),
                _ => self.heads::<HEADS>(q, stats, out, &madd, &widen),
            }
        }
    }

    /// [`Span::attend_any`] for `G` query heads `q` (`[G, head_dim]`): their
    /// largest scores and sums into `stats`, their weighted values into `out`.
    #[inline(always)]
    fn heads<const G: usize>(
        &self,
        q: &[f32],
        (maxes, totals): (&mut [f32], &mut [f32]),
        out: &mut [f32],
        madd: &impl Fn(f32, f32, f32) -> f32,
        widen: &impl Fn(&[f16; LANES]) -> [f32; LANES],
    ) {
        let hd = self.head_dim;
        let len = self.positions.len();
        let size = self.store.block_size;
        let q: [&[f32]; G] = std::array::from_fn(|h| &q[h * hd..][..hd]);
        // `scores[h * len + t]`: head `h`'s score of the span's position `t`.
        let mut scores = vec![0.0f32; G * len];
        let mut t = 0;
        for (b, slots) in self.blocks_covered() {
            let keys = self.plane(b, 0);
            let n = slots.len();
            if size < LANES {
                for (h, q) in q.iter().enumerate() {
                    for (i, slot) in slots.clone().enumerate() {
                        scores[h * len + t + i] = (0..hd).fold(0.0, |acc, d| {
                            madd(q[d], keys[d * size + slot].to_f32(), acc)
                        });
                    }
                }
            } else {
                // Sixteen slots at a time; a last run shorter than that takes
                // the block's sixteen that end with it.
                for done in (0..n).step_by(LANES) {
                    let first = (slots.start + done).min(size - LANES);
                    let skip = slots.start + done - first;
                    let count = (n - done).min(LANES);
                    for (h, q) in q.iter().enumerate() {
                        let sums = sixteen(keys, size, first, q, madd, widen);
                        scores[h * len + t + done..][..count]
                            .copy_from_slice(&sums[skip..skip + count]);
                    }
                }
            }
            t += n;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (h, scores) in scores.chunks_exact_mut(len).enumerate() {
            let max = scores
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
            for s in scores.iter_mut() {
                *s = exp((*s - max) * scale, madd);
            }
            maxes[h] = max * scale;
            totals[h] = sum(scores);
        }
        let mut t = 0;
        for (b, slots) in self.blocks_covered() {
            let values = &self.plane(b, 1)[slots.start * hd..slots.end * hd];
            let weights: [&[f32]; G] =
                std::array::from_fn(|h| &scores[h * len + t..][..slots.len()]);
            if hd.is_multiple_of(64) {
                for at in (0..hd).step_by(64) {
                    weigh::<G, 64>(&weights, values, hd, at, out, madd, widen);
                }
            } else if hd.is_multiple_of(LANES) {
                for at in (0..hd).step_by(LANES) {
                    weigh::<G, LANES>(&weights, values, hd, at, out, madd, widen);
                }
            } else {
                for (h, out) in out.chunks_exact_mut(hd).enumerate() {
                    for (w, value) in weights[h].iter().zip(values.chunks_exact(hd)) {
                        for (o, v) in out.iter_mut().zip(value) {
                            *o = madd(*w, v.to_f32(), *o);
                        }
                    }
                }
            }
            t += slots.len();
        }
    }

    /// K (`which` 0, `[head_dim][slot]`) or V (1, `[slot][head_dim]`) of
    /// the span's KV head in block `b` of its sequence.
    #[inline(always)]
    fn plane(&self, b: usize, which: usize) -> &[f16] {
        self.store
            .plane(self.blocks[b], self.layer, which, self.kv_head)
    }

    /// Each block of the span's positions, as its index in the block table
    /// and the slots of it the span covers.
    #[inline(always)]
    fn blocks_covered(&self) -> impl Iterator<Item = (usize, Range<usize>)> {
        let size = self.store.block_size;
        let Range { start, end } = self.positions;
        (start / size..end.div_ceil(size)).map(move |b| {
            (
                b,
                start.max(b * size) - b * size..end.min((b + 1) * size) - b * size,
            )
        })
    }
}

/// Slots whose scores are summed together: one AVX-512 register of f32.
const LANES: usize = 16;

/// Query heads whose values are weighed in one pass over them: at most four,
/// so 64 dimensions of each hold 16 sums in AVX-512's 32 registers.
const HEADS: usize = 4;

/// The scores of `q` for slots `first..first + 16` of a block's `keys`
/// (`[head_dim][size]`), unscaled: four independent sums over `head_dim`, so
/// the fused adds do not wait on each other. One head at a time: summing
/// several heads' scores in one loop (to load each row of keys once) grew
/// it past what the compiler unrolls, and it compiled to scalar code with
/// the sums on the stack.
#[inline(always)]
fn sixteen(
    keys: &[f16],
    size: usize,
    first: usize,
    q: &[f32],
    madd: &impl Fn(f32, f32, f32) -> f32,
    widen: &impl Fn(&[f16; LANES]) -> [f32; LANES],
) -> [f32; LANES] {
    let row = |d: usize| -> [f32; LANES] {
        let at = d * size + first;
        widen(keys[at..at + LANES].try_into().unwrap())
    };
    let mut acc = [[0.0f32; LANES]; 4];
    // Whole fours of `head_dim`, unrolled so each sum stays in a register.
    let (fours, rest) = q.as_chunks::<4>();
    for (i, q4) in fours.iter().enumerate() {
        for (j, (acc, &q)) in acc.iter_mut().zip(q4).enumerate() {
            let k = row(4 * i + j);
            for l in 0..LANES {
                acc[l] = madd(q, k[l], acc[l]);
            }
        }
    }
    for (j, &q) in rest.iter().enumerate() {
        let k = row(4 * fours.len() + j);
        for l in 0..LANES {
            acc[0][l] = madd(q, k[l], acc[0][l]);
        }
    }
    let [a, b, c, d] = acc;
    std::array::from_fn(|i| (a[i] + b[i]) + (c[i] + d[i]))
}

/// `out[h] += Σ_t weights[h][t] values[t]` over dimensions `at..at + W` of
/// `G` heads (`out: [G, head_dim]`, `values: [slot, head_dim]`), the sums
/// held in registers across the slots: `G W / 16` independent chains.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weigh<const G: usize, const W: usize>(
    weights: &[&[f32]; G],
    values: &[f16],
    hd: usize,
    at: usize,
    out: &mut [f32],
    madd: &impl Fn(f32, f32, f32) -> f32,
    widen: &impl Fn(&[f16; LANES]) -> [f32; LANES],
) {
    let mut acc: [[f32; W]; G] =
        std::array::from_fn(|h| out[h * hd + at..][..W].try_into().unwrap());
    for (t, value) in values.chunks_exact(hd).enumerate() {
        let mut wide = [0.0f32; W];
        for (wide, value) in wide
            .chunks_exact_mut(LANES)
            .zip(value[at..at + W].as_chunks().0)
        {
            wide.copy_from_slice(&widen(value));
        }
        let value = &wide;
        for h in 0..G {
            let w = weights[h][t];
            for l in 0..W {
                acc[h][l] = madd(w, value[l], acc[h][l]);
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        out[h * hd + at..][..W].copy_from_slice(acc);
    }
}

/// Asks for the cache lines of `data` into L2 (on x86-64; elsewhere this
/// does nothing). A span's keys and values are short runs, a block's plane
/// each (2 KiB at 16 slots of 64 dimensions), in blocks anywhere in the
/// store: too short for the hardware prefetcher to get going, and after the
/// weights have streamed through the caches since the last token, all in
/// memory. Asked for at once, their misses overlap. Into L2, not L1, whose
/// few miss buffers the asks would fill: over 96 positions of SmolLM2's 30
/// layers from memory, attention took 230-263 µs with this, against
/// 247-322 µs without and no gain into L1 (2026-12-04, 2 threads). Asking
/// for lines already in cache costs only the asks, but a prefill's tokens
/// each read every earlier position: asked for on all of them, prefill of
/// 640 tokens lost ~2%.
#[inline(always)]
fn prefetch_l2(data: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(32) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // SAFETY: SSE, which every x86-64 CPU has; a prefetch only asks.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// `Σ x`, in sixteen lanes so the adds vectorize (one running sum cannot be
/// reordered).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for chunk in chunks {
        for l in 0..LANES {
            lanes[l] += chunk[l];
        }
    }
    lanes.iter().chain(rest).sum()
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
        // 150 positions in spans (see `attend`) that blocks of 64 do not
        // align with: runs of 16 slots from a block's start and from within
        // it, and shorter ones. Head sizes take each path of the values (64
        // at a time, 16, one by one); groups of 2, 3, 5 (4 + 1) and 1 heads.
        for (hd, heads, kv_heads) in [(8, 4, 2), (64, 9, 3), (16, 10, 2), (128, 4, 4)] {
            spans_match_one_softmax(64, hd, heads, kv_heads);
        }
        // Blocks smaller than sixteen slots: scores one by one.
        spans_match_one_softmax(4, 16, 4, 2);
    }

    fn spans_match_one_softmax(block_size: usize, hd: usize, heads: usize, kv_heads: usize) {
        let len = 150usize;
        let count = len.div_ceil(block_size) as u32;
        let mut store = KvStore::new(count as usize, block_size, 2, kv_heads, hd);
        let blocks: Vec<BlockId> = (0..count).map(|i| BlockId((i * 7) % count)).collect();
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for p in 0..len {
            let k: Vec<f32> = (0..kv_heads * hd).map(|i| value(p * 31 + i)).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|i| value(p * 57 + i + 3)).collect();
            store.write(&blocks, p, 1, &k, &v);
            // What the store holds: f16.
            let stored = |x: Vec<f32>| -> Vec<f32> {
                x.into_iter().map(|x| f16::from_f32(x).to_f32()).collect()
            };
            keys.push(stored(k));
            values.push(stored(v));
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
                        "{ours} vs {theirs}, head size {hd}, {heads} heads over {kv_heads}"
                    );
                }
            }
        }
    }
}
