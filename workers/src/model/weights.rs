//! A Llama-family model's hyperparameters and weights, read from GGUF.
//!
//! Every tensor is dequantized to f32 at load. SmolLM2-135M is ~540 MB in f32,
//! which fits easily; f32 lets a well-tested GEMM crate do the products. Q4_1 in
//! place would read ~5x fewer bytes per decode step (decode is memory-bound), at
//! the price of hand-written quantized kernels: the next step if decode speed matters.

use std::path::Path;

use rayon::prelude::*;

use super::gguf::{Gguf, Value};
use super::ModelError;

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
}

/// One transformer block. Matrices are row-major `[out, in]`, as the
/// products `y = W x` read them; Q, K, V and gate, up are fused into one matrix each.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Q rows, then K, then V: `[(heads + 2 kv_heads) head_dim, dim]`. Q and K rows
    /// keep GGUF's order, which pairs rotary dimensions as `(2i, 2i + 1)`.
    pub wqkv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// Gate rows then up rows: `[2 ffn_dim, dim]`.
    pub w_gate_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

pub struct Weights {
    pub hyper: Hyper,
    /// `[vocab, dim]`.
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// `[vocab, dim]`; `None` when tied to `embed`, as in SmolLM2.
    pub lm_head: Option<Vec<f32>>,
}

impl Weights {
    /// Reads and dequantizes the model in the GGUF file at `path`.
    pub fn load(path: &Path) -> Result<Weights, ModelError> {
        let gguf = &Gguf::open(path)?;
        let hyper = hyper(path, gguf)?;
        let h = &hyper;
        let qkv_rows = (h.heads + 2 * h.kv_heads) * h.head_dim;
        let get = |name: &str, rows: usize, cols: usize| tensor(path, gguf, name, rows, cols);
        let layers = (0..h.layers)
            .into_par_iter()
            .map(|i| {
                let p = |s: &str| format!("blk.{i}.{s}.weight");
                let mut wqkv = get(&p("attn_q"), h.heads * h.head_dim, h.dim)?;
                wqkv.extend(get(&p("attn_k"), h.kv_dim(), h.dim)?);
                wqkv.extend(get(&p("attn_v"), h.kv_dim(), h.dim)?);
                debug_assert_eq!(wqkv.len(), qkv_rows * h.dim);
                let mut w_gate_up = get(&p("ffn_gate"), h.ffn_dim, h.dim)?;
                w_gate_up.extend(get(&p("ffn_up"), h.ffn_dim, h.dim)?);
                Ok(Layer {
                    attn_norm: get(&p("attn_norm"), 1, h.dim)?,
                    wqkv,
                    wo: get(&p("attn_output"), h.dim, h.heads * h.head_dim)?,
                    ffn_norm: get(&p("ffn_norm"), 1, h.dim)?,
                    w_gate_up,
                    w_down: get(&p("ffn_down"), h.dim, h.ffn_dim)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let lm_head = match gguf.tensor("output.weight") {
            Some(_) => Some(get("output.weight", h.vocab, h.dim)?),
            None => None,
        };
        Ok(Weights {
            embed: get("token_embd.weight", h.vocab, h.dim)?,
            out_norm: get("output_norm.weight", 1, h.dim)?,
            lm_head,
            layers,
            hyper,
        })
    }

    /// The LM head: `embed` when tied.
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}

fn hyper(path: &Path, gguf: &Gguf) -> Result<Hyper, ModelError> {
    let invalid = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let arch = gguf
        .metadata("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    if arch != "llama" {
        return Err(invalid(format!(
            "architecture {arch:?} is not supported (llama is)"
        )));
    }
    let value = |key: &str| {
        gguf.metadata(&format!("llama.{key}"))
            .and_then(Value::as_f64)
            .ok_or_else(|| invalid(format!("metadata llama.{key} is missing or not a number")))
    };
    let uint = |key: &str| value(key).map(|v| v as usize);
    let dim = uint("embedding_length")?;
    let heads = uint("attention.head_count")?;
    let kv_heads = uint("attention.head_count_kv").unwrap_or(heads);
    // llama.vocab_size is optional in GGUF; the token list always has the length.
    let vocab = match uint("vocab_size") {
        Ok(v) => v,
        Err(_) => gguf
            .metadata("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[Value]>::len)
            .ok_or_else(|| invalid("no vocabulary size".into()))?,
    };
    if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
        return Err(invalid(format!(
            "{heads} heads, {kv_heads} KV heads and width {dim} do not fit together"
        )));
    }
    let head_dim = dim / heads;
    if head_dim % 2 != 0 || uint("rope.dimension_count").is_ok_and(|d| d != head_dim) {
        return Err(invalid(
            "rotary embeddings must cover whole, even-sized heads".into(),
        ));
    }
    Ok(Hyper {
        dim,
        layers: uint("block_count")?,
        heads,
        kv_heads,
        head_dim,
        ffn_dim: uint("feed_forward_length")?,
        vocab,
        norm_eps: value("attention.layer_norm_rms_epsilon")? as f32,
        rope_base: value("rope.freq_base").unwrap_or(10_000.0) as f32,
        context_len: uint("context_length")?,
    })
}

/// A tensor as f32, checked to be `[rows, cols]` (GGUF dims `[cols, rows]`).
fn tensor(
    path: &Path,
    gguf: &Gguf,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, ModelError> {
    let raw = gguf.tensor(name).ok_or_else(|| ModelError::Format {
        path: path.to_path_buf(),
        message: format!("tensor {name} is missing"),
    })?;
    let count: usize = raw.dims.iter().product();
    if raw.dims[0] != cols || count != rows * cols {
        return Err(ModelError::Format {
            path: path.to_path_buf(),
            message: format!(
                "tensor {name} has dims {:?}, expected [{cols}, {rows}]",
                raw.dims
            ),
        });
    }
    Ok(raw.kind.dequantize(raw.bytes, count))
}
