//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`),
//! rebuilt as a Hugging Face byte-level BPE, with the model's chat template
//! (a Hugging Face directory's comes from its own files, in `hf`).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder,
};

use crate::chat_template::ChatTemplate;
use crate::gguf::{Gguf, Value};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// Reads the tokenizer, its end-of-sequence token and its chat template from
/// the GGUF file at `path`.
pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let gguf = Gguf::open(path).map_err(|e| load_error(path, e.to_string()))?;
    from_gguf(&gguf).map_err(|message| load_error(path, message))
}

fn load_error(path: &Path, message: String) -> TokenizerError {
    TokenizerError::Load {
        path: path.to_path_buf(),
        message,
    }
}

fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, String> {
    let meta = |key: &str| gguf.metadata(&format!("tokenizer.ggml.{key}"));
    let model = meta("model").and_then(Value::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model {model:?} is not supported (gpt2 is)"
        ));
    }
    let strings = |key: &str| -> Result<Vec<&str>, String> {
        meta(key)
            .and_then(Value::as_array)
            .and_then(|items| items.iter().map(Value::as_str).collect())
            .ok_or_else(|| format!("tokenizer.ggml.{key} is missing or not strings"))
    };
    let tokens = strings("tokens")?;
    let merges = strings("merges")?
        .into_iter()
        .map(|m| {
            // Byte-level symbols never contain a space (it is spelled `Ġ`).
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {m:?} is not two symbols"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| e.to_string())?;
    let byte_level = ByteLevel::default().add_prefix_space(false);
    // llama.cpp's pre-tokenizer names; "smollm" splits digits one by one first.
    let pre: PreTokenizerWrapper = match meta("pre").and_then(Value::as_str).unwrap_or("gpt2") {
        "gpt2" | "default" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => return Err(format!("pre-tokenizer {other:?} is not supported")),
    };
    let mut inner: tokenizers::Tokenizer = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(bpe.into())
    .with_pre_tokenizer(Some(pre))
    .with_decoder(Some(ByteLevelDecoder::default().into()))
    .build()
    .map_err(|e| e.to_string())?
    .into();
    let types: Vec<u64> = meta("token_type")
        .and_then(Value::as_array)
        .map(|t| t.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let added = |kind: u64, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .zip(&tokens)
            .filter(|(&t, _)| t == kind)
            .map(|(_, &text)| AddedToken::from(text, special))
            .collect()
    };
    // Control tokens (`<|im_start|>`, ...) match whole in text and vanish in decoding.
    inner.add_special_tokens(&added(CONTROL, true));
    inner.add_tokens(&added(USER_DEFINED, false));
    let token_text = |key: &str| {
        meta(key)
            .and_then(Value::as_u64)
            .and_then(|id| tokens.get(id as usize).copied())
    };
    let eos = meta("eos_token_id")
        .and_then(Value::as_u64)
        .map(|id| id as u32);
    let template = match gguf
        .metadata("tokenizer.chat_template")
        .and_then(Value::as_str)
    {
        Some(source) => Some(
            ChatTemplate::new(
                source,
                token_text("bos_token_id").unwrap_or(""),
                token_text("eos_token_id").unwrap_or(""),
            )
            .map_err(|e| format!("tokenizer.chat_template: {e}"))?,
        ),
        None => None,
    };
    Ok(Tokenizer::from_model(inner, eos, template))
}
