//! `y = x Wᵀ` for a batch of rows, split across rayon's threads by bands of
//! output features, so every thread reads a disjoint slice of the weights.

use rayon::prelude::*;

/// Below this many rows, plain dot products beat GEMM, whose packing copies
/// the whole weight matrix for a single row's worth of arithmetic.
const GEMM_MIN_ROWS: usize = 4;

/// Output features per parallel task: large enough to amortise scheduling,
/// small enough that 2-16 threads all get work on a 576-wide layer.
const BAND: usize = 64;

/// `y[t, n] = Σ_k x[t, k] w[n, k]` with `x: [rows, k]`, `w: [n, k]`, `y: [rows, n]`.
pub fn matmul(x: &[f32], w: &[f32], y: &mut [f32], rows: usize, k: usize, n: usize) {
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), rows * n);
    if rows < GEMM_MIN_ROWS {
        small_batch(x, w, y, rows, k, n);
    } else {
        gemm(x, w, y, rows, k, n);
    }
}

/// Few rows: each task computes a band of outputs for every row, into `yt`
/// (`[n, rows]`, so bands are contiguous), then the result is transposed.
fn small_batch(x: &[f32], w: &[f32], y: &mut [f32], rows: usize, k: usize, n: usize) {
    let mut yt = vec![0.0f32; n * rows];
    yt.par_chunks_mut(BAND * rows)
        .zip(w.par_chunks(BAND * k))
        .for_each(|(out, w_band)| {
            for (o, w_row) in out.chunks_exact_mut(rows).zip(w_band.chunks_exact(k)) {
                for (t, o) in o.iter_mut().enumerate() {
                    *o = dot(&x[t * k..(t + 1) * k], w_row);
                }
            }
        });
    for t in 0..rows {
        for (j, out) in y[t * n..(t + 1) * n].iter_mut().enumerate() {
            *out = yt[j * rows + t];
        }
    }
}

/// Eight running sums, so the compiler keeps them in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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

fn gemm(x: &[f32], w: &[f32], y: &mut [f32], rows: usize, k: usize, n: usize) {
    let out = Out(y.as_mut_ptr());
    (0..n.div_ceil(BAND)).into_par_iter().for_each(|band| {
        let n0 = band * BAND;
        let width = BAND.min(n - n0);
        let w_band = &w[n0 * k..(n0 + width) * k];
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

    fn naive(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * n];
        for t in 0..rows {
            for j in 0..n {
                y[t * n + j] = (0..k).map(|i| x[t * k + i] * w[j * k + i]).sum();
            }
        }
        y
    }

    #[test]
    fn both_paths_match_the_definition() {
        let (k, n) = (37, 150);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        for rows in [1, 3, 4, 9] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 31) % 11) as f32 - 5.0)
                .collect();
            let mut y = vec![f32::NAN; rows * n];
            matmul(&x, &w, &mut y, rows, k, n);
            assert_eq!(y, naive(&x, &w, rows, k, n), "rows = {rows}");
        }
    }
}
