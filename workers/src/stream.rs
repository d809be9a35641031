//! Streaming responses: engine events become OpenAI SSE chunks as they
//! arrive, never buffered. Dropping the body (the client left) drops the
//! engine receiver, which cancels the sequence.

use std::convert::Infallible;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use protocol::openai::{
    sse_event, ChatCompletionChunk, ChunkChoice, Completion, CompletionChoice, Delta, Usage,
    SSE_DONE,
};
use protocol::resume::tokens_comment;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::GenerateEvent;
use crate::output::{engine_gone, TextOutput};
use crate::respond::{sse_error, Body};
use crate::scheduler::FinishReason;

/// Which OpenAI endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Builds one stream's chunks; every chunk of a stream shares its id and timestamp.
pub struct Chunker {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl Chunker {
    /// Chat streams open with the assistant's role, sent with the first content.
    fn opening(&self) -> Option<String> {
        let delta = Delta {
            role: Some("assistant".to_string()),
            content: Some(String::new()),
        };
        (self.endpoint == Endpoint::Chat).then(|| self.chunk(delta, None))
    }

    fn text(&self, text: String) -> String {
        self.chunk(
            Delta {
                role: None,
                content: Some(text),
            },
            None,
        )
    }

    fn finish(&self, reason: FinishReason) -> String {
        self.chunk(Delta::default(), Some(reason))
    }

    /// The last chunk when usage was asked for: no choices, just the usage.
    fn usage(&self, usage: Usage) -> String {
        match self.endpoint {
            Endpoint::Chat => sse_event(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".to_string(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
            Endpoint::Completions => sse_event(&Completion {
                id: self.id.clone(),
                object: "text_completion".to_string(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<FinishReason>) -> String {
        // With usage requested, every chunk but the last carries `"usage": null`.
        let usage = self.include_usage.then_some(None);
        let finish_reason = finish.map(|r| r.as_str().to_string());
        match self.endpoint {
            Endpoint::Chat => sse_event(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".to_string(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason,
                    logprobs: None,
                }],
                usage,
            }),
            Endpoint::Completions => sse_event(&Completion {
                id: self.id.clone(),
                object: "text_completion".to_string(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text: delta.content.unwrap_or_default(),
                    finish_reason,
                    logprobs: None,
                }],
                usage,
            }),
        }
    }
}

struct State {
    events: UnboundedReceiver<GenerateEvent>,
    output: TextOutput,
    chunker: Chunker,
    opening: Option<String>,
    /// Token ids not yet named in a frame, when the gateway asked for them
    /// (see `protocol::resume`).
    tokens: Option<Vec<u32>>,
}

/// The SSE body of one generation. Each frame is sent as soon as an event
/// releases text; the stream ends after `[DONE]` (or an error event).
/// `opening`: whether the role chunk opens it (not when it resumes a stream
/// whose client has it); `stream_tokens`: whether frames name their tokens.
pub fn body(
    events: UnboundedReceiver<GenerateEvent>,
    output: TextOutput,
    chunker: Chunker,
    (opening, stream_tokens): (bool, bool),
) -> Body {
    let opening = if opening { chunker.opening() } else { None };
    let state = State {
        events,
        output,
        chunker,
        opening,
        tokens: stream_tokens.then(Vec::new),
    };
    let frames = futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            let Some(event) = state.events.recv().await else {
                return Some((frame(sse_error(&engine_gone())), None));
            };
            if let (Some(tokens), GenerateEvent::Token { id }) = (&mut state.tokens, &event) {
                tokens.push(*id);
            }
            let piece = match state.output.on_event(event) {
                Ok(piece) => piece,
                Err(e) => return Some((frame(sse_error(&e)), None)),
            };
            // The role chunk rides with the first token, so the first byte a
            // client (or the gateway, which fails over until then) sees means
            // prefill succeeded.
            let mut data = if piece.text.is_empty() && piece.finish.is_none() {
                String::new()
            } else {
                state.opening.take().unwrap_or_default()
            };
            if !data.is_empty() || piece.finish.is_some() || !piece.text.is_empty() {
                // In the event that carries their text (or the finish), so
                // a gateway that has the ids has what the client was sent.
                if let Some(ids) = state.tokens.as_mut().filter(|ids| !ids.is_empty()) {
                    data.push_str(&tokens_comment(ids));
                    ids.clear();
                }
            }
            if !piece.text.is_empty() {
                data.push_str(&state.chunker.text(piece.text));
            }
            if let Some(finish) = piece.finish {
                data.push_str(&state.chunker.finish(finish.reason));
                if state.chunker.include_usage {
                    data.push_str(&state.chunker.usage(finish.usage));
                }
                data.push_str(SSE_DONE);
                // Dropping the state here drops the receiver: after a stop string
                // that is what cancels the sequence.
                return Some((frame(data), None));
            }
            if !data.is_empty() {
                return Some((frame(data), Some(state)));
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

fn frame(data: String) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(data)))
}
