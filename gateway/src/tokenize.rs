//! Tokenize: a prompt's token count and block hashes, computed with the pool's
//! tokenizer and the same prompt rendering as its workers (the `prompt`
//! crate), so the gateway's hashes equal the workers'.

use std::sync::{Arc, OnceLock};

use prompt::{Tokenizer, TokenizerError};
use protocol::blocks::salted_block_hashes;
use protocol::engine_kv::{cache_salt_key, extra_key_salt};
use protocol::{ApiError, BlockHash, ErrorKind};

use crate::parse::Prompt;

/// A prompt as routing sees it.
#[derive(Debug, Clone, Default)]
pub struct PromptBlocks {
    pub tokens: usize,
    pub hashes: Vec<BlockHash>,
}

/// A pool's tokenizer: `builtin` (trained once per process, shared), the
/// workers' GGUF model file or Hugging Face directory (its tokenizer and
/// chat template), or a `tokenizer.json` path.
pub fn load(spec: &str) -> Result<Arc<Tokenizer>, TokenizerError> {
    static BUILTIN: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    if spec != "builtin" {
        let tokenizer = prompt::load(spec.as_ref())?;
        // Either off costs every request: say so once.
        tracing::info!(
            tokenizer = spec,
            caches_pieces = tokenizer.caches_pieces(),
            fast_path = tokenizer.has_fast_path(),
            "tokenizer loaded"
        );
        return Ok(Arc::new(tokenizer));
    }
    if let Some(t) = BUILTIN.get() {
        return Ok(t.clone());
    }
    let built = Arc::new(Tokenizer::builtin()?);
    Ok(BUILTIN.get_or_init(|| built).clone())
}

/// Prompts in bodies above this size are tokenized on the blocking pool: a
/// 4k-token prompt seen for the first time takes hundreds of microseconds
/// (`bench tokenize`), too long to hold one of the few runtime threads every
/// connection shares.
const INLINE_MAX_BYTES: usize = 4096;

/// [`prompt_blocks`], off the runtime's threads when the body is large (its
/// prompt then copied out of the body, a small cost next to tokenizing it).
pub async fn prompt_blocks_of(
    tokenizer: &Arc<Tokenizer>,
    block_size: usize,
    prompt: &Prompt<'_>,
    cache_salt: Option<&str>,
    body_bytes: usize,
) -> Result<PromptBlocks, ApiError> {
    if body_bytes <= INLINE_MAX_BYTES {
        return prompt_blocks(tokenizer, block_size, prompt, cache_salt);
    }
    let (tokenizer, prompt) = (tokenizer.clone(), prompt.clone().into_owned());
    let cache_salt = cache_salt.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        prompt_blocks(&tokenizer, block_size, &prompt, cache_salt.as_deref())
    })
    .await
    .map_err(|_| ApiError::new(ErrorKind::Internal, "tokenizing the prompt failed"))?
}

/// The prompt's token count and block hashes; a `cache_salt` salts them as
/// vLLM salts its blocks (`engine_kv::cache_salt_key`), so a salted prompt
/// matches only blocks cached under the same salt.
pub fn prompt_blocks(
    tokenizer: &Tokenizer,
    block_size: usize,
    prompt: &Prompt,
    cache_salt: Option<&str>,
) -> Result<PromptBlocks, ApiError> {
    let tokens = match prompt {
        Prompt::Chat(messages) => prompt::chat_tokens(messages, tokenizer)?,
        Prompt::Completion(p) => prompt::completion_tokens(p.single()?, tokenizer)?,
    };
    if tokens.is_empty() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "prompt must not be empty",
        ));
    }
    let salt = cache_salt.map_or(0, |s| extra_key_salt(&cache_salt_key(s)));
    Ok(PromptBlocks {
        tokens: tokens.len(),
        hashes: salted_block_hashes(&tokens, block_size, salt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::block_hashes;
    use protocol::openai::ChatMessage;

    #[test]
    fn chat_hashes_match_the_workers() {
        let tok = load("builtin").unwrap();
        let messages = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "The weather is changing over the hills tonight."),
        ];
        let ours = prompt_blocks(&tok, 4, &Prompt::Chat(messages.clone()), None).unwrap();
        let theirs = prompt::chat_tokens(&messages, &tok).unwrap();
        assert_eq!(ours.tokens, theirs.len());
        assert_eq!(ours.hashes, block_hashes(&theirs, 4));
        assert!(!ours.hashes.is_empty());
        let salted = prompt_blocks(&tok, 4, &Prompt::Chat(messages), Some("t")).unwrap();
        assert_ne!(salted.hashes[0], ours.hashes[0]);
    }
}
