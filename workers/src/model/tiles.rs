//! GGUF's quantized blocks regrouped as tiles of eight rows, the layout the
//! products read.
//!
//! Why: one row at a time, a kernel spends more on each row's own work (its
//! scales broadcast one by one, a horizontal sum at the end) than on the
//! multiplications, and held a Zen 4 core to ~15 GB/s of Q4_1, under what
//! memory delivers. In a tile, block `b` of rows `8t..8t + 8` is stored
//! together and its quant bytes are interleaved four at a time, so one
//! 32-byte load holds the same four bytes of all eight rows: the kernels
//! multiply them by one broadcast of the activations, scale eight rows with
//! one vector of scales and store eight outputs at once (~38 GB/s on that
//! core, in cache). Scales stay f16, as in the file: one instruction widens
//! eight. Rows past the matrix's last, up to a whole tile, are zero blocks.

use half::f16;

use super::huge::HugeBuf;
use super::quant::{TensorType, QK};

/// Rows per tile.
pub const TILE: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Tiles {
    pub kind: TensorType,
    /// Blocks per row.
    pub blocks: usize,
    /// Per tile and block: each scale of the encoding (Q8_0's `d`; Q4_1's
    /// `d`, then `m`) for the eight rows, `[scale][row]`.
    pub scales: HugeBuf<f16>,
    /// Per tile and block: byte `i` of row `r`'s block at `(i / 4) 32 + 4 r + i % 4`.
    pub quants: HugeBuf<u8>,
}

/// (scales, quant bytes) in one block of `kind`.
fn layout(kind: TensorType) -> (usize, usize) {
    match kind {
        TensorType::Q8_0 => (1, QK),
        TensorType::Q4_1 => (2, QK / 2),
        _ => unreachable!("only quantized encodings are tiled"),
    }
}

/// Where byte `i` of row `r`'s block goes within its tile's block.
pub fn quant_at(i: usize, r: usize) -> usize {
    i / 4 * 32 + r * 4 + i % 4
}

impl Tiles {
    /// `rows` of `cols` in GGUF's `kind` blocks (`bytes`, checked by the reader).
    pub fn new(kind: TensorType, bytes: &[u8], rows: usize, cols: usize) -> Tiles {
        let (ns, nq) = layout(kind);
        let blocks = cols / QK;
        let tile_blocks = rows.div_ceil(TILE) * blocks;
        let mut scales = vec![f16::ZERO; tile_blocks * ns * TILE];
        let mut quants = vec![0; tile_blocks * nq * TILE];
        for (i, block) in bytes.chunks_exact(2 * ns + nq).enumerate() {
            let (row, b) = (i / blocks, i % blocks);
            let (s, q) = offsets(kind, blocks, row, b);
            for (j, scale) in block[..2 * ns].chunks_exact(2).enumerate() {
                scales[s + j * TILE] = f16::from_le_bytes([scale[0], scale[1]]);
            }
            for (j, &byte) in block[2 * ns..].iter().enumerate() {
                quants[q + quant_at(j, row % TILE)] = byte;
            }
        }
        Tiles {
            kind,
            blocks,
            scales: HugeBuf::copy_of(&scales),
            quants: HugeBuf::copy_of(&quants),
        }
    }

    /// Rows `start..start + count` in GGUF's encoding: what `new` took.
    pub fn gguf_rows(&self, start: usize, count: usize) -> Vec<u8> {
        let (ns, nq) = layout(self.kind);
        let mut out = Vec::with_capacity(count * self.blocks * (2 * ns + nq));
        for row in start..start + count {
            for b in 0..self.blocks {
                let (s, q) = self.block_at(row, b);
                for j in 0..ns {
                    out.extend(self.scales[s + j * TILE].to_le_bytes());
                }
                out.extend((0..nq).map(|j| self.quants[q + quant_at(j, row % TILE)]));
            }
        }
        out
    }

    /// Rows `start..start + out.len() / cols`, dequantized into `out` (what
    /// the GEMM multiplies): four bytes of a row at a time, as stored.
    pub fn rows_into(&self, start: usize, out: &mut [f32]) {
        let (ns, nq) = layout(self.kind);
        for (row, out) in (start..).zip(out.chunks_exact_mut(self.blocks * QK)) {
            for (b, out) in out.chunks_exact_mut(QK).enumerate() {
                let (s, q) = self.block_at(row, b);
                let d = self.scales[s].to_f32();
                let fours = (0..nq / 4).map(|g| {
                    let at = q + quant_at(4 * g, row % TILE);
                    &self.quants[at..at + 4]
                });
                if ns == 1 {
                    for (out, four) in out.chunks_exact_mut(4).zip(fours) {
                        for (o, &q) in out.iter_mut().zip(four) {
                            *o = d * f32::from(q as i8);
                        }
                    }
                } else {
                    let m = self.scales[s + TILE].to_f32();
                    let (lo, hi) = out.split_at_mut(QK / 2);
                    for ((lo, hi), four) in lo
                        .chunks_exact_mut(4)
                        .zip(hi.chunks_exact_mut(4))
                        .zip(fours)
                    {
                        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(four) {
                            *lo = d * f32::from(q & 0xF) + m;
                            *hi = d * f32::from(q >> 4) + m;
                        }
                    }
                }
            }
        }
    }

    /// Bytes one pass over the tiles reads.
    pub fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.quants.len()
    }

    /// [`offsets`] in these tiles.
    fn block_at(&self, row: usize, b: usize) -> (usize, usize) {
        offsets(self.kind, self.blocks, row, b)
    }
}

/// Offsets of row `row`'s first scale and of its tile's quants, in block `b`
/// of tiles of `kind` with `blocks` per row.
fn offsets(kind: TensorType, blocks: usize, row: usize, b: usize) -> (usize, usize) {
    let (ns, nq) = layout(kind);
    let tile_block = row / TILE * blocks + b;
    (tile_block * ns * TILE + row % TILE, tile_block * nq * TILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_give_back_the_rows_they_took() {
        for kind in [TensorType::Q8_0, TensorType::Q4_1] {
            let (ns, nq) = layout(kind);
            // 11 rows: a whole tile and a padded one; 2 blocks per row.
            let (rows, cols) = (11, 2 * QK);
            let bytes: Vec<u8> = (0..rows * 2 * (2 * ns + nq))
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            let tiles = Tiles::new(kind, &bytes, rows, cols);
            assert_eq!(tiles.gguf_rows(0, rows), bytes, "{kind:?}");
            // The same arithmetic as the file's dequantization, bit for bit
            // (these arbitrary scales include NaN).
            let mut values = vec![0.0; 2 * cols];
            tiles.rows_into(8, &mut values);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let expected = kind.dequantize(&tiles.gguf_rows(8, 2), 2 * cols);
            assert_eq!(bits(&values), bits(&expected));
            assert_eq!(tiles.bytes(), 16 * 2 * (2 * ns + nq));
            let row = 2 * (2 * ns + nq);
            assert_eq!(tiles.gguf_rows(9, 2), bytes[9 * row..]);
            // Padding rows are zero blocks.
            assert!(tiles.gguf_rows(11, 5).iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn one_load_holds_four_bytes_of_each_row() {
        let (rows, cols) = (8, QK);
        // Row r's byte i is 16 r + i.
        let bytes: Vec<u8> = (0..rows)
            .flat_map(|r| {
                let mut block = vec![0, 0];
                block.extend((0..32).map(|i| (16 * r + i) as u8));
                block
            })
            .collect();
        let tiles = Tiles::new(TensorType::Q8_0, &bytes, rows, cols);
        let second_load: Vec<u8> = (0..8)
            .flat_map(|r| (4..8).map(move |i| (16 * r + i) as u8))
            .collect();
        assert_eq!(tiles.quants[32..64], second_load);
    }
}
