//! Why a model could not be loaded.

use std::path::PathBuf;

use prompt::gguf::GgufError;

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
    Cuda(#[from] super::cuda::CudaError),
}

impl From<GgufError> for ModelError {
    fn from(e: GgufError) -> ModelError {
        match e {
            GgufError::Io { path, source } => ModelError::Io { path, source },
            GgufError::Format { path, message } => ModelError::Format { path, message },
        }
    }
}
