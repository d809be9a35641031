//! Products of quantized weights (Q8_0, Q4_1) with activations quantized to
//! 16-bit integers per block of [`QK`]: a block's dot product is an integer
//! sum (two VNNI instructions, or four AVX2 ones, per 32 products) times the
//! two blocks' scales, instead of widening every weight to f32 and multiplying
//! in floating point. Decode spends its time in these products.
//!
//! Why 16 bits and not llama.cpp's 8: on SmolLM2-135M, 8-bit activations moved
//! the top logits by about one unit, enough to change greedy answers (the
//! first token of "What is the capital of France?" has a 0.08 margin); 16 bits
//! move them by 1/256 of that, and the products are still integer.
//!
//! Every product with a quantized matrix takes its activations through
//! [`Q16Rows`], prefill's GEMM included (on the values they stand for), so a
//! token's numbers do not depend on how many rows its step had, and a prompt
//! computes the same with or without a cached prefix.

use super::matrix::{Data, Matrix};
use super::quant::QK;

/// The largest quantized magnitude: a block's largest value maps to it.
const QMAX: f32 = 32767.0;

/// Rows of activations, each block `x ≈ d q` with `q` in `-32767..=32767`.
pub struct Q16Rows {
    k: usize,
    quants: Vec<i16>,
    /// `d` of each block.
    scales: Vec<f32>,
    /// `d Σ q` of each block: what a Q4_1 block's offset `m` multiplies.
    sums: Vec<f32>,
}

impl Q16Rows {
    /// `x: [rows, k]` with `k` a multiple of [`QK`] (every quantized matrix's is).
    pub fn quantize(x: &[f32], k: usize) -> Q16Rows {
        assert!(k % QK == 0 && x.len() % k == 0);
        let blocks = x.len() / QK;
        let mut quants = vec![0i16; x.len()];
        let (mut scales, mut sums) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for (x, q) in x.chunks_exact(QK).zip(quants.chunks_exact_mut(QK)) {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / QMAX;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(x) {
                // Rounds half away from zero; `as` saturates and maps NaN to 0.
                *q = (v * inverse).round() as i16;
                sum += i32::from(*q);
            }
            scales.push(d);
            sums.push(d * sum as f32);
        }
        Q16Rows {
            k,
            quants,
            scales,
            sums,
        }
    }

    /// The values the quantized rows stand for: what prefill's GEMM multiplies.
    pub fn dequantize(&self) -> Vec<f32> {
        self.quants
            .chunks_exact(QK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&q| d * f32::from(q)))
            .collect()
    }

    fn row(&self, t: usize) -> Row<'_> {
        let blocks = self.k / QK;
        Row {
            quants: &self.quants[t * self.k..(t + 1) * self.k],
            scales: &self.scales[t * blocks..(t + 1) * blocks],
            sums: &self.sums[t * blocks..(t + 1) * blocks],
        }
    }
}

#[derive(Clone, Copy)]
struct Row<'a> {
    quants: &'a [i16],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// Outputs `n0..n0 + out.len() / rows` of every row of `x`, into `out: [width, rows]`.
/// `w` is quantized.
pub fn band(w: &Matrix, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512vnni") && has!("avx512vl") && has!("avx2") && has!("fma") {
            // SAFETY: the CPU has every feature `x86::band_vnni` is compiled for.
            return unsafe { x86::band_vnni(w, n0, x, rows, out) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has every feature `x86::band_avx2` is compiled for.
            return unsafe { x86::band_avx2(w, n0, x, rows, out) };
        }
    }
    for (j, out) in out.chunks_exact_mut(rows).enumerate() {
        for (t, out) in out.iter_mut().enumerate() {
            *out = dot_any(w, n0 + j, x.row(t));
        }
    }
}

/// Row `n` of `w` with `x`, one block at a time: the definition the vector
/// kernels compute, for CPUs without AVX2.
fn dot_any(w: &Matrix, n: usize, x: Row<'_>) -> f32 {
    let blocks = w.cols() / QK;
    let mut total = 0.0f32;
    match &w.data {
        Data::Q8_0 { scales, quants } => {
            let quants = quants[n * w.cols()..(n + 1) * w.cols()].chunks_exact(QK);
            let d = &scales[n * blocks..(n + 1) * blocks];
            for (b, (q, &d)) in quants.zip(d).enumerate() {
                let xq = &x.quants[b * QK..(b + 1) * QK];
                let sum: i32 = q
                    .iter()
                    .zip(xq)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                total += d * x.scales[b] * sum as f32;
            }
        }
        Data::Q4_1 { scales, quants } => {
            let quants = quants[n * w.cols() / 2..(n + 1) * w.cols() / 2].chunks_exact(QK / 2);
            let dm = scales[2 * n * blocks..2 * (n + 1) * blocks].chunks_exact(2);
            for (b, (q, dm)) in quants.zip(dm).enumerate() {
                let (lo, hi) = x.quants[b * QK..(b + 1) * QK].split_at(QK / 2);
                let sum: i32 = q
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&q, (&l, &h))| {
                        i32::from(q & 0xF) * i32::from(l) + i32::from(q >> 4) * i32::from(h)
                    })
                    .sum();
                total += dm[0] * x.scales[b] * sum as f32 + dm[1] * x.sums[b];
            }
        }
        Data::F32(_) => unreachable!("only quantized matrices take quantized activations"),
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Data, Matrix, Q16Rows, Row, QK};

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub fn band_vnni(w: &Matrix, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
        band_with::<Vnni>(w, n0, x, rows, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn band_avx2(w: &Matrix, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
        band_with::<Avx2>(w, n0, x, rows, out)
    }

    /// `acc` plus, in eight i32 lanes, the sums of adjacent pairs of i16
    /// products of `a` and `b`. No product or sum of a block overflows: at
    /// most 32 · 128 · 32767 in magnitude.
    trait PairDot {
        fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    }

    struct Vnni;
    struct Avx2;

    impl PairDot for Vnni {
        #[inline(always)]
        fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: only inlined into `band_vnni`, compiled for AVX-512 VNNI and VL.
            unsafe { _mm256_dpwssd_epi32(acc, a, b) }
        }
    }

    impl PairDot for Avx2 {
        #[inline(always)]
        fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: only inlined into functions compiled for AVX2.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
        }
    }

    /// Rows of `x` taken together: each block of W is unpacked once per group.
    const GROUP: usize = 4;

    #[inline(always)]
    fn band_with<D: PairDot>(w: &Matrix, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
        for (j, out) in out.chunks_exact_mut(rows).enumerate() {
            let mut t = 0;
            while t < rows {
                let group = (rows - t).min(GROUP);
                let out = &mut out[t..t + group];
                match group {
                    4 => row_group::<4, D>(w, n0 + j, x, t, out),
                    3 => row_group::<3, D>(w, n0 + j, x, t, out),
                    2 => row_group::<2, D>(w, n0 + j, x, t, out),
                    _ => row_group::<1, D>(w, n0 + j, x, t, out),
                }
                t += group;
            }
        }
    }

    /// Row `n` of W with rows `t0..t0 + R` of `x`: per block, W's 32 values
    /// widened to i16 in two registers, the integer sum scaled into eight f32
    /// lanes, summed across lanes once at the end.
    #[inline(always)]
    fn row_group<const R: usize, D: PairDot>(
        w: &Matrix,
        n: usize,
        x: &Q16Rows,
        t0: usize,
        out: &mut [f32],
    ) {
        let (k, blocks) = (w.cols(), w.cols() / QK);
        let xs: [Row<'_>; R] = std::array::from_fn(|r| x.row(t0 + r));
        // SAFETY: only inlined into functions compiled for AVX2; each load
        // reads a block (16 or 32 bytes) of a slice sliced to whole blocks here.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut offsets = [0.0f32; R];
            match &w.data {
                Data::Q8_0 { scales, quants } => {
                    let quants = &quants[n * k..(n + 1) * k];
                    let d = &scales[n * blocks..(n + 1) * blocks];
                    for b in 0..blocks {
                        let q = _mm256_loadu_si256(quants.as_ptr().add(b * QK).cast());
                        let w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
                        let w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
                        for r in 0..R {
                            let (x0, x1) = load_block(xs[r], b);
                            let sum = D::dot(D::dot(_mm256_setzero_si256(), w0, x0), w1, x1);
                            let scale = _mm256_set1_ps(d[b] * xs[r].scales[b]);
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[r]);
                        }
                    }
                }
                Data::Q4_1 { scales, quants } => {
                    let quants = &quants[n * k / 2..(n + 1) * k / 2];
                    let dm = &scales[2 * n * blocks..2 * (n + 1) * blocks];
                    let low = _mm_set1_epi8(0xF);
                    for b in 0..blocks {
                        let packed = _mm_loadu_si128(quants.as_ptr().add(b * QK / 2).cast());
                        // Elements 0..16 in the low nibbles, 16..32 in the high ones.
                        let w0 = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low));
                        let w1 =
                            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low));
                        let (d, m) = (dm[2 * b], dm[2 * b + 1]);
                        for r in 0..R {
                            let (x0, x1) = load_block(xs[r], b);
                            let sum = D::dot(D::dot(_mm256_setzero_si256(), w0, x0), w1, x1);
                            let scale = _mm256_set1_ps(d * xs[r].scales[b]);
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[r]);
                            offsets[r] += m * xs[r].sums[b];
                        }
                    }
                }
                Data::F32(_) => unreachable!("only quantized matrices take quantized activations"),
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + offsets[r];
            }
        }
    }

    /// Block `b` of a row's quants: elements 0..16 and 16..32.
    #[inline(always)]
    fn load_block(x: Row<'_>, b: usize) -> (__m256i, __m256i) {
        let block = &x.quants[b * QK..(b + 1) * QK];
        // SAFETY: `block` is 32 i16; only inlined into functions compiled for AVX2.
        unsafe {
            (
                _mm256_loadu_si256(block.as_ptr().cast()),
                _mm256_loadu_si256(block.as_ptr().add(QK / 2).cast()),
            )
        }
    }

    /// The sum of the eight lanes.
    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: only inlined into functions compiled for AVX2.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::TensorType;

    /// `n` rows of `k` in `kind`, from a simple generator, with the extremes
    /// the kernels must not overflow on (Q8_0's -128, Q4_1's 15).
    fn matrix(kind: TensorType, n: usize, k: usize) -> Matrix {
        let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let bytes: Vec<u8> = (0..n * k / QK)
            .flat_map(|b| match kind {
                TensorType::Q8_0 => {
                    let mut block = f16(0.01 * (b % 7 + 1) as f32).to_vec();
                    block.extend((0..QK).map(|i| match (b + i) % 11 {
                        0 => 0x80,
                        1 => 0x7F,
                        j => (j * 37 + i * 13) as u8,
                    }));
                    block
                }
                TensorType::Q4_1 => {
                    let mut block = f16(0.02 * (b % 5 + 1) as f32).to_vec();
                    block.extend(f16(-0.1 * (b % 3) as f32));
                    block.extend((0..QK / 2).map(|i| {
                        if (b + i) % 9 == 0 {
                            0xFF
                        } else {
                            (i * 29 + b) as u8
                        }
                    }));
                    block
                }
                _ => unreachable!("quantized kinds only"),
            })
            .collect();
        Matrix::from_gguf(kind, &bytes, n, k)
    }

    fn activations(rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
            .collect()
    }

    #[test]
    fn quantized_blocks_stay_within_half_a_step() {
        let x = activations(2, 64);
        let q = Q16Rows::quantize(&x, 64);
        for (b, (x, back)) in x.chunks(QK).zip(q.dequantize().chunks(QK)).enumerate() {
            let d = q.scales[b];
            assert!(x
                .iter()
                .zip(back)
                .all(|(a, b)| (a - b).abs() <= d / 2.0 + 1e-6));
            let sum: i32 = q.quants[b * QK..(b + 1) * QK]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(q.sums[b], d * sum as f32);
        }
        // An all-zero block has scale 0 and quantizes to zeros, not NaN.
        let zeros = Q16Rows::quantize(&[0.0; QK], QK);
        assert_eq!((zeros.scales[0], zeros.dequantize()), (0.0, vec![0.0; QK]));
    }

    #[test]
    fn vector_kernels_match_the_block_definition() {
        let (n, k) = (70, 128);
        for kind in [TensorType::Q8_0, TensorType::Q4_1] {
            let w = matrix(kind, n, k);
            for rows in [1, 2, 3, 4, 5, 9] {
                let x = Q16Rows::quantize(&activations(rows, k), k);
                let want: Vec<f32> = (0..n)
                    .flat_map(|j| (0..rows).map(move |t| (j, t)))
                    .map(|(j, t)| dot_any(&w, j, x.row(t)))
                    .collect();
                let mut kernels: Vec<(&str, fn(&Matrix, usize, &Q16Rows, usize, &mut [f32]))> =
                    vec![("dispatch", band)];
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    kernels.push(("avx2", |w, n0, x, rows, out| unsafe {
                        x86::band_avx2(w, n0, x, rows, out)
                    }));
                }
                // f32 sums in another order: close relative to the outputs' size.
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (name, kernel) in kernels {
                    let mut got = vec![f32::NAN; n * rows];
                    kernel(&w, 0, &x, rows, &mut got);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * scale,
                            "{name} {kind:?} rows {rows} output {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
