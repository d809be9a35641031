//! Prompts to tokens, the same way in every process: the gateway hashes a
//! prompt's blocks with exactly the tokens its workers will prefill, so both
//! load tokenizers and render prompts through this crate.
//!
//! `tokenizer` is the tokenizer itself (the built-in one trained on
//! `corpus.txt`, or a `tokenizer.json`); `gguf_vocab` and `hf` read the one a
//! model carries, with its `chat_template`; `gguf` reads GGUF files for both
//! this crate and the worker's weights; `render` turns requests into ids.

mod byte_level;
pub mod chat_template;
pub mod gguf;
mod gguf_vocab;
mod hf;
mod pieces;
pub mod render;
pub mod samples;
pub mod tokenizer;

use std::path::Path;

pub use chat_template::ChatTemplate;
pub use render::{chat_pieces, chat_tokens, completion_tokens, Rendered};
pub use tokenizer::{Tokenizer, TokenizerError, BUILTIN_EOS, CORPUS};

/// The tokenizer at `path`: a model's GGUF file or Hugging Face directory
/// (with the model's chat template and end of sequence), or a `tokenizer.json`.
pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    if path.is_dir() {
        hf::load(path)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        gguf_vocab::load(path)
    } else {
        Tokenizer::from_file(path)
    }
}
