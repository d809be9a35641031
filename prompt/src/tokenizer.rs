//! Text to token ids and back: a tokenizer.json when configured, the one a
//! model file carries, otherwise a small byte-level BPE trained at startup on
//! the embedded corpus.

use std::path::{Path, PathBuf};

use crate::chat_template::ChatTemplate;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder,
};

/// The plain English prose the built-in tokenizer learns from (and the sim engine recites).
pub const CORPUS: &str = include_str!("corpus.txt");

/// The built-in tokenizer's end-of-sequence token.
pub const BUILTIN_EOS: &str = "<|endoftext|>";

/// Vocabulary size the built-in tokenizer trains towards (the corpus may yield fewer merges).
const BUILTIN_VOCAB_SIZE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot train the built-in tokenizer: {0}")]
    Train(String),
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("tokenizer failed: {0}")]
    Codec(String),
}

/// A tokenizer, with the chat template and end of sequence of its model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Option<u32>,
    /// The model's own chat template; without one, prompts use the sim's fixed template.
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Trains the built-in byte-level BPE. Deterministic: every process, gateway or
    /// worker, that calls this gets the same vocabulary, so their block hashes agree.
    pub fn builtin() -> Result<Self, TokenizerError> {
        let train_err = |e: tokenizers::Error| TokenizerError::Train(e.to_string());
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(BUILTIN_VOCAB_SIZE)
            .min_frequency(2)
            .show_progress(false)
            // Every byte gets a token, so any text (not just the corpus's) encodes.
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(BUILTIN_EOS, true)])
            .build()
            .into();
        let mut inner: tokenizers::Tokenizer = TokenizerBuilder::<
            ModelWrapper,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default().into())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(train_err)?
        .into();
        inner
            .train(&mut trainer, CORPUS.split_inclusive('\n'))
            .map_err(train_err)?;
        Ok(Tokenizer::new(inner))
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Tokenizer::new(inner))
    }

    fn new(inner: tokenizers::Tokenizer) -> Self {
        // The conventional end-of-text spellings; a real engine reads the model's
        // generation config instead.
        let eos = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>"]
            .into_iter()
            .find_map(|t| inner.token_to_id(t));
        Tokenizer {
            inner,
            eos,
            chat_template: None,
        }
    }

    /// A model's tokenizer, with the end-of-sequence token and chat template its file names.
    pub fn from_model(
        inner: tokenizers::Tokenizer,
        eos: Option<u32>,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        Tokenizer {
            inner,
            eos,
            chat_template,
        }
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (e.g. BOS) added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Number of token ids, special tokens included; valid ids are below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos_token(&self) -> Option<u32> {
        self.eos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_round_trips_and_compresses() {
        let started = std::time::Instant::now();
        let tok = Tokenizer::builtin().unwrap();
        eprintln!("built-in tokenizer trained in {:?}", started.elapsed());
        assert!(tok.vocab_size() > 256 && tok.vocab_size() <= BUILTIN_VOCAB_SIZE);
        for text in [
            "The weather over the network is turning.",
            "naïve café — 日本語 🌧",
            "",
        ] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        let ids = tok.encode(CORPUS).unwrap();
        assert!(ids.len() * 3 < CORPUS.len(), "{} tokens", ids.len());
        assert!(tok.eos_token().is_some());
    }

    #[test]
    fn builtin_is_deterministic() {
        let a = Tokenizer::builtin().unwrap();
        let b = Tokenizer::builtin().unwrap();
        assert_eq!(a.encode(CORPUS).unwrap(), b.encode(CORPUS).unwrap());
    }

    #[test]
    fn loads_a_saved_tokenizer_json() {
        let tok = Tokenizer::builtin().unwrap();
        let path = std::env::temp_dir().join(format!("workers-tok-{}.json", std::process::id()));
        tok.inner.save(&path, false).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            loaded.encode("rain at noon").unwrap(),
            tok.encode("rain at noon").unwrap()
        );
        assert!(Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).is_err());
    }
}
