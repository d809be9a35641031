//! GGUF tensor encodings and their dequantization to f32: F32, F16, Q8_0 and
//! Q4_1 (SmolLM2's file uses F32, Q8_0 and Q4_1).

use half::f16;

/// Elements per quantization block of Q8_0 and Q4_1.
pub(super) const QK: usize = 32;

/// The ggml tensor types this loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    /// Blocks of 32: an f16 scale `d`, then 32 `i8`; `x = d * q`.
    Q8_0,
    /// Blocks of 32: f16 scale `d` and minimum `m`, then 16 bytes of nibbles;
    /// `x = d * q + m`, element `j` in byte `j`'s low nibble, `j + 16` in its high one.
    Q4_1,
}

impl TensorType {
    /// ggml's type id, as stored in tensor infos.
    pub fn from_ggml(id: u32) -> Result<TensorType, u32> {
        match id {
            0 => Ok(TensorType::F32),
            1 => Ok(TensorType::F16),
            3 => Ok(TensorType::Q4_1),
            8 => Ok(TensorType::Q8_0),
            other => Err(other),
        }
    }

    /// (bytes, elements) of one block.
    fn block(self) -> (usize, usize) {
        match self {
            TensorType::F32 => (4, 1),
            TensorType::F16 => (2, 1),
            TensorType::Q8_0 => (2 + QK, QK),
            TensorType::Q4_1 => (4 + QK / 2, QK),
        }
    }

    /// Bytes a tensor of `dims` takes; quantized rows must be whole blocks.
    pub fn byte_size(self, dims: &[usize]) -> Result<usize, String> {
        let (bytes, per) = self.block();
        let row = dims.first().copied().unwrap_or(1);
        if row % per != 0 {
            return Err(format!("row length {row} is not a multiple of {per}"));
        }
        let count = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or("element count overflows")?;
        Ok(count / per * bytes)
    }

    /// The `count` elements encoded in `bytes`, as f32.
    pub fn dequantize(self, bytes: &[u8], count: usize) -> Vec<f32> {
        let (block_bytes, per) = self.block();
        debug_assert_eq!(bytes.len(), count / per * block_bytes);
        let mut out = Vec::with_capacity(count);
        let blocks = bytes.chunks_exact(block_bytes);
        match self {
            TensorType::F32 => {
                out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().unwrap())))
            }
            TensorType::F16 => out.extend(blocks.map(|b| half(b, 0))),
            TensorType::Q8_0 => {
                for b in blocks {
                    let d = half(b, 0);
                    out.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
            TensorType::Q4_1 => {
                for b in blocks {
                    let (d, m) = (half(b, 0), half(b, 2));
                    let qs = &b[4..];
                    out.extend(qs.iter().map(|&q| d * f32::from(q & 0xF) + m));
                    out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
                }
            }
        }
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

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = TensorType::Q8_0.dequantize(&b, 32);
        assert_eq!(x[0], -8.0);
        assert_eq!(x[31], 7.5);
    }

    #[test]
    fn q4_1_block_puts_high_nibbles_in_the_second_half() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let x = TensorType::Q4_1.dequantize(&b, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 29.0);
        assert_eq!(x[16], 29.0);
        assert_eq!(x[31], -1.0);
    }

    #[test]
    fn sizes_need_whole_blocks() {
        assert_eq!(TensorType::Q4_1.byte_size(&[64, 3]), Ok(6 * 20));
        assert_eq!(TensorType::F16.byte_size(&[5]), Ok(10));
        assert!(TensorType::Q8_0.byte_size(&[48, 2]).is_err());
    }
}
