//! A Llama-family model, served as the `llama` engine: loading from GGUF or a
//! Hugging Face directory, the batched forward pass over the paged KV cache on
//! the CPU (quantized weights computed in place, see `matrix`) or, with the
//! `cuda` feature, on a GPU (`cuda`), sampling, and the sampling defaults the
//! model's files recommend. The tokenizer and chat
//! template that come with the model are read by the `prompt` crate.

mod attention;
mod compute;
#[cfg(feature = "cuda")]
pub mod cuda;
mod defaults;
mod error;
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
mod weights;

use std::path::Path;

use crate::config::Backend;
use crate::scheduler::Compute;

pub use compute::LlamaCompute;
pub use defaults::sampling_defaults;
pub use error::ModelError;
pub use forward::Forward;
pub use matrix::Matrix;
pub use weights::{Hyper, Weights};

/// Reads the model at `path`: a GGUF file, or a Hugging Face directory
/// (`config.json` and `*.safetensors`).
pub fn load_weights(path: &Path) -> Result<Weights, ModelError> {
    if path.is_dir() {
        hf::load_weights(path)
    } else {
        gguf::load_weights(path)
    }
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
        Backend::Cpu => Ok(Box::new(LlamaCompute::new(
            load_weights(path)?,
            num_blocks,
            block_size,
        ))),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let weights = load_weights(path)?;
            Ok(Box::new(cuda::CudaCompute::new(
                &weights, num_blocks, block_size,
            )?))
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(ModelError::NoCuda),
    }
}
