//! A weight matrix in its storage encoding: f32, or GGUF's Q8_0 and Q4_1 blocks
//! kept quantized and computed in place by `matmul`.
//!
//! Why in place: decode reads every weight once per token, so its speed is the
//! memory bandwidth divided by the bytes of the weights, and at 2-16 cores the
//! unpacking arithmetic too: SmolLM2's Q4_1 file is 97 MB against 538 MB
//! dequantized to f32. The blocks are split at load into planar scales, widened
//! to f32 (the kernels would otherwise convert them on every pass; this adds 4
//! bytes per block of 32), and quants, so the kernels stream each.
//! F16 and BF16 tensors widen to f32 at load: no file we serve stores its big
//! matrices that way on the CPU path, and f32 lets the GEMM crate use them as they are.

use half::f16;

use super::quant::{TensorType, QK};

/// A row-major `[rows, cols]` matrix; quantized rows are whole blocks of [`QK`].
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    pub(super) data: Data,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    F32(Vec<f32>),
    /// A scale `d` per block; element `x = d q`.
    Q8_0 {
        scales: Vec<f32>,
        quants: Vec<i8>,
    },
    /// `d` then `m` per block, then 16 bytes per block: element `j` in byte
    /// `j`'s low nibble, `j + 16` in its high one; `x = d q + m`.
    Q4_1 {
        scales: Vec<f32>,
        quants: Vec<u8>,
    },
}

impl Matrix {
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Matrix {
        assert_eq!(values.len(), rows * cols);
        Matrix {
            rows,
            cols,
            data: Data::F32(values),
        }
    }

    /// A GGUF tensor's bytes, `[rows, cols]`, whose size the reader has checked.
    pub fn from_gguf(kind: TensorType, bytes: &[u8], rows: usize, cols: usize) -> Matrix {
        let data = match kind {
            TensorType::F32 | TensorType::F16 => Data::F32(kind.dequantize(bytes, rows * cols)),
            TensorType::Q8_0 => {
                let blocks = bytes.chunks_exact(2 + QK);
                Data::Q8_0 {
                    scales: blocks.clone().map(|b| half(b, 0)).collect(),
                    quants: blocks.flat_map(|b| &b[2..]).map(|&q| q as i8).collect(),
                }
            }
            TensorType::Q4_1 => {
                let blocks = bytes.chunks_exact(4 + QK / 2);
                Data::Q4_1 {
                    scales: blocks
                        .clone()
                        .flat_map(|b| [half(b, 0), half(b, 2)])
                        .collect(),
                    quants: blocks.flat_map(|b| &b[4..]).copied().collect(),
                }
            }
        };
        Matrix { rows, cols, data }
    }

    /// The rows of `parts` one after another, for fused products (Q, K, V). Parts in
    /// one encoding stay in it; mixed ones widen to f32 (real files quantize a
    /// layer's matrices alike; the tiny test models mix them on purpose).
    pub fn concat(parts: Vec<Matrix>) -> Matrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols));
        let rows = parts.iter().map(|p| p.rows).sum();
        let same = |a: &Data, b: &Data| std::mem::discriminant(a) == std::mem::discriminant(b);
        if !parts.iter().all(|p| same(&p.data, &parts[0].data)) {
            let values = parts.iter().flat_map(Matrix::to_f32).collect();
            return Matrix::from_f32(rows, cols, values);
        }
        let mut parts = parts.into_iter().map(|p| p.data);
        let mut data = parts.next().expect("at least one part");
        for part in parts {
            match (&mut data, part) {
                (Data::F32(a), Data::F32(b)) => a.extend(b),
                (
                    Data::Q8_0 { scales, quants },
                    Data::Q8_0 {
                        scales: s,
                        quants: q,
                    },
                ) => {
                    scales.extend(s);
                    quants.extend(q);
                }
                (
                    Data::Q4_1 { scales, quants },
                    Data::Q4_1 {
                        scales: s,
                        quants: q,
                    },
                ) => {
                    scales.extend(s);
                    quants.extend(q);
                }
                _ => unreachable!("encodings checked equal"),
            }
        }
        Matrix { rows, cols, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the stored encoding: what one pass over the matrix reads.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Q8_0 { scales, quants } => scales.len() * 4 + quants.len(),
            Data::Q4_1 { scales, quants } => scales.len() * 4 + quants.len(),
        }
    }

    /// Rows `start..start + out.len() / cols`, dequantized into `out`.
    pub fn rows_into(&self, start: usize, out: &mut [f32]) {
        let (cols, blocks) = (self.cols, self.cols / QK);
        let count = out.len() / cols;
        assert!(start + count <= self.rows && out.len() == count * cols);
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[start * cols..(start + count) * cols]),
            Data::Q8_0 { scales, quants } => {
                let d = &scales[start * blocks..(start + count) * blocks];
                let quants = &quants[start * cols..(start + count) * cols];
                for ((o, q), &d) in out.chunks_exact_mut(QK).zip(quants.chunks_exact(QK)).zip(d) {
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = d * f32::from(q);
                    }
                }
            }
            Data::Q4_1 { scales, quants } => {
                let dm = &scales[2 * start * blocks..2 * (start + count) * blocks];
                let quants = &quants[start * cols / 2..(start + count) * cols / 2];
                for ((o, q), dm) in out
                    .chunks_exact_mut(QK)
                    .zip(quants.chunks_exact(QK / 2))
                    .zip(dm.chunks_exact(2))
                {
                    let (d, m) = (dm[0], dm[1]);
                    let (lo, hi) = o.split_at_mut(QK / 2);
                    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
                        *lo = d * f32::from(q & 0xF) + m;
                        *hi = d * f32::from(q >> 4) + m;
                    }
                }
            }
        }
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.rows_into(0, &mut out);
        out
    }
}

/// The little-endian f16 at `b[at..at + 2]`, widened.
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of 64 in `kind`, finite and varied.
    fn encoded(kind: TensorType) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..2 * 64 * 2).map(|i| (i * 37 % 251) as u8).collect();
        match kind {
            TensorType::F16 => (0..128)
                .flat_map(|i| f16::from_f32((i as f32 * 0.37).sin()).to_le_bytes())
                .collect(),
            TensorType::Q8_0 => {
                bytes.truncate(4 * 34);
                for b in bytes.chunks_exact_mut(34) {
                    b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
                }
                bytes
            }
            TensorType::Q4_1 => {
                bytes.truncate(4 * 20);
                for b in bytes.chunks_exact_mut(20) {
                    b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
                    b[2..4].copy_from_slice(&f16::from_f32(-1.5).to_le_bytes());
                }
                bytes
            }
            TensorType::F32 => unreachable!("not used"),
        }
    }

    #[test]
    fn planar_blocks_dequantize_like_the_file() {
        for kind in [TensorType::Q8_0, TensorType::Q4_1, TensorType::F16] {
            let bytes = encoded(kind);
            let m = Matrix::from_gguf(kind, &bytes, 2, 64);
            assert_eq!(m.to_f32(), kind.dequantize(&bytes, 128), "{kind:?}");
            let mut second = vec![0.0; 64];
            m.rows_into(1, &mut second);
            assert_eq!(second, kind.dequantize(&bytes, 128)[64..]);
            let scales = match kind {
                TensorType::Q8_0 => 4 * 2,
                TensorType::Q4_1 => 4 * 2 * 2,
                _ => 0,
            };
            let bytes = if kind == TensorType::F16 {
                512
            } else {
                bytes.len() + scales
            };
            assert_eq!(m.bytes(), bytes);
        }
    }

    #[test]
    fn concat_keeps_one_encoding_and_widens_mixed_ones() {
        let q = |kind| Matrix::from_gguf(kind, &encoded(kind), 2, 64);
        let same = Matrix::concat(vec![q(TensorType::Q4_1), q(TensorType::Q4_1)]);
        assert!(matches!(same.data, Data::Q4_1 { .. }));
        assert_eq!(same.rows(), 4);
        assert_eq!(same.to_f32()[128..], q(TensorType::Q4_1).to_f32()[..]);
        let mixed = Matrix::concat(vec![q(TensorType::Q8_0), q(TensorType::Q4_1)]);
        assert!(matches!(mixed.data, Data::F32(_)));
        assert_eq!(
            mixed.to_f32(),
            [q(TensorType::Q8_0).to_f32(), q(TensorType::Q4_1).to_f32()].concat()
        );
    }
}
