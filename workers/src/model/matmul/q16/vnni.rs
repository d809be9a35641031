//! AVX-512 VNNI on 256-bit registers: `dpbusd` multiplies 32 pairs of u8 and
//! i8 and adds each four products into a lane of i32. A tile's 32-byte load
//! holds four weights of each of eight rows, so one `dpbusd` against four
//! activations broadcast to every lane adds four products to each row's sum.
//!
//! The activations are split into bytes, `x = 256 hi + lo` with `lo` in
//! 0..=255 and `hi` in -128..=127, so every 16-bit value is exact: `lo` is
//! the unsigned operand against the signed weights, and `hi` the signed one
//! against unsigned weights: Q4_1's nibbles, or Q8_0's `w + 128`, whose
//! excess `128 Σ hi` is taken off the block's sum.

use std::arch::x86_64::*;

use super::avx2::{lanes, load, prefetch, widen, widen_two};
use super::*;

#[target_feature(enable = "avx2,fma,f16c,avx512vl,avx512vnni")]
pub fn q8_0<const R: usize>(d: &[[f16; TILE]], q: &[[u8; QK * TILE]], x: &[Row; R], mut out: Out) {
    let blocks = x[0].quants.len();
    let offset = _mm256_set1_epi8(-128);
    let tiles = d.chunks_exact(blocks).zip(q.chunks_exact(blocks));
    for (t, (d, q)) in tiles.enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, (d, q)) in d.iter().zip(q).enumerate() {
            prefetch(d, q);
            let mut sums = [Sums::default(); R];
            for (g, q) in q.as_chunks::<32>().0.iter().enumerate() {
                let w = load(q);
                let unsigned = _mm256_xor_si256(w, offset);
                for r in 0..R {
                    sums[r].add(g % 2, unsigned, w, &x[r].bytes[b], 4 * g);
                }
            }
            let d = widen(d);
            for r in 0..R {
                let excess = _mm256_set1_epi32(128 * x[r].hi_sums[b]);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x[r].scales[b][0]));
                acc[r] = _mm256_fmadd_ps(sums[r].total(excess), scale, acc[r]);
            }
        }
        for (r, &acc) in acc.iter().enumerate() {
            out.tile(t, r, lanes(acc));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vl,avx512vnni")]
pub fn q4_1<const R: usize>(
    dm: &[[f16; 2 * TILE]],
    q: &[[u8; QK / 2 * TILE]],
    x: &[Row; R],
    mut out: Out,
) {
    let blocks = x[0].quants.len();
    let nibble = _mm256_set1_epi8(0x0F);
    let tiles = dm.chunks_exact(blocks).zip(q.chunks_exact(blocks));
    for (t, (dm, q)) in tiles.enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [_mm256_setzero_ps(); R];
        for (b, (dm, q)) in dm.iter().zip(q).enumerate() {
            prefetch(dm, q);
            let mut sums = [Sums::default(); R];
            for (h, q) in q.as_chunks::<32>().0.iter().enumerate() {
                let q = load(q);
                // Elements 4h.. in the low nibbles, 16 + 4h.. in the high ones.
                let nibbles = [
                    _mm256_and_si256(q, nibble),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble),
                ];
                for (half, w) in nibbles.into_iter().enumerate() {
                    for r in 0..R {
                        sums[r].add(half, w, w, &x[r].bytes[b], 4 * h + 16 * half);
                    }
                }
            }
            let (d, m) = widen_two(dm);
            for r in 0..R {
                let [dx, sx] = x[r].scales[b];
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx));
                let sum = sums[r].total(_mm256_setzero_si256());
                acc[r] = _mm256_fmadd_ps(sum, scale, acc[r]);
                mins[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(sx), mins[r]);
            }
        }
        for r in 0..R {
            out.tile(t, r, lanes(_mm256_add_ps(acc[r], mins[r])));
        }
    }
}

/// A block's running products with the `hi` and `lo` bytes, in two
/// independent pairs of sums so consecutive `dpbusd` do not wait on each other.
#[derive(Clone, Copy)]
struct Sums {
    hi: [__m256i; 2],
    lo: [__m256i; 2],
}

impl Default for Sums {
    fn default() -> Sums {
        // SAFETY: all-zero bits are a valid __m256i.
        unsafe { std::mem::zeroed() }
    }
}

impl Sums {
    /// Adds the products of activations `at..at + 4` with four weights of
    /// each row: `unsigned` against `hi`, `signed` against `lo`.
    #[inline]
    #[target_feature(enable = "avx2,avx512vl,avx512vnni")]
    fn add(&mut self, i: usize, unsigned: __m256i, signed: __m256i, x: &[[u8; QK]; 2], at: usize) {
        let [lo, hi] = x;
        let four =
            |x: &[u8; QK]| _mm256_set1_epi32(i32::from_le_bytes(x[at..at + 4].try_into().unwrap()));
        self.hi[i] = _mm256_dpbusd_epi32(self.hi[i], unsigned, four(hi));
        self.lo[i] = _mm256_dpbusd_epi32(self.lo[i], four(lo), signed);
    }

    /// `256 (hi − excess) + lo`, each row's integer sum, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn total(&self, excess: __m256i) -> __m256 {
        let hi = _mm256_sub_epi32(_mm256_add_epi32(self.hi[0], self.hi[1]), excess);
        let lo = _mm256_add_epi32(self.lo[0], self.lo[1]);
        _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32::<8>(hi), lo))
    }
}
