//! A Llama-family model on the CPU, served as the `llama` engine: GGUF
//! loading and dequantization, the batched forward pass over the paged KV
//! cache, sampling, and the tokenizer and chat template from the model file.

mod attention;
mod chat_template;
mod compute;
mod forward;
mod gguf;
mod matmul;
mod quant;
mod sample;
mod vocab;
mod weights;

use std::path::PathBuf;

pub use chat_template::ChatTemplate;
pub use compute::LlamaCompute;
pub use forward::Forward;
pub use vocab::load_tokenizer;
pub use weights::{Hyper, Weights};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path}: {message}")]
    Format { path: PathBuf, message: String },
}
