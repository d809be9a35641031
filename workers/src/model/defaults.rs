//! The sampling a model's authors recommend, where its files say: a Hugging
//! Face directory's `generation_config.json` (`temperature`, `top_p`,
//! `top_k`, as vLLM reads them), or a GGUF file's `general.sampling.temp`,
//! `.top_p` and `.top_k` (llama.cpp's keys). `top_k` of 0 or less is off.

use std::path::Path;

use prompt::gguf::{Gguf, Value};
use serde::Deserialize;

use super::error::ModelError;
use crate::config::DefaultSampling;

/// The model at `path`'s own sampling defaults; none when its files name none.
pub fn sampling_defaults(path: &Path) -> Result<DefaultSampling, ModelError> {
    if path.is_dir() {
        from_generation_config(&path.join("generation_config.json"))
    } else {
        let gguf = Gguf::open(path)?;
        let get = |key: &str| gguf.metadata(key).and_then(Value::as_f64);
        Ok(DefaultSampling {
            temperature: get("general.sampling.temp").map(|t| t as f32),
            top_p: get("general.sampling.top_p").map(|p| p as f32),
            top_k: get("general.sampling.top_k").map(top_k),
            over_model: false,
        })
    }
}

#[derive(Deserialize)]
struct GenerationConfig {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<f64>,
}

fn from_generation_config(path: &Path) -> Result<DefaultSampling, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DefaultSampling::default()),
        Err(source) => {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let c: GenerationConfig = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(DefaultSampling {
        temperature: c.temperature,
        top_p: c.top_p,
        top_k: c.top_k.map(top_k),
        over_model: false,
    })
}

/// A recorded top-k as ours: 0 (off) for 0 or less.
fn top_k(k: f64) -> u32 {
    if k >= 1.0 {
        k.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}
