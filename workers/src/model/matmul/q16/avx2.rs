//! AVX2: `madd` multiplies 16 pairs of i16 and adds adjacent products into 8
//! lanes of i32 (no overflow: |w| ≤ 128, |x| ≤ 32767). A tile's 32-byte load
//! holds four weights of each of eight rows; widened to i16 it fills two
//! registers (rows 0-3 and 4-7), each multiplied by the same four activations
//! in every 64-bit lane, so lanes `2i, 2i + 1` sum row `i`'s products.

use std::arch::x86_64::*;

use super::*;

#[target_feature(enable = "avx2,fma,f16c")]
pub fn q8_0<const R: usize>(d: &[[f16; TILE]], q: &[[u8; QK * TILE]], x: &[Row; R], mut out: Out) {
    let blocks = x[0].quants.len();
    let tiles = d.chunks_exact(blocks).zip(q.chunks_exact(blocks));
    for (t, (d, q)) in tiles.enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, (d, q)) in d.iter().zip(q).enumerate() {
            prefetch(d, q);
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for (g, q) in q.as_chunks::<32>().0.iter().enumerate() {
                let w = load(q);
                let w = [
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)),
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(w)),
                ];
                for r in 0..R {
                    madd_four(&mut sums[r], w, &x[r].quants[b][4 * g..]);
                }
            }
            let d = widen(d);
            for r in 0..R {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x[r].scales[b][0]));
                acc[r] = _mm256_fmadd_ps(rows_of(sums[r]), scale, acc[r]);
            }
        }
        for (r, &acc) in acc.iter().enumerate() {
            out.tile(t, r, lanes(acc));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
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
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for (h, q) in q.as_chunks::<32>().0.iter().enumerate() {
                let q = load(q);
                // Elements 4h.. in the low nibbles, 16 + 4h.. in the high ones.
                let nibbles = [
                    _mm256_and_si256(q, nibble),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble),
                ];
                for (half, w) in nibbles.into_iter().enumerate() {
                    let w = [
                        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(w)),
                        _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(w)),
                    ];
                    for r in 0..R {
                        madd_four(&mut sums[r], w, &x[r].quants[b][4 * h + 16 * half..]);
                    }
                }
            }
            let (d, m) = widen_two(dm);
            for r in 0..R {
                let [dx, sx] = x[r].scales[b];
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx));
                acc[r] = _mm256_fmadd_ps(rows_of(sums[r]), scale, acc[r]);
                mins[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(sx), mins[r]);
            }
        }
        for r in 0..R {
            out.tile(t, r, lanes(_mm256_add_ps(acc[r], mins[r])));
        }
    }
}

/// Adds four weights of rows 0-3 and 4-7 (`w`, as i16) times `x[..4]`.
#[inline]
#[target_feature(enable = "avx2")]
fn madd_four(sums: &mut [__m256i; 2], w: [__m256i; 2], x: &[i16]) {
    let x: &[i16; 4] = x[..4].try_into().unwrap();
    // SAFETY: reads the 8 bytes of `x`.
    let x = _mm256_set1_epi64x(unsafe { x.as_ptr().cast::<i64>().read_unaligned() });
    sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(w[0], x));
    sums[1] = _mm256_add_epi32(sums[1], _mm256_madd_epi16(w[1], x));
}

/// The eight rows' sums, in order: `hadd` pairs rows 0-3's lanes and 4-7's
/// into `[0, 1, 4, 5 | 2, 3, 6, 7]`, then 64-bit lanes 1 and 2 swap.
#[inline]
#[target_feature(enable = "avx2")]
fn rows_of(sums: [__m256i; 2]) -> __m256 {
    let pairs = _mm256_hadd_epi32(sums[0], sums[1]);
    _mm256_cvtepi32_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(pairs))
}

/// Asks for the cache lines of the tile block [`PREFETCH`] bytes of quants
/// past `quants`, and of its scales: a band's weights are one stream of
/// such blocks, scales and quants each contiguous. Past the band's end it
/// asks for lines the kernel does not read, which costs nothing but the ask
/// (a prefetch never faults).
#[inline]
#[target_feature(enable = "sse")]
pub(super) fn prefetch<const S: usize, const Q: usize>(scales: &[f16; S], quants: &[u8; Q]) {
    let ahead = PREFETCH / Q;
    let quants = quants.as_ptr().wrapping_add(ahead * Q);
    for line in (0..Q).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(quants.wrapping_add(line).cast());
    }
    _mm_prefetch::<_MM_HINT_T0>(scales.as_ptr().wrapping_add(ahead * S).cast());
}

/// 32 bytes of a tile.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load(q: &[u8; 32]) -> __m256i {
    // SAFETY: reads the 32 bytes of `q`.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// Eight f16 scales, as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn widen(s: &[f16; TILE]) -> __m256 {
    // SAFETY: reads the 16 bytes of `s`.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
}

/// Q4_1's `d` and `m` of eight rows, as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn widen_two(s: &[f16; 2 * TILE]) -> (__m256, __m256) {
    let (d, m) = s.split_at(TILE);
    (widen(d.try_into().unwrap()), widen(m.try_into().unwrap()))
}

#[inline]
#[target_feature(enable = "avx")]
pub(super) fn lanes(v: __m256) -> [f32; TILE] {
    let mut out = [0.0; TILE];
    // SAFETY: writes the 8 floats of `out`.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}
