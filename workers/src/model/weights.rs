//! A Llama-family model's hyperparameters and weights, as loaded from a GGUF
//! file (`gguf`) or a Hugging Face directory (`hf`). Large matrices keep
//! GGUF's quantized blocks (see `matrix` for why); everything else is f32.

use super::matrix::Matrix;

/// The shape of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Hyper {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub norm_eps: f32,
    pub rope_base: f32,
    /// Longest sequence the model was trained for.
    pub context_len: usize,
}

impl Hyper {
    /// Width of one token's K (or V) across all KV heads.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// What the forward pass relies on, whichever format the shape came from.
    pub(super) fn check(&self) -> Result<(), String> {
        let h = self;
        if h.heads == 0 || h.kv_heads == 0 || !h.heads.is_multiple_of(h.kv_heads) {
            return Err(format!(
                "{} heads do not share {} KV heads evenly",
                h.heads, h.kv_heads
            ));
        }
        if h.head_dim == 0 || !h.head_dim.is_multiple_of(2) {
            return Err(format!("head size {} is not even", h.head_dim));
        }
        if h.layers == 0 || h.vocab == 0 {
            return Err("the model has no layers or no vocabulary".into());
        }
        Ok(())
    }
}

/// One transformer block. Matrices are `[out, in]`, as the products `y = W x`
/// read them; Q, K, V and gate, up are fused into one matrix each.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Q rows, then K, then V: `[(heads + 2 kv_heads) head_dim, dim]`. Q and K rows
    /// are in GGUF's order, which pairs rotary dimensions as `(2i, 2i + 1)`.
    pub wqkv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    /// Gate rows then up rows: `[2 ffn_dim, dim]`.
    pub w_gate_up: Matrix,
    pub w_down: Matrix,
}

/// One block's tensors as loaded, before fusing.
pub(super) struct LayerParts {
    pub attn_norm: Vec<f32>,
    pub q: Matrix,
    pub k: Matrix,
    pub v: Matrix,
    pub o: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

impl From<LayerParts> for Layer {
    fn from(p: LayerParts) -> Layer {
        Layer {
            attn_norm: p.attn_norm,
            wqkv: Matrix::concat(vec![p.q, p.k, p.v]),
            wo: p.o,
            ffn_norm: p.ffn_norm,
            w_gate_up: Matrix::concat(vec![p.gate, p.up]),
            w_down: p.down,
        }
    }
}

pub struct Weights {
    pub hyper: Hyper,
    /// `[vocab, dim]`.
    pub embed: Matrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// `[vocab, dim]`; `None` when tied to `embed`, as in SmolLM2.
    pub lm_head: Option<Matrix>,
}

impl Weights {
    /// The LM head: `embed` when tied.
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights one decode step of one sequence reads: every layer,
    /// the final norm, the LM head and one embedding row.
    pub fn decode_bytes(&self) -> usize {
        let vector = |v: &[f32]| v.len() * 4;
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                vector(&l.attn_norm)
                    + l.wqkv.bytes()
                    + l.wo.bytes()
                    + vector(&l.ffn_norm)
                    + l.w_gate_up.bytes()
                    + l.w_down.bytes()
            })
            .sum();
        let embed_row = self.embed.bytes() / self.embed.rows();
        layers + vector(&self.out_norm) + self.lm_head().bytes() + embed_row
    }
}
