//! A Hugging Face model directory's tokenizer: `tokenizer.json`, and
//! `tokenizer_config.json` with the chat template and the BOS/EOS tokens (or
//! the template in `chat_template.jinja`).

use std::path::Path;

use serde::Deserialize;

use crate::chat_template::ChatTemplate;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// The field of the model's `config.json` that names its end of sequence.
#[derive(Deserialize)]
struct ModelConfig {
    /// A token id or a list of them; the first ends a sequence when the
    /// tokenizer config names no EOS token.
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn first(&self) -> Option<u32> {
        match self {
            OneOrMany::One(id) => Some(*id),
            OneOrMany::Many(ids) => ids.first().copied(),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The parts of `tokenizer_config.json` serving needs.
#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<Templates>,
    #[serde(default)]
    bos_token: Option<TokenText>,
    #[serde(default)]
    eos_token: Option<TokenText>,
}

/// One template, or named ones of which `default` is the chat template.
#[derive(Deserialize)]
#[serde(untagged)]
enum Templates {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A token's text, bare or as a serialized `AddedToken`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenText {
    Text(String),
    Added { content: String },
}

impl TokenText {
    fn text(&self) -> &str {
        match self {
            TokenText::Text(s) | TokenText::Added { content: s } => s,
        }
    }
}

/// The tokenizer, EOS token and chat template of the directory `dir`.
pub fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let error = |path: &Path, message: String| TokenizerError::Load {
        path: path.to_path_buf(),
        message,
    };
    let tokenizer_json = dir.join("tokenizer.json");
    let inner = tokenizers::Tokenizer::from_file(&tokenizer_json)
        .map_err(|e| error(&tokenizer_json, e.to_string()))?;
    let config_path = dir.join("tokenizer_config.json");
    let config: TokenizerConfig = if config_path.is_file() {
        read_json(&config_path).map_err(|e| error(&config_path, e))?
    } else {
        TokenizerConfig::default()
    };
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| error(&jinja, e.to_string()))?)
    } else {
        match config.chat_template {
            Some(Templates::One(s)) => Some(s),
            Some(Templates::Named(list)) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template),
            None => None,
        }
    };
    let bos = config.bos_token.as_ref().map_or("", TokenText::text);
    let eos_text = config.eos_token.as_ref().map_or("", TokenText::text);
    let eos = match inner.token_to_id(eos_text) {
        Some(id) => Some(id),
        None => {
            let path = dir.join("config.json");
            let model: ModelConfig = read_json(&path).map_err(|e| error(&path, e))?;
            model.eos_token_id.as_ref().and_then(OneOrMany::first)
        }
    };
    let template = source
        .map(|s| ChatTemplate::new(&s, bos, eos_text))
        .transpose()
        .map_err(|e| error(&config_path, format!("chat_template: {e}")))?;
    Ok(Tokenizer::from_model(inner, eos, template))
}
