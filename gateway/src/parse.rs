//! Parse: read the body within its size limit and check it is a valid OpenAI
//! request, learning the model and whether to stream. The bytes themselves are
//! forwarded unchanged, so fields we do not model pass through to workers,
//! and the model and prompt are read in place, borrowed from them.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use protocol::openai::{self, ChatCompletionRequest, ChatMessage, CompletionRequest};
use protocol::{ApiError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }
}

#[derive(Debug)]
pub struct Parsed<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    pub user: Option<String>,
    /// vLLM's `cache_salt`: the prompt's blocks are hashed apart.
    pub cache_salt: Option<String>,
    /// Completion tokens the request may generate in all (`max_tokens`
    /// times `n`), when it says.
    pub max_tokens: Option<u64>,
    /// Choices asked for (`n`).
    pub choices: u32,
    pub prompt: Prompt<'a>,
}

/// What the worker will tokenize, so the gateway can tokenize it the same way.
#[derive(Debug, Clone)]
pub enum Prompt<'a> {
    Chat(Vec<ChatMessage<'a>>),
    Completion(openai::Prompt<'a>),
}

impl Prompt<'_> {
    /// The prompt with its text copied out of the body, to outlive it.
    pub fn into_owned(self) -> Prompt<'static> {
        match self {
            Prompt::Chat(messages) => {
                Prompt::Chat(messages.into_iter().map(ChatMessage::into_owned).collect())
            }
            Prompt::Completion(prompt) => Prompt::Completion(prompt.into_owned()),
        }
    }
}

pub async fn read_body(
    body: Incoming,
    declared_len: Option<u64>,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds {max_bytes} bytes"),
        )
    };
    if declared_len.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(
            "body",
            format!("could not read the request body: {e}"),
        )),
    }
}

pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed<'_>, ApiError> {
    let invalid =
        |e: serde_json::Error| ApiError::invalid("body", format!("invalid JSON body: {e}"));
    // Only the gateway continues a stream on a worker (`relay::resume`).
    let gateways_own = |sampling: &openai::SamplingFields| match sampling.llmgw_resume {
        Some(_) => Err(ApiError::invalid(
            "llmgw_resume",
            "llmgw_resume is set by the gateway, not by clients",
        )),
        None => Ok(()),
    };
    match endpoint {
        Endpoint::Chat => {
            let req: ChatCompletionRequest = serde_json::from_slice(body).map_err(invalid)?;
            req.validate()?;
            gateways_own(&req.sampling)?;
            let max = req.max_completion_tokens.or(req.sampling.max_tokens);
            Ok(Parsed {
                stream: req.sampling.is_stream(),
                max_tokens: max_tokens(max, req.sampling.n),
                choices: req.sampling.n.unwrap_or(1),
                user: req.sampling.user,
                cache_salt: req.sampling.cache_salt,
                model: req.model,
                prompt: Prompt::Chat(req.messages),
            })
        }
        Endpoint::Completion => {
            let req: CompletionRequest = serde_json::from_slice(body).map_err(invalid)?;
            req.validate()?;
            gateways_own(&req.sampling)?;
            Ok(Parsed {
                stream: req.sampling.is_stream(),
                max_tokens: max_tokens(req.sampling.max_tokens, req.sampling.n),
                choices: req.sampling.n.unwrap_or(1),
                user: req.sampling.user,
                cache_salt: req.sampling.cache_salt,
                model: req.model,
                prompt: Prompt::Completion(req.prompt),
            })
        }
    }
}

fn max_tokens(max: Option<u32>, n: Option<u32>) -> Option<u64> {
    max.map(|m| u64::from(m) * u64::from(n.unwrap_or(1).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_a_400() {
        let e = parse(Endpoint::Chat, b"{not json").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse(Endpoint::Completion, br#"{"model":"m"}"#).unwrap_err();
        assert!(e.message.contains("prompt"), "{}", e.message);
    }

    #[test]
    fn a_client_cannot_resume_a_stream_itself() {
        let body = br#"{"model":"m","prompt":"x","stream":true,
            "llmgw_resume":{"token_ids":[1],"id":"c","created":1}}"#;
        let e = parse(Endpoint::Completion, body).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("llmgw_resume"));
    }

    #[test]
    fn learns_model_and_stream() {
        let p = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#,
        )
        .unwrap();
        assert_eq!(p.model, "m");
        assert!(p.stream);
    }
}
