//! Streaming responses: engine events become OpenAI SSE chunks as they
//! arrive, never buffered. Each choice of a request streams on its own (its
//! chunks carry its `index`), interleaved as their tokens come; usage and
//! `[DONE]` follow the last choice's finish. Dropping the body (the client
//! left) drops every engine receiver, which cancels the sequences.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use protocol::openai::{
    sse_event, ChatCompletionChunk, ChunkChoice, Completion, CompletionChoice, Delta, Usage,
    SSE_DONE,
};
use protocol::resume::tokens_comment;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::GenerateEvent;
use crate::logprobs::{self, TextOffsets};
use crate::output::{engine_gone, Finish, Piece, TextOutput};
use crate::respond::{sse_error, Body};
use crate::scheduler::FinishReason;
use prompt::Tokenizer;

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
    /// Set when the request asked for log probabilities, to spell their tokens.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

impl Chunker {
    /// Chat streams open each choice with the assistant's role, sent with its first content.
    fn opening(&self, index: u32) -> Option<String> {
        let delta = Delta {
            role: Some("assistant".to_string()),
            content: Some(String::new()),
        };
        (self.endpoint == Endpoint::Chat).then(|| self.chunk(index, delta, None, None))
    }

    /// The chunk of `piece`'s text and log probabilities, and the finish
    /// chunk if it finishes. `offsets`: where the choice's text so far ends.
    fn piece(&self, index: u32, piece: &Piece, offsets: &mut TextOffsets) -> String {
        let mut data = String::new();
        let logprobs = self
            .tokenizer
            .as_deref()
            .filter(|_| !piece.logprobs.is_empty());
        if !piece.text.is_empty() || logprobs.is_some() {
            let logprobs = logprobs.map(|tokenizer| match self.endpoint {
                Endpoint::Chat => logprobs::chat(tokenizer, &piece.logprobs),
                Endpoint::Completions => logprobs::completion(tokenizer, &piece.logprobs, offsets),
            });
            let delta = Delta {
                role: None,
                content: Some(piece.text.clone()),
            };
            data.push_str(&self.chunk(index, delta, None, logprobs));
        }
        if let Some(finish) = &piece.finish {
            data.push_str(&self.chunk(index, Delta::default(), Some(finish.reason), None));
        }
        data
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

    fn chunk(
        &self,
        index: u32,
        delta: Delta,
        finish: Option<FinishReason>,
        logprobs: Option<Box<serde_json::value::RawValue>>,
    ) -> String {
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
                    index,
                    delta,
                    finish_reason,
                    logprobs,
                }],
                usage,
            }),
            Endpoint::Completions => sse_event(&Completion {
                id: self.id.clone(),
                object: "text_completion".to_string(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index,
                    text: delta.content.unwrap_or_default(),
                    finish_reason,
                    logprobs,
                }],
                usage,
            }),
        }
    }
}

/// The usage of a request's choices: the prompt once, every choice's completion.
pub fn total_usage(choices: impl IntoIterator<Item = Usage>) -> Usage {
    let mut choices = choices.into_iter();
    let first = choices.next().unwrap_or_default();
    let completion = choices.fold(first.completion_tokens, |n, u| n + u.completion_tokens);
    let cached = first.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
    Usage::new(first.prompt_tokens, completion, cached)
}

/// What one choice's stream yields.
enum Part {
    /// SSE events to send as they are.
    Data(String),
    /// The choice finished (its finish chunk was in the last `Data`).
    Done(u32, Finish),
    /// An error event; the response ends with it.
    Failed(String),
}

/// One choice's state.
struct Choice {
    index: u32,
    events: UnboundedReceiver<GenerateEvent>,
    output: TextOutput,
    opening: Option<String>,
    /// Token ids not yet named in a frame, when the gateway asked for them
    /// (see `protocol::resume`).
    tokens: Option<Vec<u32>>,
    /// Where the text sent so far ends (completions' `text_offset`).
    offsets: TextOffsets,
}

/// The SSE body of one generation, each receiver with its output being one
/// choice. Each frame is sent as soon as an event releases text; the stream
/// ends after `[DONE]` (or an error event). `opening`: whether the role chunk
/// opens it (not when it resumes a stream whose client has it);
/// `stream_tokens`: whether frames name their tokens.
pub fn body(
    choices: Vec<(UnboundedReceiver<GenerateEvent>, TextOutput)>,
    chunker: Chunker,
    (opening, stream_tokens): (bool, bool),
) -> Body {
    let chunker = Arc::new(chunker);
    let n = choices.len();
    let parts = choices
        .into_iter()
        .enumerate()
        .map(|(i, (events, output))| {
            let choice = Choice {
                index: i as u32,
                events,
                output,
                opening: if opening {
                    chunker.opening(i as u32)
                } else {
                    None
                },
                tokens: stream_tokens.then(Vec::new),
                offsets: TextOffsets::default(),
            };
            choice_parts(choice, Arc::clone(&chunker))
        });
    let merged = stream::select_all(parts);
    let finished = vec![None; n];
    let frames = stream::unfold(Some((merged, finished)), move |state| {
        let chunker = Arc::clone(&chunker);
        async move {
            let (mut merged, mut finished) = state?;
            loop {
                match merged.next().await {
                    Some(Part::Data(data)) => return Some((frame(data), Some((merged, finished)))),
                    Some(Part::Failed(data)) => return Some((frame(data), None)),
                    Some(Part::Done(index, finish)) => {
                        finished[index as usize] = Some(finish.usage);
                        if finished.iter().all(Option::is_some) {
                            let mut data = String::new();
                            if chunker.include_usage {
                                data.push_str(
                                    &chunker.usage(total_usage(finished.into_iter().flatten())),
                                );
                            }
                            data.push_str(SSE_DONE);
                            return Some((frame(data), None));
                        }
                    }
                    None => return Some((frame(sse_error(&engine_gone())), None)),
                }
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Where one choice's stream is.
enum ChoiceState {
    Running(Box<Choice>),
    /// Its last data is out; `Done` follows.
    Finished(u32, Finish),
    Over,
}

/// One choice's events as parts: data as text is released, then its finish.
/// The choice (and its receiver) is dropped as its finish goes out: after a
/// stop string that is what cancels the sequence.
fn choice_parts(choice: Choice, chunker: Arc<Chunker>) -> BoxStream<'static, Part> {
    stream::unfold(ChoiceState::Running(Box::new(choice)), move |state| {
        let chunker = Arc::clone(&chunker);
        async move {
            let mut c = match state {
                ChoiceState::Running(c) => c,
                ChoiceState::Finished(index, finish) => {
                    return Some((Part::Done(index, finish), ChoiceState::Over))
                }
                ChoiceState::Over => return None,
            };
            loop {
                let Some(event) = c.events.recv().await else {
                    return Some((Part::Failed(sse_error(&engine_gone())), ChoiceState::Over));
                };
                if let (Some(tokens), GenerateEvent::Token { id, .. }) = (&mut c.tokens, &event) {
                    tokens.push(*id);
                }
                let piece = match c.output.on_event(event) {
                    Ok(piece) => piece,
                    Err(e) => return Some((Part::Failed(sse_error(&e)), ChoiceState::Over)),
                };
                if piece.text.is_empty() && piece.finish.is_none() {
                    continue;
                }
                // The role chunk rides with the first token, so the first byte a
                // client (or the gateway, which fails over until then) sees means
                // prefill succeeded.
                let mut data = c.opening.take().unwrap_or_default();
                // In the event that carries their text (or the finish), so a
                // gateway that has the ids has what the client was sent.
                if let Some(ids) = c.tokens.as_mut().filter(|ids| !ids.is_empty()) {
                    data.push_str(&tokens_comment(ids));
                    ids.clear();
                }
                data.push_str(&chunker.piece(c.index, &piece, &mut c.offsets));
                let next = match piece.finish {
                    Some(finish) => ChoiceState::Finished(c.index, finish),
                    None => ChoiceState::Running(c),
                };
                return Some((Part::Data(data), next));
            }
        }
    })
    .boxed()
}

fn frame(data: String) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(data)))
}
