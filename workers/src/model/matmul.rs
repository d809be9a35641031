//! `y = x Wᵀ` for a batch of rows, split across rayon's threads by bands of
//! output features, so every thread reads a disjoint slice of the weights.
//!
//! Few rows (decode, short prefill chunks) take fused dot products straight
//! from the stored encoding: each block of W is unpacked once per four rows of
//! x and read from memory once. Many rows (prefill) dequantize each band of W
//! into f32 and hand it to a GEMM.

use rayon::prelude::*;

use super::matrix::{Data, Matrix};
use super::quant::QK;

/// From this many rows on, a GEMM beats the fused products. Its fixed cost
/// (packing, and for quantized matrices dequantizing, every band of W) is
/// worth ~30 rows of fused Q4_1/Q8_0 products, which run at ~23 GMAC/s a core
/// from 4 rows on, and ~15 rows of f32 ones, which stream W from memory
/// (measured on a Zen 4 core, AVX-512).
fn gemm_min_rows(w: &Matrix) -> usize {
    match w.data {
        Data::F32(_) => 24,
        Data::Q8_0 { .. } | Data::Q4_1 { .. } => 40,
    }
}

/// Output features per parallel task of the GEMM: large enough to amortise
/// scheduling and packing, small enough that 2-16 threads all get work on a
/// 576-wide layer.
const BAND: usize = 64;

/// Tasks per thread in the fused products: a whole number, so the threads
/// end together (64-row bands split a 576-row layer 5:4 between two), and
/// more than one, so a thread the OS preempts leaves work the others take.
const BANDS_PER_THREAD: usize = 4;

/// `y[t, n] = Σ_k x[t, k] w[n, k]` with `x: [rows, k]`, `w: [n, k]`, `y: [rows, n]`.
pub fn matmul(x: &[f32], w: &Matrix, y: &mut [f32], rows: usize) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), rows * k);
    assert_eq!(y.len(), rows * n);
    if rows < gemm_min_rows(w) {
        small_batch(x, w, y, rows);
    } else {
        gemm(x, w, y, rows);
    }
}

/// Few rows: each task computes a band of outputs for every row, into `yt`
/// (`[n, rows]`, so bands are contiguous), then the result is transposed.
fn small_batch(x: &[f32], w: &Matrix, y: &mut [f32], rows: usize) {
    let n = w.rows();
    let band = n.div_ceil(rayon::current_num_threads() * BANDS_PER_THREAD);
    let mut yt = vec![0.0f32; n * rows];
    yt.par_chunks_mut(band * rows)
        .enumerate()
        .for_each(|(i, out)| kernels::band(w, i * band, x, rows, out));
    for t in 0..rows {
        for (j, out) in y[t * n..(t + 1) * n].iter_mut().enumerate() {
            *out = yt[j * rows + t];
        }
    }
}

/// `Σ a b`, vectorized: inlined, so it takes the caller's target features.
#[inline(always)]
pub(super) fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    kernels::dot(a, b)
}

/// The fused dot products, compiled three times: for the baseline CPU and,
/// chosen at run time, for AVX2 and AVX-512, since release builds target the baseline.
mod kernels {
    use super::*;

    /// Outputs `n0..n0 + out.len() / rows` for each row of `x`, into `out: [width, rows]`.
    pub fn band(w: &Matrix, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                // SAFETY: the CPU has AVX-512F and FMA, all `band_avx512` is compiled for.
                return unsafe { band_avx512(w, n0, x, rows, out) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, all `band_avx2` is compiled for.
                return unsafe { band_avx2(w, n0, x, rows, out) };
            }
        }
        band_any::<Separate>(w, n0, x, rows, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn band_avx512(w: &Matrix, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
        band_any::<Fused>(w, n0, x, rows, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn band_avx2(w: &Matrix, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
        band_any::<Fused>(w, n0, x, rows, out)
    }

    /// `a b + c`: one fused instruction in the builds for CPUs with FMA; two
    /// elsewhere, where `f32::mul_add` would be a slow library call.
    trait MulAdd {
        fn mul_add(a: f32, b: f32, c: f32) -> f32;
    }

    struct Fused;
    struct Separate;

    impl MulAdd for Fused {
        #[inline(always)]
        fn mul_add(a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
    }

    impl MulAdd for Separate {
        #[inline(always)]
        fn mul_add(a: f32, b: f32, c: f32) -> f32 {
            a * b + c
        }
    }

    /// Rows of `x` taken together: each block of W is unpacked once per group,
    /// and a group's sums still fit in vector registers.
    const GROUP: usize = 4;

    #[inline(always)]
    fn band_any<M: MulAdd>(w: &Matrix, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
        for (j, out) in out.chunks_exact_mut(rows).enumerate() {
            let mut t = 0;
            while t < rows {
                let group = (rows - t).min(GROUP);
                let out = &mut out[t..t + group];
                match group {
                    4 => row_group::<4, M>(w, n0 + j, x, t, out),
                    3 => row_group::<3, M>(w, n0 + j, x, t, out),
                    2 => row_group::<2, M>(w, n0 + j, x, t, out),
                    _ => row_group::<1, M>(w, n0 + j, x, t, out),
                }
                t += group;
            }
        }
    }

    /// Row `n` of W with rows `t0..t0 + R` of `x`.
    #[inline(always)]
    fn row_group<const R: usize, M: MulAdd>(
        w: &Matrix,
        n: usize,
        x: &[f32],
        t0: usize,
        out: &mut [f32],
    ) {
        let k = w.cols();
        let rows: [&[f32]; R] = std::array::from_fn(|r| &x[(t0 + r) * k..(t0 + r + 1) * k]);
        // Whole blocks, so reading block `b` of each needs no check per element.
        let xs: [&[[f32; QK]]; R] = rows.map(|x| x.as_chunks::<QK>().0);
        let mut acc = [[0.0f32; QK]; R];
        let mut tails = [0.0f32; R];
        match &w.data {
            Data::F32(v) => {
                let (blocks, tail) = v[n * k..(n + 1) * k].as_chunks::<QK>();
                for (b, w) in blocks.iter().enumerate() {
                    add::<R, M>(&mut acc, &xs, b, w);
                }
                // Only f32 rows may end in a part block.
                for r in 0..R {
                    let x = &rows[r][k - tail.len()..];
                    tails[r] = tail.iter().zip(x).map(|(a, b)| a * b).sum();
                }
            }
            Data::Q8_0 { scales, quants } => {
                let (blocks, _) = quants[n * k..(n + 1) * k].as_chunks::<QK>();
                let d = &scales[n * (k / QK)..(n + 1) * (k / QK)];
                for (b, (q, &d)) in blocks.iter().zip(d).enumerate() {
                    let mut wf = [0.0f32; QK];
                    for i in 0..QK {
                        wf[i] = d * f32::from(q[i]);
                    }
                    add::<R, M>(&mut acc, &xs, b, &wf);
                }
            }
            Data::Q4_1 { scales, quants } => {
                const HALF: usize = QK / 2;
                let (blocks, _) = quants[n * k / 2..(n + 1) * k / 2].as_chunks::<HALF>();
                let (dm, _) = scales[2 * n * (k / QK)..2 * (n + 1) * (k / QK)].as_chunks::<2>();
                for (b, (q, &[d, m])) in blocks.iter().zip(dm).enumerate() {
                    // Through 32-bit lanes: written so, the compiler splits the
                    // nibbles inside one 128-bit register; from bytes it loaded
                    // 256 bits and paid a shuffle per block to extract the top half.
                    let wide = q.map(i32::from);
                    let mut wf = [0.0f32; QK];
                    for i in 0..HALF {
                        wf[i] = M::mul_add(d, (wide[i] & 0xF) as f32, m);
                    }
                    for i in 0..HALF {
                        wf[i + HALF] = M::mul_add(d, (wide[i] >> 4) as f32, m);
                    }
                    add::<R, M>(&mut acc, &xs, b, &wf);
                }
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + tails[r];
        }
    }

    /// Multiplies block `b` of a row of W, already f32, into every row's sums.
    /// A function, not a closure: closures are compiled apart from the
    /// `target_feature` function they are inlined into, without its features.
    #[inline(always)]
    fn add<const R: usize, M: MulAdd>(
        acc: &mut [[f32; QK]; R],
        xs: &[&[[f32; QK]]; R],
        b: usize,
        w: &[f32; QK],
    ) {
        for r in 0..R {
            let x = &xs[r][b];
            for i in 0..QK {
                acc[r][i] = M::mul_add(w[i], x[i], acc[r][i]);
            }
        }
    }

    /// The sum of `acc` by halving, which vectorizes, unlike a sequential sum.
    #[inline(always)]
    fn hsum<const N: usize>(mut acc: [f32; N]) -> f32 {
        let mut width = N;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                acc[i] += acc[i + width];
            }
        }
        acc[0]
    }

    /// Eight running sums, so the compiler keeps them in a vector register.
    #[inline(always)]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let (a_lanes, a_tail) = a.as_chunks::<8>();
        let (b_lanes, b_tail) = b.as_chunks::<8>();
        let mut acc = [0.0f32; 8];
        for (a, b) in a_lanes.iter().zip(b_lanes) {
            for i in 0..8 {
                acc[i] += a[i] * b[i];
            }
        }
        let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
        hsum(acc) + tail
    }
}

/// The output pointer shared by the bands, each writing its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint columns of `y` (see `gemm`), and `y`'s borrow
// outlives the parallel loop, which joins before `gemm` returns.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// A method, not field access, so closures capture the whole (Send) wrapper.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

fn gemm(x: &[f32], w: &Matrix, y: &mut [f32], rows: usize) {
    let (n, k) = (w.rows(), w.cols());
    let out = Out(y.as_mut_ptr());
    (0..n.div_ceil(BAND)).into_par_iter().for_each(|band| {
        let n0 = band * BAND;
        let width = BAND.min(n - n0);
        let dequantized;
        let w_band = match &w.data {
            Data::F32(v) => &v[n0 * k..(n0 + width) * k],
            _ => {
                let mut buf = vec![0.0f32; width * k];
                w.rows_into(n0, &mut buf);
                dequantized = buf;
                &dequantized
            }
        };
        // SAFETY: A is `x` (`rows × k`, row-major), B is `w_bandᵀ` (`k × width`: element
        // (kk, j) at `j k + kk`), both in bounds by the asserts in `matmul`. C is columns
        // `n0..n0 + width` of `y` (row stride `n`), in bounds since `n0 + width <= n`,
        // and no other task writes those columns.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                width,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w_band.as_ptr(),
                1,
                k as isize,
                0.0,
                out.at(n0),
                n as isize,
                1,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::TensorType;

    fn naive(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * n];
        for t in 0..rows {
            for j in 0..n {
                y[t * n + j] = (0..k).map(|i| x[t * k + i] * w[j * k + i]).sum();
            }
        }
        y
    }

    /// `n` rows of `k` in `kind`: small integer scales and values, so f32 sums are exact.
    fn matrix(kind: TensorType, n: usize, k: usize) -> Matrix {
        let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let bytes: Vec<u8> = match kind {
            TensorType::F32 => (0..n * k)
                .flat_map(|i| (((i * 7919) % 13) as f32 - 6.0).to_le_bytes())
                .collect(),
            TensorType::Q8_0 => (0..n * k / QK)
                .flat_map(|b| {
                    let mut block = f16((b % 3 + 1) as f32).to_vec();
                    block.extend((0..QK).map(|i| (((i * 5 + b) % 9) as i8 - 4) as u8));
                    block
                })
                .collect(),
            TensorType::Q4_1 => (0..n * k / QK)
                .flat_map(|b| {
                    let mut block = f16((b % 2 + 1) as f32).to_vec();
                    block.extend(f16(-((b % 5) as f32)));
                    block.extend((0..QK / 2).map(|i| ((i * 3 + b) % 256) as u8));
                    block
                })
                .collect(),
            TensorType::F16 => unreachable!(),
        };
        Matrix::from_gguf(kind, &bytes, n, k)
    }

    #[test]
    fn every_path_and_encoding_matches_the_definition() {
        let (k, n) = (96, 150);
        for kind in [TensorType::F32, TensorType::Q8_0, TensorType::Q4_1] {
            let w = matrix(kind, n, k);
            // Fused groups of 1 to 4 rows, and from 40 rows the GEMM.
            for rows in [1, 3, 4, 9, 45] {
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i * 31) % 11) as f32 - 5.0)
                    .collect();
                let mut y = vec![f32::NAN; rows * n];
                matmul(&x, &w, &mut y, rows);
                assert_eq!(
                    y,
                    naive(&x, &w.to_f32(), rows, k, n),
                    "{kind:?}, rows = {rows}"
                );
            }
        }
    }
}
