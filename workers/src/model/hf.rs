//! A Hugging Face model directory's weights: `config.json` and
//! `*.safetensors` (f32, f16 or bf16, widened to f32). Its tokenizer and chat
//! template are read by `prompt::hf`.
//!
//! Hugging Face keeps Q and K rows as trained, rotating each head's halves
//! `(i, i + head_dim / 2)` together; GGUF converters permute those rows so that
//! adjacent pairs `(2i, 2i + 1)` rotate. The loader applies the same
//! permutation, so one forward pass serves both formats with identical logits.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::error::ModelError;
use super::matrix::Matrix;
use super::weights::{Hyper, LayerParts, Weights};

/// The fields of `config.json` the forward pass depends on.
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: usize,
    vocab_size: usize,
    rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    rope_theta: f32,
    max_position_embeddings: usize,
    /// Llama's own default; the field is written out by every recent export anyway.
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    hidden_act: String,
    /// Anything here (linear, dynamic, llama3, yarn) changes the rotary angles.
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

fn default_act() -> String {
    "silu".into()
}

fn format_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| format_error(path, e.to_string()))
}

fn read_config(dir: &Path) -> Result<(Config, Hyper), ModelError> {
    let path = dir.join("config.json");
    let c: Config = read_json(&path)?;
    let refuse = |what: String| Err(format_error(&path, what));
    if c.model_type != "llama" {
        return refuse(format!(
            "model_type {:?} is not supported (llama is)",
            c.model_type
        ));
    }
    if c.hidden_act != "silu" {
        return refuse(format!(
            "hidden_act {:?} is not supported (silu is)",
            c.hidden_act
        ));
    }
    if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("rope_scaling is not supported".into());
    }
    if c.attention_bias || c.mlp_bias {
        return refuse("attention or MLP biases are not supported".into());
    }
    let heads = c.num_attention_heads;
    let hyper = Hyper {
        dim: c.hidden_size,
        layers: c.num_hidden_layers,
        heads,
        kv_heads: c.num_key_value_heads.unwrap_or(heads),
        head_dim: c.head_dim.unwrap_or(c.hidden_size / heads.max(1)),
        ffn_dim: c.intermediate_size,
        vocab: c.vocab_size,
        norm_eps: c.rms_norm_eps,
        rope_base: c.rope_theta,
        context_len: c.max_position_embeddings,
    };
    hyper.check().map_err(|m| format_error(&path, m))?;
    Ok((c, hyper))
}

/// Every `*.safetensors` file of a directory, mapped.
struct Shards {
    maps: Vec<(PathBuf, Mmap)>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Shards, ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(format_error(dir, "no *.safetensors files"));
        }
        let maps = paths
            .into_iter()
            .map(|path| {
                let file = File::open(&path).map_err(io(&path))?;
                // SAFETY: read-only and private; model directories are written
                // whole before a worker starts and not changed under it.
                let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
                Ok((path, map))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Shards { maps })
    }

    /// Each file's parsed header, and which file holds each tensor name.
    fn index(&self) -> Result<Index<'_>, ModelError> {
        let mut files = Vec::new();
        let mut names = HashMap::new();
        for (i, (path, map)) in self.maps.iter().enumerate() {
            let st =
                SafeTensors::deserialize(map).map_err(|e| format_error(path, e.to_string()))?;
            for name in st.names() {
                names.insert(name.to_string(), i);
            }
            files.push((path.as_path(), st));
        }
        Ok(Index { files, names })
    }
}

struct Index<'a> {
    files: Vec<(&'a Path, SafeTensors<'a>)>,
    names: HashMap<String, usize>,
}

impl Index<'_> {
    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// A tensor widened to f32, checked to have `shape` (PyTorch's order, slowest first).
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let &file = self
            .names
            .get(name)
            .ok_or_else(|| format_error(self.files[0].0, format!("tensor {name} is missing")))?;
        let (path, st) = &self.files[file];
        let view = st
            .tensor(name)
            .map_err(|e| format_error(path, e.to_string()))?;
        if view.shape() != shape {
            return Err(format_error(
                path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    view.shape()
                ),
            ));
        }
        let data = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(format_error(
                    path,
                    format!("tensor {name} is {other:?}; f32, f16 and bf16 are supported"),
                ))
            }
        })
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        Ok(Matrix::from_f32(
            rows,
            cols,
            self.values(name, &[rows, cols])?,
        ))
    }

    /// Q or K with each head's rows reordered from half-split to adjacent-pair rotation.
    fn rotary_matrix(&self, name: &str, heads: usize, h: &Hyper) -> Result<Matrix, ModelError> {
        let rows = heads * h.head_dim;
        let w = self.values(name, &[rows, h.dim])?;
        Ok(Matrix::from_f32(
            rows,
            h.dim,
            pair_rotary_rows(&w, heads, h.dim),
        ))
    }
}

/// llama.cpp's convert-time permutation: row `(head, p, i)` of the half-split
/// order (`p` the half, `i` the pair) moves to `(head, i, p)`.
fn pair_rotary_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = w.len() / cols / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for head in 0..heads {
        for p in 0..2 {
            for i in 0..half {
                let from = head * head_dim + p * half + i;
                let to = head * head_dim + 2 * i + p;
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Reads the model in the Hugging Face directory `dir`.
pub fn load_weights(dir: &Path) -> Result<Weights, ModelError> {
    let (config, hyper) = read_config(dir)?;
    let shards = Shards::open(dir)?;
    let index = &shards.index()?;
    let h = &hyper;
    let layers = (0..h.layers)
        .into_par_iter()
        .map(|i| {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            let parts = LayerParts {
                attn_norm: index.values(&p("input_layernorm"), &[h.dim])?,
                q: index.rotary_matrix(&p("self_attn.q_proj"), h.heads, h)?,
                k: index.rotary_matrix(&p("self_attn.k_proj"), h.kv_heads, h)?,
                v: index.matrix(&p("self_attn.v_proj"), h.kv_dim(), h.dim)?,
                o: index.matrix(&p("self_attn.o_proj"), h.dim, h.heads * h.head_dim)?,
                ffn_norm: index.values(&p("post_attention_layernorm"), &[h.dim])?,
                gate: index.matrix(&p("mlp.gate_proj"), h.ffn_dim, h.dim)?,
                up: index.matrix(&p("mlp.up_proj"), h.ffn_dim, h.dim)?,
                down: index.matrix(&p("mlp.down_proj"), h.dim, h.ffn_dim)?,
            };
            Ok(parts.into())
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    // A tied model may still store the head (some exports do); the flag decides.
    let lm_head = if config.tie_word_embeddings {
        None
    } else if index.has("lm_head.weight") {
        Some(index.matrix("lm_head.weight", h.vocab, h.dim)?)
    } else {
        return Err(format_error(
            dir,
            "lm_head.weight is missing and tie_word_embeddings is false",
        ));
    };
    Ok(Weights {
        embed: index.matrix("model.embed_tokens.weight", h.vocab, h.dim)?,
        out_norm: index.values("model.norm.weight", &[h.dim])?,
        lm_head,
        layers,
        hyper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_rotary_rows_like_llama_cpp() {
        // Two heads of size 4, one column: rows named by their index.
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        // Per head: halves [0 1 | 2 3] become pairs (0 2)(1 3).
        assert_eq!(
            pair_rotary_rows(&w, 2, 1),
            [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }
}
