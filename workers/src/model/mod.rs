//! A Llama-family model, served as the `llama` engine: loading from GGUF or a
//! Hugging Face directory, the batched forward pass over the paged KV cache on
//! the CPU (quantized weights computed in place, see `matrix`) or, with the
//! `cuda` feature, on a GPU (`cuda`), sampling, and the tokenizer and chat
//! template that come with the model.

mod attention;
mod chat_template;
mod compute;
#[cfg(feature = "cuda")]
pub mod cuda;
mod exp;
mod forward;
mod gguf;
mod hf;
mod huge;
mod matmul;
mod matrix;
mod quant;
mod sample;
mod team;
mod tiles;
mod vocab;
mod weights;

use std::path::{Path, PathBuf};

use crate::config::Backend;
use crate::scheduler::Compute;

pub use chat_template::ChatTemplate;
pub use compute::LlamaCompute;
pub use forward::Forward;
pub use matrix::Matrix;
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
    #[error("this worker was built without the cuda backend (cargo feature `cuda`)")]
    NoCuda,
    #[cfg(feature = "cuda")]
    #[error("CUDA backend")]
    Cuda(#[from] cuda::CudaError),
}

/// The `llama` engine's compute on `backend`, for the model at `path` (GGUF
/// file or Hugging Face directory), with KV memory for `num_blocks` blocks of `block_size`.
pub fn load_compute(
    path: &Path,
    backend: Backend,
    num_blocks: usize,
    block_size: usize,
) -> Result<Box<dyn Compute + Send>, ModelError> {
    match backend {
        Backend::Cpu => Ok(Box::new(LlamaCompute::load(path, num_blocks, block_size)?)),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let weights = Weights::load(path)?;
            Ok(Box::new(cuda::CudaCompute::new(
                &weights, num_blocks, block_size,
            )?))
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(ModelError::NoCuda),
    }
}
