//! AVX-512 VNNI on 256-bit registers, for Q4_1: `dpbusd` multiplies 32
//! pairs of u8 and i8 and adds each four products into a lane of i32, so it
//! takes a block whole, with no widening to i16 and no separate add.
//!
//! The activations are split into bytes, `x = 256 hi + lo` with `lo` in
//! 0..=255 and `hi` in -128..=127, so every 16-bit value is exact: `lo` is the
//! unsigned operand against the nibbles, the nibbles (0..=15) the unsigned one
//! against `hi`. Half the instructions per block of the AVX2 kernel.

use std::arch::x86_64::*;

use super::*;

#[target_feature(enable = "avx2,fma,avx512vl,avx512vnni")]
pub fn q4_1<const R: usize>(dm: &[[f32; 2]], q: &[[u8; QK / 2]], x: &[Row; R], out: Out) {
    let blocks = x[0].quants.len();
    let x = x.map(|x| (&x.bytes[..blocks], &x.scales[..blocks]));
    let nibble = _mm256_set1_epi8(0x0F);
    // The upper 16 bytes take the high nibbles.
    let shift = _mm256_set_epi64x(4, 4, 0, 0);
    for (j, (dm, q)) in dm
        .chunks_exact(blocks)
        .zip(q.chunks_exact(blocks))
        .enumerate()
    {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0.0f32; R];
        for (b, (&[d, m], q)) in dm.iter().zip(q).enumerate() {
            // SAFETY: reads the 16 bytes of `q`, into both halves.
            let q = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(q.as_ptr().cast()) });
            // Elements 0..16 from the low nibbles, 16..32 from the high ones.
            let w = _mm256_and_si256(_mm256_srlv_epi64(q, shift), nibble);
            for r in 0..R {
                let (bytes, scales) = x[r];
                let [lo, hi] = &bytes[b];
                // SAFETY: reads the 32 bytes of each.
                let (lo, hi) = unsafe {
                    (
                        _mm256_loadu_si256(lo.as_ptr().cast()),
                        _mm256_loadu_si256(hi.as_ptr().cast()),
                    )
                };
                let high = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, hi);
                let sum = _mm256_dpbusd_epi32(_mm256_slli_epi32::<8>(high), lo, w);
                let [dx, sx] = scales[b];
                let scale = _mm256_set1_ps(d * dx);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[r]);
                mins[r] = m.mul_add(sx, mins[r]);
            }
        }
        for r in 0..R {
            out.y[j * out.stride + r] = super::avx2::hsum(acc[r]) + mins[r];
        }
    }
}
