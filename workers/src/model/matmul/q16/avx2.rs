//! AVX2: `madd` multiplies 16 pairs of i16 and adds adjacent products into 8
//! lanes of i32 (no overflow: |w| ≤ 128, |x| ≤ 32767); a block's scale
//! multiplies those lanes as f32 into 8 running sums.

use std::arch::x86_64::*;

use super::*;

#[target_feature(enable = "avx2,fma")]
pub fn q8_0<const R: usize>(d: &[f32], q: &[[i8; QK]], x: &[Row; R], out: Out) {
    let blocks = x[0].quants.len();
    let x = x.map(|x| (&x.quants[..blocks], &x.scales[..blocks]));
    for (j, (d, q)) in d
        .chunks_exact(blocks)
        .zip(q.chunks_exact(blocks))
        .enumerate()
    {
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, (&d, q)) in d.iter().zip(q).enumerate() {
            let (lo, hi) = halves(q);
            let w = [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)];
            for r in 0..R {
                let (quants, scales) = x[r];
                let scale = _mm256_set1_ps(d * scales[b][0]);
                acc[r] = _mm256_fmadd_ps(products(w, &quants[b]), scale, acc[r]);
            }
        }
        for (r, &acc) in acc.iter().enumerate() {
            out.y[j * out.stride + r] = hsum(acc);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub fn q4_1<const R: usize>(dm: &[[f32; 2]], q: &[[u8; QK / 2]], x: &[Row; R], out: Out) {
    let blocks = x[0].quants.len();
    let x = x.map(|x| (&x.quants[..blocks], &x.scales[..blocks]));
    let nibble = _mm_set1_epi8(0x0F);
    for (j, (dm, q)) in dm
        .chunks_exact(blocks)
        .zip(q.chunks_exact(blocks))
        .enumerate()
    {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0.0f32; R];
        for (b, (&[d, m], q)) in dm.iter().zip(q).enumerate() {
            // SAFETY: reads the 16 bytes of `q`.
            let q = unsafe { _mm_loadu_si128(q.as_ptr().cast()) };
            // Elements 0..16 in the low nibbles, 16..32 in the high ones.
            let lo = _mm_and_si128(q, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), nibble);
            let w = [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)];
            for r in 0..R {
                let (quants, scales) = x[r];
                let [dx, sx] = scales[b];
                let scale = _mm256_set1_ps(d * dx);
                acc[r] = _mm256_fmadd_ps(products(w, &quants[b]), scale, acc[r]);
                mins[r] = m.mul_add(sx, mins[r]);
            }
        }
        for r in 0..R {
            out.y[j * out.stride + r] = hsum(acc[r]) + mins[r];
        }
    }
}

/// A Q8_0 block's two 16-byte halves.
#[target_feature(enable = "avx2")]
fn halves(q: &[i8; QK]) -> (__m128i, __m128i) {
    let p = q.as_ptr();
    // SAFETY: reads bytes 0..16 and 16..32 of `q`.
    unsafe { (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast())) }
}

/// `w · x` for a block's 32 weights, widened to i16, in 8 lanes of 4 products, as f32.
#[target_feature(enable = "avx2")]
fn products(w: [__m256i; 2], x: &[i16; QK]) -> __m256 {
    let p = x.as_ptr();
    // SAFETY: reads elements 0..16 and 16..32 of `x`.
    let x = unsafe {
        [
            _mm256_loadu_si256(p.cast()),
            _mm256_loadu_si256(p.add(16).cast()),
        ]
    };
    let sums = _mm256_add_epi32(_mm256_madd_epi16(w[0], x[0]), _mm256_madd_epi16(w[1], x[1]));
    _mm256_cvtepi32_ps(sums)
}

#[target_feature(enable = "avx2")]
pub(super) fn hsum(v: __m256) -> f32 {
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}
