//! `y = x Wᵀ` for a batch of rows, split across a [`Team`]'s threads by bands
//! of output features, so every thread reads a disjoint slice of the weights.
//!
//! Few rows (decode, short prefill chunks) take fused dot products straight
//! from the stored encoding (`float`, and `q16` for quantized weights, whose
//! activations are rounded to 16 bits first): each row of W is read from
//! memory once per four rows of x. Many rows (prefill) dequantize each band
//! of W into f32 and hand it to a GEMM.

mod float;
mod q16;

use super::matrix::{Data, Matrix};
use super::team::{SendPtr, Team};
use super::tiles::TILE;
use q16::Q16Rows;

/// From this many rows on, a GEMM beats the fused products. Its fixed cost
/// (packing, and for quantized matrices dequantizing, every band of W) is
/// worth ~15 rows of fused f32 products, which stream W from memory (measured
/// on a Zen 4 core, AVX-512). For quantized W the integer products prefill a
/// 640-token prompt about as fast as the GEMM (`bench engine`, 2 cores).
fn gemm_min_rows(w: &Matrix) -> usize {
    match w.data {
        Data::F32(_) => 24,
        Data::Tiled(_) => 40,
    }
}

/// Output features per parallel task of the GEMM: large enough to amortise
/// scheduling and packing, small enough that 2-16 threads all get work on a
/// 576-wide layer.
const BAND: usize = 64;

/// Tasks per thread in the fused products: a whole number, so the threads
/// end together, and one, since each band starts its own streams from
/// memory. At batch 1, SmolLM2's products took 9% longer with 4 per thread
/// than with 2, and in a probe of its 120 layer products (2026-12-04) 2 per
/// thread streamed 21 GB/s against 25 GB/s for 1. A thread the OS preempts
/// leaves its band to the others only if it has not started it.
const BANDS_PER_THREAD: usize = 1;

/// `y[t, n] = Σ_k x[t, k] w[n, k]` with `x: [rows, k]`, `w: [n, k]`, `y: [rows, n]`;
/// for quantized W, `x` rounded to 16-bit blocks (see `q16`).
pub fn matmul(team: &Team, x: &[f32], w: &Matrix, y: &mut [f32], rows: usize) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), rows * k);
    assert_eq!(y.len(), rows * n);
    let fused = rows < gemm_min_rows(w);
    match &w.data {
        Data::F32(v) if fused => small_batch(team, n, 1, y, rows, |n0, out| {
            float::band(v, k, n0, x, rows, out)
        }),
        Data::F32(_) => gemm(team, x, w, y, rows),
        Data::Tiled(tiles) if fused => {
            let x = Q16Rows::quantize(x, k);
            small_batch(team, n, TILE, y, rows, |n0, out| {
                q16::band(tiles, n0, &x, rows, out)
            })
        }
        Data::Tiled(_) => gemm(team, &q16::rounded(x), w, y, rows),
    }
}

/// Few rows: each task computes a band of outputs (whole multiples of `unit`,
/// past `n` up to the next one) for every row with `band(n0, out)`, into `yt`
/// (`[n, rows]`, so bands are contiguous), then the result is transposed into `y`.
fn small_batch(
    team: &Team,
    n: usize,
    unit: usize,
    y: &mut [f32],
    rows: usize,
    band: impl Fn(usize, &mut [f32]) + Sync,
) {
    let width = n
        .div_ceil(team.threads() * BANDS_PER_THREAD)
        .next_multiple_of(unit);
    let mut yt = vec![0.0f32; n.next_multiple_of(unit) * rows];
    team.for_chunks(&mut yt, width * rows, |i, out| band(i * width, out));
    for t in 0..rows {
        for (j, out) in y[t * n..(t + 1) * n].iter_mut().enumerate() {
            *out = yt[j * rows + t];
        }
    }
}

fn gemm(team: &Team, x: &[f32], w: &Matrix, y: &mut [f32], rows: usize) {
    let (n, k) = (w.rows(), w.cols());
    // Each task writes its own columns of `y` (see below).
    let out = SendPtr(y.as_mut_ptr());
    team.for_each(n.div_ceil(BAND), |band| {
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
                out.get().wrapping_add(n0),
                n as isize,
                1,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::{TensorType, QK};

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
                // A block whose largest magnitude is 32767 rounds to itself.
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| {
                        if i % QK == 7 {
                            32767.0
                        } else {
                            ((i * 31) % 11) as f32 - 5.0
                        }
                    })
                    .collect();
                let mut y = vec![f32::NAN; rows * n];
                matmul(&Team::new(2), &x, &w, &mut y, rows);
                assert_eq!(
                    y,
                    naive(&x, &w.to_f32(), rows, k, n),
                    "{kind:?}, rows = {rows}"
                );
            }
        }
    }

    /// Batched or not, a quantized product takes its activations rounded:
    /// the GEMM and the fused products differ only in summation order.
    #[test]
    fn quantized_products_round_activations_on_every_path() {
        let (k, n, rows) = (96, 150, 45);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let rounded = q16::rounded(&x);
        assert_ne!(rounded, x);
        for kind in [TensorType::Q8_0, TensorType::Q4_1] {
            let w = matrix(kind, n, k);
            let expected = naive(&rounded, &w.to_f32(), rows, k, n);
            let team = Team::new(2);
            let mut gemm = vec![f32::NAN; rows * n];
            matmul(&team, &x, &w, &mut gemm, rows);
            let mut fused = vec![f32::NAN; rows * n];
            for (x, y) in x.chunks(k).zip(fused.chunks_mut(n)) {
                matmul(&team, x, &w, y, 1);
            }
            for (path, y) in [("GEMM", &gemm), ("fused", &fused)] {
                for (a, b) in y.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{kind:?} {path}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
