//! A model's weights from a GGUF file: the container is read by
//! `prompt::gguf`; here each tensor's ggml type is checked and decoded.

use std::path::Path;

use prompt::gguf::{Gguf, Value};
use rayon::prelude::*;

use super::error::ModelError;
use super::matrix::Matrix;
use super::quant::TensorType;
use super::weights::{Hyper, LayerParts, Weights};

/// Reads the GGUF model at `path`.
pub fn load_weights(path: &Path) -> Result<Weights, ModelError> {
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
    let lm_head = match gguf.tensor_info("output.weight") {
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

/// A tensor, checked to be `[rows, cols]` (GGUF dims `[cols, rows]`) of a
/// type this engine decodes, and to lie within the file.
fn tensor(
    path: &Path,
    gguf: &Gguf,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Matrix, ModelError> {
    let invalid = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message: format!("tensor {name}: {message}"),
    };
    let info = gguf
        .tensor_info(name)
        .ok_or_else(|| invalid("missing".into()))?;
    let kind = TensorType::from_ggml(info.ggml_type)
        .map_err(|t| invalid(format!("unsupported type {t}")))?;
    let count: usize = info.dims.iter().product();
    if info.dims.first() != Some(&cols) || count != rows * cols {
        return Err(invalid(format!(
            "dims {:?}, expected [{cols}, {rows}]",
            info.dims
        )));
    }
    let size = kind.byte_size(&info.dims).map_err(invalid)?;
    let bytes = gguf
        .tensor_bytes(info, size)
        .ok_or_else(|| invalid("runs past the end of the file".into()))?;
    Ok(Matrix::from_gguf(kind, bytes, rows, cols))
}
