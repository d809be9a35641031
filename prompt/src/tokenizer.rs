//! Text to token ids and back: a tokenizer.json when configured, the one a
//! model file carries, otherwise a small byte-level BPE trained at startup on
//! the embedded corpus.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::byte_level::ByteLevelBpe;
use crate::chat_template::ChatTemplate;
use crate::pieces::Pieces;

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
    /// Set when prompts can be tokenized piece by piece (see `pieces`).
    pieces: Option<Pieces>,
    /// Set when it gives the same tokens as `inner` (see `byte_level`).
    fast: Option<ByteLevelBpe>,
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
        Tokenizer::from_model(inner, eos, None)
    }

    /// A model's tokenizer, with the end-of-sequence token and chat template its file names.
    pub fn from_model(
        inner: tokenizers::Tokenizer,
        eos: Option<u32>,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        let fast = ByteLevelBpe::of(&inner).filter(|fast| agrees(fast, &inner));
        let mut tokenizer = Tokenizer {
            inner,
            eos,
            chat_template,
            pieces: None,
            fast,
        };
        tokenizer.pieces = Pieces::of(&tokenizer.inner, &|text, special| {
            tokenizer.encode_with(text, special)
        });
        tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (e.g. BOS) added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, true).map_err(TokenizerError::Codec)
    }

    /// Token ids of the text `pieces` make together, as [`Tokenizer::encode`]
    /// gives them, each distinct piece tokenized once while it stays in the
    /// cache (see `pieces`): a prompt's system prompt and earlier turns come
    /// back from the cache. Tokenizers for which that would change the
    /// tokens tokenize the text whole.
    pub fn encode_pieces(&self, pieces: &[&str]) -> Result<Vec<u32>, TokenizerError> {
        match &self.pieces {
            Some(cache) => cache.tokens(pieces, &|text, special| self.encode_with(text, special)),
            None => self.encode_with(&pieces.concat(), true),
        }
        .map_err(TokenizerError::Codec)
    }

    /// Whether [`Tokenizer::encode_pieces`] caches pieces with this tokenizer.
    pub fn caches_pieces(&self) -> bool {
        self.pieces.is_some()
    }

    /// The `tokenizers` pipeline underneath, for benchmarks that measure
    /// other implementations against it.
    pub fn pipeline(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether text between added tokens takes the faster byte-level path
    /// (which only pieces take).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some() && self.pieces.is_some()
    }

    /// `text`'s tokens, with the post-processor's special tokens or without:
    /// text without them (what lies between added tokens) takes the faster
    /// path where there is one.
    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>, String> {
        if let (Some(fast), false) = (&self.fast, special) {
            return fast.encode(text);
        }
        // Without offsets: only the ids are wanted.
        let encoding = self
            .inner
            .encode_fast(text, special)
            .map_err(|e| e.to_string())?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// The bytes token `id` stands for, special tokens spelled out. Decoded
    /// alone, a token can lose what it means in a sequence: a SentencePiece
    /// piece its leading space (`▁`), a byte-level token the half character
    /// it holds. So pieces are read from the vocabulary: `▁` is a space,
    /// `<0xNN>` a byte, and a byte-level piece's characters its bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let text = self.inner.decode(&[id], false).unwrap_or_default();
        let piece = self.inner.id_to_token(id).unwrap_or_default();
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                return vec![byte];
            }
        }
        // Not a byte-level character: that alphabet stops at U+0143.
        if piece.contains('\u{2581}') {
            return piece.replace('\u{2581}', " ").into_bytes();
        }
        if !text.contains('\u{FFFD}') {
            return text.into_bytes();
        }
        piece
            .chars()
            .map(crate::byte_level::byte_of)
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| text.into_bytes())
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

/// Whether `fast` tokenizes as `inner` does on sample texts (spaces before
/// words, runs and kinds of whitespace, digits of several scripts,
/// punctuation, contractions, characters of several bytes and forms a
/// normalizer would change), cut at added tokens as `pieces` cuts prompts
/// (the fast path never sees them).
fn agrees(fast: &ByteLevelBpe, inner: &tokenizers::Tokenizer) -> bool {
    let added: Vec<String> = inner
        .get_added_tokens_decoder()
        .into_values()
        .map(|t| t.content)
        .collect();
    // About 500 sample strings among corpus words: a few milliseconds in an
    // optimized build, and every process that loads a tokenizer pays it.
    let texts: Vec<String> = crate::samples::conversations(3, 40)
        .into_iter()
        .flatten()
        .filter_map(|m| m.text().map(Cow::into_owned))
        .chain(CORPUS.lines().take(10).map(str::to_string))
        .collect();
    let mut parts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for token in &added {
        parts = parts.iter().flat_map(|p| p.split(token.as_str())).collect();
    }
    parts.retain(|p| !p.is_empty());
    // Enough compared that agreement means something.
    parts.len() >= 60
        && parts.iter().all(|text| {
            let theirs = inner.encode_fast(*text, false);
            theirs.is_ok_and(|e| fast.encode(text).is_ok_and(|ours| ours == e.get_ids()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bytes_rebuild_text_split_inside_characters() {
        let tok = Tokenizer::builtin().unwrap();
        for text in ["naïve café — 日本語 🌧", "plain words", "tab\tand\nnewline"] {
            let ids = tok.encode(text).unwrap();
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
            assert_eq!(String::from_utf8(bytes).unwrap(), text);
        }
        let eos = tok.inner.token_to_id(BUILTIN_EOS).unwrap();
        assert_eq!(tok.token_bytes(eos), BUILTIN_EOS.as_bytes());
    }

    #[test]
    fn a_pipeline_the_fast_path_does_not_match_keeps_its_own_path() {
        let Tokenizer { mut inner, .. } = Tokenizer::builtin().unwrap();
        inner.with_normalizer(Some(tokenizers::normalizers::unicode::NFKC));
        let tok = Tokenizer::new(inner);
        assert!(!tok.has_fast_path());
        for text in ["ﬁne １２３", "cafe\u{301}", "plain"] {
            assert_eq!(
                tok.encode_pieces(&[text]).unwrap(),
                tok.encode(text).unwrap()
            );
        }
    }

    #[test]
    fn sentencepiece_tokens_keep_their_leading_space() {
        use tokenizers::decoders::metaspace::Metaspace;
        use tokenizers::models::unigram::Unigram;
        let vocab = [
            ("<unk>", 0.0),
            ("▁Paris", -1.0),
            ("▁is", -1.0),
            ("<0xE2>", -2.0),
        ];
        let model = Unigram::from(
            vocab.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
            Some(0),
            true,
        )
        .unwrap();
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_decoder(Some(Metaspace::default()));
        let tok = Tokenizer::new(inner);
        let bytes: Vec<u8> = [2, 1].iter().flat_map(|&id| tok.token_bytes(id)).collect();
        assert_eq!(bytes, b" is Paris");
        assert_eq!(tok.token_bytes(3), [0xE2]);
    }

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
