//! A weight matrix in its storage encoding: f32, or GGUF's Q8_0 and Q4_1 blocks
//! kept quantized (in [`Tiles`]) and computed in place by `matmul`.
//!
//! Why in place: decode reads every weight once per token, so its speed is the
//! memory bandwidth divided by the bytes of the weights, and at 2-16 cores the
//! unpacking arithmetic too: SmolLM2's Q4_1 file is 97 MB against 538 MB
//! dequantized to f32. F16 and BF16 tensors widen to f32 at load: no file we
//! serve stores its big matrices that way on the CPU path, and f32 lets the
//! GEMM crate use them as they are.

use super::quant::TensorType;
use super::tiles::Tiles;

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
    /// Q8_0 or Q4_1.
    Tiled(Tiles),
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
            TensorType::Q8_0 | TensorType::Q4_1 => Data::Tiled(Tiles::new(kind, bytes, rows, cols)),
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
        let kind = parts[0].kind();
        let data = match kind {
            Some(kind) if parts.iter().all(|p| p.kind() == Some(kind)) => {
                let bytes: Vec<u8> = parts.iter().flat_map(Matrix::gguf_rows).collect();
                Data::Tiled(Tiles::new(kind, &bytes, rows, cols))
            }
            _ => Data::F32(parts.iter().flat_map(Matrix::to_f32).collect()),
        };
        Matrix { rows, cols, data }
    }

    /// The quantized encoding, if any.
    fn kind(&self) -> Option<TensorType> {
        match &self.data {
            Data::F32(_) => None,
            Data::Tiled(t) => Some(t.kind),
        }
    }

    /// Every row in GGUF's encoding (quantized matrices only).
    fn gguf_rows(&self) -> Vec<u8> {
        match &self.data {
            Data::Tiled(t) => t.gguf_rows(0, self.rows),
            Data::F32(_) => unreachable!("f32 rows are not re-encoded"),
        }
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
            Data::Tiled(t) => t.bytes(),
        }
    }

    /// Rows `start..start + out.len() / cols`, dequantized into `out`.
    pub fn rows_into(&self, start: usize, out: &mut [f32]) {
        let cols = self.cols;
        let count = out.len() / cols;
        assert!(start + count <= self.rows && out.len() == count * cols);
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[start * cols..(start + count) * cols]),
            Data::Tiled(t) => t.rows_into(start, out),
        }
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.rows_into(0, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

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
    fn tiled_blocks_dequantize_like_the_file() {
        for kind in [TensorType::Q8_0, TensorType::Q4_1, TensorType::F16] {
            let bytes = encoded(kind);
            let m = Matrix::from_gguf(kind, &bytes, 2, 64);
            assert_eq!(m.to_f32(), kind.dequantize(&bytes, 128), "{kind:?}");
            let mut second = vec![0.0; 64];
            m.rows_into(1, &mut second);
            assert_eq!(second, kind.dequantize(&bytes, 128)[64..]);
            // f16 widens; the 2 quantized rows are read as a whole tile of 8.
            let read = if kind == TensorType::F16 {
                512
            } else {
                bytes.len() * 4
            };
            assert_eq!(m.bytes(), read);
        }
    }

    #[test]
    fn concat_keeps_one_encoding_and_widens_mixed_ones() {
        let q = |kind| Matrix::from_gguf(kind, &encoded(kind), 2, 64);
        let same = Matrix::concat(vec![q(TensorType::Q4_1), q(TensorType::Q4_1)]);
        assert!(matches!(&same.data, Data::Tiled(t) if t.kind == TensorType::Q4_1));
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
