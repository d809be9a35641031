//! Engine events to client text: tokens detokenized incrementally, cut at the
//! request's stop strings, and counted for usage; their log probabilities,
//! when asked for, travel with the text they released.

use std::sync::Arc;

use protocol::openai::Usage;
use protocol::{ApiError, ErrorKind};

use crate::detokenize::Detokenizer;
use crate::engine::GenerateEvent;
use crate::scheduler::{FinishReason, TokenLogprobs, TokenUsage};
use crate::stop::StopMatcher;
use prompt::{Tokenizer, TokenizerError};

/// Text to send for one engine event, and whether the generation is over.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    pub text: String,
    /// The log probabilities of the tokens this text (or finish) completes.
    pub logprobs: Vec<(u32, TokenLogprobs)>,
    pub finish: Option<Finish>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// One request's output state.
pub struct TextOutput {
    tokenizer: Arc<Tokenizer>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    /// Log probabilities of tokens whose text is still held back.
    logprobs: Vec<(u32, TokenLogprobs)>,
}

impl TextOutput {
    pub fn new(tokenizer: Arc<Tokenizer>, stops: Vec<String>, prompt_tokens: usize) -> Self {
        TextOutput {
            tokenizer,
            detokenizer: Detokenizer::default(),
            stop: StopMatcher::new(stops),
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
            logprobs: Vec::new(),
        }
    }

    /// Passes tokens another worker generated, and whose text the client
    /// already has, through the detokenizer and the stop strings, so what
    /// follows is released exactly as the first worker would have released it.
    /// A stop string among them would have ended that stream, so none is.
    pub fn replay(&mut self, ids: &[u32]) -> Result<(), ApiError> {
        for &id in ids {
            let text = self
                .detokenizer
                .push(&self.tokenizer, id)
                .map_err(internal)?;
            if self.stop.push(&text).stopped {
                return Err(ApiError::invalid(
                    "llmgw_resume",
                    "the tokens to resume from already end at a stop string",
                ));
            }
        }
        self.completion_tokens += ids.len();
        Ok(())
    }

    /// The text `event` releases. After a piece with `finish` set, the caller
    /// must stop reading events and drop the receiver, which cancels generation
    /// when a stop string ended it early.
    pub fn on_event(&mut self, event: GenerateEvent) -> Result<Piece, ApiError> {
        match event {
            GenerateEvent::Admitted { cached_tokens } => {
                self.cached_tokens = cached_tokens;
                Ok(Piece::default())
            }
            GenerateEvent::Token { id, logprobs } => {
                self.completion_tokens += 1;
                self.logprobs.extend(logprobs.map(|l| (id, l)));
                let text = self
                    .detokenizer
                    .push(&self.tokenizer, id)
                    .map_err(internal)?;
                let matched = self.stop.push(&text);
                let finish = matched
                    .stopped
                    .then(|| self.finish(FinishReason::Stop, None));
                let released = !matched.text.is_empty() || finish.is_some();
                Ok(Piece {
                    text: matched.text,
                    logprobs: if released {
                        std::mem::take(&mut self.logprobs)
                    } else {
                        Vec::new()
                    },
                    finish,
                })
            }
            GenerateEvent::Finished { reason, usage } => {
                let tail = self.detokenizer.flush(&self.tokenizer).map_err(internal)?;
                let mut matched = self.stop.push(&tail);
                let reason = if matched.stopped {
                    FinishReason::Stop
                } else {
                    matched.text.push_str(&self.stop.flush());
                    reason
                };
                Ok(Piece {
                    text: matched.text,
                    logprobs: std::mem::take(&mut self.logprobs),
                    finish: Some(self.finish(reason, Some(usage))),
                })
            }
        }
    }

    fn finish(&self, reason: FinishReason, engine_usage: Option<TokenUsage>) -> Finish {
        // The engine's count includes an end-of-sequence token the client never saw.
        let usage = engine_usage.unwrap_or(TokenUsage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
        });
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Finish {
            reason,
            usage: Usage::new(
                count(usage.prompt_tokens),
                count(usage.completion_tokens),
                count(usage.cached_tokens),
            ),
        }
    }
}

fn internal(e: TokenizerError) -> ApiError {
    ApiError::new(ErrorKind::Internal, e.to_string())
}

/// The error for a stream that ended without `Finished`: the engine stopped under it.
pub fn engine_gone() -> ApiError {
    ApiError::new(
        ErrorKind::Internal,
        "the engine stopped before the request finished",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(tok: &Tokenizer, text: &str) -> Vec<GenerateEvent> {
        let ids = tok.encode(text).unwrap();
        let usage = TokenUsage {
            prompt_tokens: 3,
            completion_tokens: ids.len(),
            cached_tokens: 2,
        };
        std::iter::once(GenerateEvent::Admitted { cached_tokens: 2 })
            .chain(
                ids.into_iter()
                    .map(|id| GenerateEvent::Token { id, logprobs: None }),
            )
            .chain([GenerateEvent::Finished {
                reason: FinishReason::Length,
                usage,
            }])
            .collect()
    }

    fn run(stops: &[&str], text: &str) -> (String, Finish, usize) {
        let tok = Arc::new(Tokenizer::builtin().unwrap());
        let mut out = TextOutput::new(
            tok.clone(),
            stops.iter().map(|s| s.to_string()).collect(),
            3,
        );
        let mut all = String::new();
        for (i, event) in events(&tok, text).into_iter().enumerate() {
            let piece = out.on_event(event).unwrap();
            all.push_str(&piece.text);
            if let Some(finish) = piece.finish {
                return (all, finish, i);
            }
        }
        panic!("no finish");
    }

    #[test]
    fn passes_text_through_with_engine_usage() {
        let (text, finish, _) = run(&[], "The sky over the river 🌧");
        assert_eq!(text, "The sky over the river 🌧");
        assert_eq!(finish.reason, FinishReason::Length);
        assert_eq!(finish.usage.prompt_tokens_details.unwrap().cached_tokens, 2);
    }

    #[test]
    fn a_stop_string_ends_early_with_stop() {
        let (text, finish, at) = run(&["river"], "The sky over the river is grey");
        assert_eq!(text, "The sky over the ");
        assert_eq!(finish.reason, FinishReason::Stop);
        // Ended before the engine did, counting the tokens seen so far.
        assert_eq!(finish.usage.completion_tokens as usize, at);
        assert_eq!(finish.usage.prompt_tokens, 3);
        assert_eq!(finish.usage.prompt_tokens_details.unwrap().cached_tokens, 2);
    }
}
