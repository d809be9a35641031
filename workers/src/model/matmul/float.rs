//! Fused dot products of f32 rows of W with a few rows of `x`, compiled three
//! times: for the baseline CPU and, chosen at run time, for AVX2 and AVX-512,
//! since release builds target the baseline.

use crate::model::quant::QK;

/// Outputs `n0..n0 + out.len() / rows` for each row of `x`, into `out: [width, rows]`.
pub fn band(w: &[f32], k: usize, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA, all `band_avx512` is compiled for.
            return unsafe { band_avx512(w, k, n0, x, rows, out) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, all `band_avx2` is compiled for.
            return unsafe { band_avx2(w, k, n0, x, rows, out) };
        }
    }
    band_any::<Separate>(w, k, n0, x, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn band_avx512(w: &[f32], k: usize, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    band_any::<Fused>(w, k, n0, x, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn band_avx2(w: &[f32], k: usize, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    band_any::<Fused>(w, k, n0, x, rows, out)
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

/// Rows of `x` taken together: each row of W is read once per group, and a
/// group's sums still fit in vector registers.
const GROUP: usize = 4;

#[inline(always)]
fn band_any<M: MulAdd>(w: &[f32], k: usize, n0: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    for (j, out) in out.chunks_exact_mut(rows).enumerate() {
        let w = &w[(n0 + j) * k..(n0 + j + 1) * k];
        for (g, out) in out.chunks_mut(GROUP).enumerate() {
            let x = &x[g * GROUP * k..];
            match out.len() {
                4 => row_group::<4, M>(w, x, out),
                3 => row_group::<3, M>(w, x, out),
                2 => row_group::<2, M>(w, x, out),
                _ => row_group::<1, M>(w, x, out),
            }
        }
    }
}

/// Row `w` of W with the first `R` rows of `x`.
#[inline(always)]
fn row_group<const R: usize, M: MulAdd>(w: &[f32], x: &[f32], out: &mut [f32]) {
    let k = w.len();
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    // Whole blocks, so reading block `b` of each needs no check per element.
    let xs: [&[[f32; QK]]; R] = rows.map(|x| x.as_chunks::<QK>().0);
    let mut acc = [[0.0f32; QK]; R];
    let (blocks, tail) = w.as_chunks::<QK>();
    for (b, w) in blocks.iter().enumerate() {
        for r in 0..R {
            let x = &xs[r][b];
            for i in 0..QK {
                acc[r][i] = M::mul_add(w[i], x[i], acc[r][i]);
            }
        }
    }
    for r in 0..R {
        let x_tail = &rows[r][k - tail.len()..];
        let tail: f32 = tail.iter().zip(x_tail).map(|(a, b)| a * b).sum();
        out[r] = hsum(acc[r]) + tail;
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
