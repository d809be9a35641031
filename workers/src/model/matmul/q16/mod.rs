//! Products of quantized weights (Q8_0, Q4_1) with activations rounded to 16
//! bits per block of [`QK`], in integers.
//!
//! Why: widening every weight to f32 (unpack, convert, scale) held a core to
//! ~6 GB/s of Q4_1, under what memory delivers. With the activations in
//! integers, one `madd` multiplies 16 pairs, and a block's scales apply once
//! to its sum. 16 bits, not llama.cpp's 8: a rounded value is within 1/65534
//! of its block's largest magnitude, where 8 bits (1/254) turned SmolLM2's
//! greedy answer to "What is the capital of France?" into French verse.
//! `matmul` rounds on every path, the GEMM's too, so a prompt computes the
//! same function however it is batched or cached. The weights come as
//! [`Tiles`] of eight rows. Kernels: `vnni` (CPUs with AVX-512 VNNI), `avx2`
//! and `portable`; all compute the same integer sums.

use half::f16;

use crate::model::quant::{TensorType, QK};
use crate::model::tiles::{Tiles, TILE};

/// How far ahead of its loads a kernel asks for the weights, in bytes of
/// quants: 32 blocks of Q4_1 tiles. In a probe of SmolLM2's 120 layer
/// products (2026-12-04, Zen 4) one thread streamed them 8-12% faster for
/// it, the same as a plain read of memory, and two threads 3-10%; 24 and 48
/// blocks ahead gained less, 96 nothing.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH: usize = 4096;

/// Rows of activations, each block `x ≈ d q` with `|q| ≤ 32767`.
pub struct Q16Rows {
    quants: Vec<[i16; QK]>,
    /// The same values as bytes, for `vnni`: `[lo, hi]` with `q = 256 hi + lo`,
    /// `lo` unsigned and `hi` signed (stored as its bits).
    bytes: Vec<[[u8; QK]; 2]>,
    /// Per block: `d`, and `d Σ q`, the rounded block's sum (what a Q4_1
    /// block's minimum multiplies).
    scales: Vec<[f32; 2]>,
    /// Per block: `Σ hi`, for `vnni`'s Q8_0 products (see there).
    hi_sums: Vec<i32>,
    blocks: usize,
}

/// A block's step `d` (its largest magnitude over 32767) and `1 / d` (0 for
/// a block of zeros).
#[inline(always)]
fn step(block: &[f32; QK]) -> (f32, f32) {
    // Magnitudes compared as integers, as their bits order them, in eight
    // lanes: float comparisons kept this loop scalar. NaN's bits are above
    // infinity's, so a block holding NaN gets a NaN step, and its products
    // are NaN, as f32 arithmetic would make them.
    let mut lanes = [0u32; 8];
    for chunk in block.as_chunks::<8>().0 {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = (*m).max(v.to_bits() & 0x7FFF_FFFF);
        }
    }
    let amax = f32::from_bits(lanes.into_iter().fold(0, u32::max));
    let inv = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
    (amax / 32767.0, inv)
}

/// Added to a value, leaves no bits for a fraction: 1.5 × 2²³.
const MAGIC: f32 = 12_582_912.0;

/// The nearest integer to `v` (`|v| ≤ 32767`), halves to even. `f32::round`
/// is a library call per element in builds for the baseline x86-64, which
/// lacks SSE4.1's `roundps`.
#[inline(always)]
fn round(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// [`round`] as an integer, read from the low bits of `v + MAGIC`: the cast
/// `round(v) as i32` saturates, which kept the quantizing loop scalar. NaN
/// gives 0, as the cast does.
#[inline(always)]
fn round_to_int(v: f32) -> i16 {
    ((v + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits())) as i16
}

/// `x` rounded as [`Q16Rows::quantize`] rounds it, in f32: what the GEMM multiplies.
pub fn rounded(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for block in out.as_chunks_mut::<QK>().0 {
        let (d, inv) = step(block);
        for v in block.iter_mut() {
            *v = round(*v * inv) * d;
        }
    }
    out
}

/// One row's blocks.
#[derive(Clone, Copy)]
struct Row<'a> {
    quants: &'a [[i16; QK]],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bytes: &'a [[[u8; QK]; 2]],
    scales: &'a [[f32; 2]],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    hi_sums: &'a [i32],
}

impl Q16Rows {
    /// `x`: rows of `k`, a multiple of [`QK`] (quantized matrices have whole blocks).
    pub fn quantize(x: &[f32], k: usize) -> Q16Rows {
        assert_eq!(k % QK, 0);
        let blocks = x.len() / QK;
        let mut rows = Q16Rows {
            quants: vec![[0; QK]; blocks],
            bytes: vec![[[0; QK]; 2]; blocks],
            scales: vec![[0.0; 2]; blocks],
            hi_sums: vec![0; blocks],
            blocks: k / QK,
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, all `fill_avx2` is compiled for.
            unsafe { rows.fill_avx2(x) };
            return rows;
        }
        rows.fill(x);
        rows
    }

    /// `fill` in AVX2: the decode step quantizes every product's input on one
    /// thread, and the baseline build of these loops took ~3% of it.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn fill_avx2(&mut self, x: &[f32]) {
        self.fill(x)
    }

    /// Rounds `x` block by block into the (zeroed) fields. Inlined into each
    /// caller, so its loops take the caller's target features.
    #[inline(always)]
    fn fill(&mut self, x: &[f32]) {
        let (chunks, _) = x.as_chunks::<QK>();
        for (i, block) in chunks.iter().enumerate() {
            let (d, inv) = step(block);
            let (q, [lo, hi]) = (&mut self.quants[i], &mut self.bytes[i]);
            let (mut sum, mut hi_sum) = (0, 0);
            for j in 0..QK {
                let v = round_to_int(block[j] * inv);
                q[j] = v;
                lo[j] = v as u8;
                hi[j] = (v >> 8) as u8;
                sum += i32::from(v);
                hi_sum += i32::from(v >> 8);
            }
            self.hi_sums[i] = hi_sum;
            self.scales[i] = [d, d * sum as f32];
        }
    }

    fn row(&self, r: usize) -> Row<'_> {
        let blocks = r * self.blocks..(r + 1) * self.blocks;
        Row {
            quants: &self.quants[blocks.clone()],
            bytes: &self.bytes[blocks.clone()],
            scales: &self.scales[blocks.clone()],
            hi_sums: &self.hi_sums[blocks],
        }
    }
}

/// Rows of `x` taken together: each row of W is unpacked once per group.
const GROUP: usize = 4;

/// The kernels this CPU can run, best first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isa {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512vl") && has!("avx512vnni") {
                    return Isa::Avx512Vnni;
                }
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Outputs `n0..n0 + out.len() / rows` of `w` for each row of `x`, into
/// `out: [width, rows]`; `n0` and the width are whole tiles.
pub fn band(w: &Tiles, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
    band_with(Isa::detect(), w, n0, x, rows, out)
}

/// [`band`] with the kernels of `isa`, which the CPU must support.
fn band_with(isa: Isa, w: &Tiles, n0: usize, x: &Q16Rows, rows: usize, out: &mut [f32]) {
    let width = out.len() / rows;
    assert!(n0.is_multiple_of(TILE) && width.is_multiple_of(TILE));
    let w = Band::of(w, n0 / TILE, width / TILE);
    for t in (0..rows).step_by(GROUP) {
        let out = Out {
            y: &mut out[t..],
            stride: rows,
        };
        match (rows - t).min(GROUP) {
            4 => group::<4>(isa, &w, x, t, out),
            3 => group::<3>(isa, &w, x, t, out),
            2 => group::<2>(isa, &w, x, t, out),
            _ => group::<1>(isa, &w, x, t, out),
        }
    }
}

/// Tiles `t0..t0 + count` of W, in its encoding: per tile and block, the
/// scales and the quant bytes of the eight rows (see [`Tiles`]).
enum Band<'a> {
    Q8_0(&'a [[f16; TILE]], &'a [[u8; QK * TILE]]),
    Q4_1(&'a [[f16; 2 * TILE]], &'a [[u8; QK / 2 * TILE]]),
}

impl<'a> Band<'a> {
    fn of(w: &'a Tiles, t0: usize, count: usize) -> Band<'a> {
        let blocks = t0 * w.blocks..(t0 + count) * w.blocks;
        match w.kind {
            TensorType::Q8_0 => Band::Q8_0(
                &w.scales.as_chunks().0[blocks.clone()],
                &w.quants.as_chunks().0[blocks],
            ),
            TensorType::Q4_1 => Band::Q4_1(
                &w.scales.as_chunks().0[blocks.clone()],
                &w.quants.as_chunks().0[blocks],
            ),
            _ => unreachable!("tiles are quantized"),
        }
    }
}

/// Where the sum of W's row `j` with the group's row `r` goes: `y[j stride + r]`.
struct Out<'a> {
    y: &'a mut [f32],
    stride: usize,
}

impl Out<'_> {
    /// The sums of tile `t`'s eight rows with the group's row `r`.
    fn tile(&mut self, t: usize, r: usize, sums: [f32; TILE]) {
        for (i, sum) in sums.into_iter().enumerate() {
            self.y[(t * TILE + i) * self.stride + r] = sum;
        }
    }
}

/// The band of W with rows `t..t + R` of `x`.
#[inline(always)]
fn group<const R: usize>(isa: Isa, w: &Band, x: &Q16Rows, t: usize, out: Out) {
    let x: [Row; R] = std::array::from_fn(|r| x.row(t + r));
    // SAFETY (every arm): `isa` names features the CPU has.
    #[cfg(target_arch = "x86_64")]
    match (isa, w) {
        (Isa::Avx512Vnni, &Band::Q8_0(d, q)) => return unsafe { vnni::q8_0(d, q, &x, out) },
        (Isa::Avx512Vnni, &Band::Q4_1(dm, q)) => return unsafe { vnni::q4_1(dm, q, &x, out) },
        (Isa::Avx2, &Band::Q8_0(d, q)) => return unsafe { avx2::q8_0(d, q, &x, out) },
        (Isa::Avx2, &Band::Q4_1(dm, q)) => return unsafe { avx2::q4_1(dm, q, &x, out) },
        (Isa::Portable, _) => {}
    }
    match *w {
        Band::Q8_0(d, q) => portable::q8_0(d, q, &x, out),
        Band::Q4_1(dm, q) => portable::q4_1(dm, q, &x, out),
    }
}

/// The same sums in plain integer arithmetic, for other CPUs.
mod portable {
    use super::*;
    use crate::model::tiles::quant_at;

    pub fn q8_0<const R: usize>(
        d: &[[f16; TILE]],
        q: &[[u8; QK * TILE]],
        x: &[Row; R],
        mut out: Out,
    ) {
        let blocks = x[0].quants.len();
        let tiles = d.chunks_exact(blocks).zip(q.chunks_exact(blocks));
        for (t, (d, q)) in tiles.enumerate() {
            for (r, x) in x.iter().enumerate() {
                let sums = std::array::from_fn(|row| {
                    let mut acc = 0.0f32;
                    for (b, (d, q)) in d.iter().zip(q).enumerate() {
                        let xq = &x.quants[b];
                        let sum: i32 = (0..QK)
                            .map(|i| i32::from(q[quant_at(i, row)] as i8) * i32::from(xq[i]))
                            .sum();
                        acc += d[row].to_f32() * x.scales[b][0] * sum as f32;
                    }
                    acc
                });
                out.tile(t, r, sums);
            }
        }
    }

    pub fn q4_1<const R: usize>(
        dm: &[[f16; 2 * TILE]],
        q: &[[u8; QK / 2 * TILE]],
        x: &[Row; R],
        mut out: Out,
    ) {
        let blocks = x[0].quants.len();
        let tiles = dm.chunks_exact(blocks).zip(q.chunks_exact(blocks));
        for (t, (dm, q)) in tiles.enumerate() {
            for (r, x) in x.iter().enumerate() {
                let sums = std::array::from_fn(|row| {
                    let mut acc = 0.0f32;
                    for (b, (dm, q)) in dm.iter().zip(q).enumerate() {
                        let xq = &x.quants[b];
                        let sum: i32 = (0..QK / 2)
                            .map(|i| {
                                let byte = q[quant_at(i, row)];
                                i32::from(byte & 0xF) * i32::from(xq[i])
                                    + i32::from(byte >> 4) * i32::from(xq[i + QK / 2])
                            })
                            .sum();
                        let (d, m) = (dm[row].to_f32(), dm[TILE + row].to_f32());
                        let [dx, sx] = x.scales[b];
                        acc += d * dx * sum as f32 + m * sx;
                    }
                    acc
                });
                out.tile(t, r, sums);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::matrix::{Data, Matrix};

    #[test]
    fn rounding_keeps_each_value_within_half_a_step() {
        let x: Vec<f32> = (0..3 * 64)
            .map(|i| ((i * 37) as f32 * 0.13).sin() * 3.0)
            .collect();
        let q = Q16Rows::quantize(&x, 64);
        let back = rounded(&x);
        for ((block, back), &[d, sum]) in x.chunks(QK).zip(back.chunks(QK)).zip(&q.scales) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(d, amax / 32767.0);
            for (a, b) in block.iter().zip(back) {
                assert!((a - b).abs() <= d / 2.0 * 1.0001, "{a} rounds to {b}");
            }
            assert!((sum - back.iter().sum::<f32>()).abs() < 1e-4);
        }
        let halves = [2.5, -2.5, 3.5, 0.49999997, -32766.6, 32767.0].map(round);
        assert_eq!(halves, [2.0, -2.0, 4.0, 0.0, -32767.0, 32767.0]);
        // The kernels' integers and the GEMM's f32 hold the same values.
        let from_quants = q.quants.iter().zip(&q.scales);
        let from_quants: Vec<f32> = from_quants
            .flat_map(|(q, &[d, _])| q.map(|q| d * f32::from(q)))
            .collect();
        assert_eq!(from_quants, back);
        assert_eq!(rounded(&[0.0; QK]), vec![0.0; QK]);
    }

    /// A block holding NaN has a NaN step, so its products are NaN, as in
    /// f32 arithmetic; the other blocks round as usual.
    #[test]
    fn a_block_holding_nan_rounds_to_nan() {
        let mut x = vec![32767.0f32; 2 * QK];
        x[3] = f32::NAN;
        let back = rounded(&x);
        assert!(back[..QK].iter().all(|v| v.is_nan()));
        assert_eq!(back[QK..], x[QK..]);
        let q = Q16Rows::quantize(&x, 2 * QK);
        assert!(q.scales[0][0].is_nan());
        assert_eq!(q.scales[1][0], 1.0);
        assert_eq!(q.quants[1], [32767; QK]);
    }

    /// Every kernel against the definition, on values whose sums are exact:
    /// activations whose block maximum is 32767 round to themselves.
    #[test]
    fn kernels_compute_the_rounded_product() {
        // Odd and even block counts; 7 rows of x go as groups of 4 and 3.
        for k in [96, 320] {
            for rows in [7, 1] {
                every_kernel_computes_the_rounded_product(k, rows);
            }
        }
    }

    /// This CPU's kernels and those it would fall back to.
    fn isas() -> Vec<Isa> {
        let all = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];
        let best = all.iter().position(|&isa| isa == Isa::detect()).unwrap();
        all[best..].to_vec()
    }

    fn every_kernel_computes_the_rounded_product(k: usize, rows: usize) {
        // A whole tile of W's rows and one with 3 rows of padding.
        let n = 13;
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                if i % QK == 5 {
                    32767.0
                } else {
                    ((i * 31) % 23) as f32 - 11.0
                }
            })
            .collect();
        let xq = Q16Rows::quantize(&x, k);
        assert_eq!(rounded(&x), x, "these activations round to themselves");
        for kind in [TensorType::Q8_0, TensorType::Q4_1] {
            let bytes: Vec<u8> = match kind {
                TensorType::Q8_0 => (0..n * k / QK)
                    .flat_map(|b| {
                        let d = half::f16::from_f32((b % 3 + 1) as f32).to_le_bytes();
                        // Small where x is large, so every sum stays exact in f32.
                        let q = (0..QK).map(move |i| {
                            if i == 5 {
                                1
                            } else {
                                ((i * 53 + b * 7) % 256) as u8
                            }
                        });
                        d.into_iter().chain(q)
                    })
                    .collect(),
                _ => (0..n * k / QK)
                    .flat_map(|b| {
                        let d = half::f16::from_f32((b % 2 + 1) as f32).to_le_bytes();
                        let m = half::f16::from_f32(-((b % 5) as f32)).to_le_bytes();
                        let q = (0..QK / 2).map(move |i| ((i * 29 + b) % 256) as u8);
                        d.into_iter().chain(m).chain(q)
                    })
                    .collect(),
            };
            let w = Matrix::from_gguf(kind, &bytes, n, k);
            let wf = w.to_f32();
            let Data::Tiled(tiles) = &w.data else {
                unreachable!("quantized")
            };
            let mut expected = vec![0.0f32; n * rows];
            for j in 0..n {
                for t in 0..rows {
                    let row = &x[t * k..(t + 1) * k];
                    expected[j * rows + t] = row.iter().zip(&wf[j * k..]).map(|(a, b)| a * b).sum();
                }
            }
            for isa in isas() {
                let mut out = vec![f32::NAN; 2 * TILE * rows];
                band_with(isa, tiles, 0, &xq, rows, &mut out);
                assert_eq!(
                    out[..n * rows],
                    expected,
                    "{kind:?}, {isa:?}, k = {k}, rows = {rows}"
                );
            }
        }
    }
}
