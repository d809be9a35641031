//! A Llama-family model's hyperparameters and weights, from a GGUF file or a
//! Hugging Face directory (`hf`). Large matrices keep GGUF's quantized blocks
//! (see `matrix` for why); everything else is f32.

use std::path::Path;

use rayon::prelude::*;

use super::gguf::{Gguf, Value};
use super::matrix::Matrix;
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
    /// Reads the model at `path`: a GGUF file, or a Hugging Face directory
    /// (`config.json` and `*.safetensors`).
    pub fn load(path: &Path) -> Result<Weights, ModelError> {
        if path.is_dir() {
            super::hf::load_weights(path)
        } else {
            Weights::load_gguf(path)
        }
    }

    fn load_gguf(path: &Path) -> Result<Weights, ModelError> {
        let gguf = &Gguf::open(path)?;
        let hyper = hyper(path, gguf)?;
        let h = &hyper;
        let get = |name: &str, rows: usize, cols: usize| tensor(path, gguf, name, rows, cols);
        let vector = |name: &str| get(name, 1, h.dim).map(|m| m.to_f32());
        let layers = (0..h.layers)
            .into_par_iter()
            .map(|i| {
                let p = |s: &str| format!("blk.{i}.{s}.weight");
                let parts = LayerParts {
                    attn_norm: vector(&p("attn_norm"))?,
                    q: get(&p("attn_q"), h.heads * h.head_dim, h.dim)?,
                    k: get(&p("attn_k"), h.kv_dim(), h.dim)?,
                    v: get(&p("attn_v"), h.kv_dim(), h.dim)?,
                    o: get(&p("attn_output"), h.dim, h.heads * h.head_dim)?,
                    ffn_norm: vector(&p("ffn_norm"))?,
                    gate: get(&p("ffn_gate"), h.ffn_dim, h.dim)?,
                    up: get(&p("ffn_up"), h.ffn_dim, h.dim)?,
                    down: get(&p("ffn_down"), h.dim, h.ffn_dim)?,
                };
                Ok(parts.into())
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let lm_head = match gguf.tensor("output.weight") {
            Some(_) => Some(get("output.weight", h.vocab, h.dim)?),
            None => None,
        };
        Ok(Weights {
            embed: get("token_embd.weight", h.vocab, h.dim)?,
            out_norm: vector("output_norm.weight")?,
            lm_head,
            layers,
            hyper,
        })
    }

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
    if heads == 0 || dim % heads != 0 {
        return Err(invalid(format!(
            "width {dim} is not a multiple of {heads} heads"
        )));
    }
    let head_dim = dim / heads;
    if uint("rope.dimension_count").is_ok_and(|d| d != head_dim) {
        return Err(invalid("rotary embeddings must cover whole heads".into()));
    }
    let hyper = Hyper {
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
    };
    hyper.check().map_err(invalid)?;
    Ok(hyper)
}

/// A tensor, checked to be `[rows, cols]` (GGUF dims `[cols, rows]`).
fn tensor(
    path: &Path,
    gguf: &Gguf,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Matrix, ModelError> {
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
    Ok(Matrix::from_gguf(raw.kind, raw.bytes, rows, cols))
}
