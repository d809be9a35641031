//! The OpenAI endpoints: each parses its request, checks it against the
//! served model and the engine's limits, submits it, and shapes the answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use protocol::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, Completion,
    CompletionChoice, CompletionRequest, ModelList, SamplingFields,
};
use protocol::resume::Resume;
use protocol::{ApiError, HealthReport};
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::WorkerConfig;
use crate::engine::{Engine, GenerateEvent, GenerateRequest};
use crate::logprobs;
use crate::output::{engine_gone, Finish, TextOutput};
use crate::respond::{self, Body};
use crate::scheduler::{FinishReason, Sampling, TokenLogprobs, TokenUsage};
use crate::stream::{self, Chunker, Endpoint};
use crate::unsupported;
use prompt::Tokenizer;

/// What every request handler shares.
pub struct App {
    pub config: WorkerConfig,
    pub engine: Arc<dyn Engine>,
    pub tokenizer: Arc<Tokenizer>,
    /// Sampling for what a request leaves out (see `default_sampling`).
    pub defaults: Sampling,
    /// Set when a drain begins; `/health` then answers 503.
    pub draining: Arc<AtomicBool>,
}

/// A request ready for the engine, with what its response needs.
struct Generation {
    endpoint: Endpoint,
    model: String,
    request: GenerateRequest,
    /// Choices to generate (`n`).
    choices: usize,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// The stream continues one that broke on another worker.
    resume: Option<Resume>,
}

/// How the gateway asked for the response, beyond the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extensions {
    /// Precede text frames with the token ids they came from.
    pub stream_tokens: bool,
}

pub async fn chat_completions(
    app: &App,
    body: Bytes,
    ext: Extensions,
) -> Result<Response<Body>, ApiError> {
    let request: ChatCompletionRequest = parse(&body)?;
    request.validate()?;
    unsupported::refuse(&body)?;
    app.check_model(&request.model)?;
    let prompt = prompt::chat_tokens(&request.messages, &app.tokenizer)?;
    let logprobs = (request.logprobs == Some(true)).then(|| request.top_logprobs.unwrap_or(0));
    let generation = app.generation(
        Endpoint::Chat,
        &request.model,
        prompt,
        request.max_tokens(),
        (&request.sampling, logprobs),
    )?;
    Ok(app.run(generation, ext).await)
}

pub async fn completions(
    app: &App,
    body: Bytes,
    ext: Extensions,
) -> Result<Response<Body>, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    request.validate()?;
    unsupported::refuse(&body)?;
    app.check_model(&request.model)?;
    let prompt = prompt::completion_tokens(request.prompt()?, &app.tokenizer)?;
    let max_tokens = request.sampling.max_tokens;
    let generation = app.generation(
        Endpoint::Completions,
        &request.model,
        prompt,
        max_tokens,
        (&request.sampling, request.logprobs),
    )?;
    Ok(app.run(generation, ext).await)
}

pub fn models(app: &App) -> Response<Body> {
    respond::json(
        StatusCode::OK,
        &ModelList::new([app.config.model.clone()], "system"),
    )
}

pub fn health(app: &App) -> Response<Body> {
    let draining = app.draining.load(Ordering::SeqCst);
    let serving = app.engine.serving();
    let info = app.engine.info();
    let report = HealthReport {
        status: match (serving, draining) {
            (false, _) => "failed",
            (true, true) => "draining",
            (true, false) => "ok",
        }
        .to_string(),
        worker_id: app.config.id.clone(),
        model: app.config.model.clone(),
        engine: info.name,
        backend: info.backend,
        block_size: info.block_size,
        load: app.engine.load(),
    };
    let status = if draining || !serving {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    respond::json(status, &report)
}

impl App {
    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.config.model {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }

    /// Fits the request into `max_model_len`: an explicit `max_tokens` that does
    /// not fit is refused, the default shrinks to fit. `logprobs`: how many
    /// alternatives to report with each token's log probability, if any.
    fn generation(
        &self,
        endpoint: Endpoint,
        model: &str,
        prompt: Vec<u32>,
        max_tokens: Option<u32>,
        (sampling, logprobs): (&SamplingFields, Option<u32>),
    ) -> Result<Generation, ApiError> {
        let limit = self.config.engine.max_model_len;
        let prompt_param = if endpoint == Endpoint::Chat {
            "messages"
        } else {
            "prompt"
        };
        if prompt.len() >= limit {
            return Err(ApiError::invalid(
                prompt_param,
                format!(
                    "the prompt is {} tokens, but this model's context length is {limit} tokens, \
                     leaving no room for a completion",
                    prompt.len()
                ),
            ));
        }
        let resumed = sampling
            .llmgw_resume
            .as_ref()
            .map_or(0, |r| r.token_ids.len());
        let vocab = self.tokenizer.vocab_size();
        if let Some(id) = sampling
            .llmgw_resume
            .iter()
            .flat_map(|r| &r.token_ids)
            .find(|&&id| id as usize >= vocab)
        {
            return Err(ApiError::invalid(
                "llmgw_resume",
                format!("token id {id} is outside this model's vocabulary of {vocab}"),
            ));
        }
        if prompt.len() + resumed >= limit {
            return Err(ApiError::invalid(
                "llmgw_resume",
                format!(
                    "the prompt and the {resumed} tokens to resume from fill this model's \
                     context length of {limit} tokens"
                ),
            ));
        }
        let room = limit - prompt.len();
        let max_tokens = match max_tokens.map(|n| n as usize) {
            Some(n) if n > room => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!(
                        "max_tokens ({n}) plus the prompt's {} tokens exceeds this model's context \
                         length of {limit} tokens",
                        prompt.len()
                    ),
                ))
            }
            Some(n) => n,
            None => self.config.engine.default_max_tokens.min(room),
        };
        let choices = sampling.n.unwrap_or(1) as usize;
        if choices > 1 && sampling.llmgw_resume.is_some() {
            return Err(ApiError::invalid(
                "llmgw_resume",
                "a stream of more than one choice cannot be resumed",
            ));
        }
        let defaults = &self.defaults;
        Ok(Generation {
            endpoint,
            model: model.to_string(),
            choices,
            request: GenerateRequest {
                prompt,
                resumed: sampling
                    .llmgw_resume
                    .as_ref()
                    .map(|r| r.token_ids.clone())
                    .unwrap_or_default(),
                max_tokens,
                seed: sampling.seed,
                sampling: Sampling {
                    temperature: sampling.temperature.unwrap_or(defaults.temperature),
                    top_p: sampling.top_p.unwrap_or(defaults.top_p),
                    top_k: sampling.top_k.unwrap_or(defaults.top_k),
                    presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
                    frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
                    logit_bias: self.logit_bias(sampling)?,
                    // Validated against MAX_TOP_LOGPROBS (20).
                    logprobs: logprobs.map(|n| n as u8),
                },
            },
            stops: sampling
                .stop
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            stream: sampling.is_stream(),
            include_usage: sampling.include_usage(),
            resume: sampling.llmgw_resume.clone(),
        })
    }

    /// `logit_bias` as token ids, each checked against the vocabulary.
    fn logit_bias(&self, sampling: &SamplingFields) -> Result<Arc<[(u32, f32)]>, ApiError> {
        let vocab = self.tokenizer.vocab_size();
        sampling
            .logit_bias
            .iter()
            .flatten()
            .map(|(token, &bias)| match token.parse::<u32>() {
                Ok(id) if (id as usize) < vocab => Ok((id, bias)),
                _ => Err(ApiError::invalid(
                    "logit_bias",
                    format!("token {token} is outside this model's vocabulary of {vocab}"),
                )),
            })
            .collect()
    }

    async fn run(&self, generation: Generation, ext: Extensions) -> Response<Body> {
        let prompt_tokens = generation.request.prompt.len();
        tracing::debug!(
            prompt_tokens,
            resumed = generation.request.resumed.len(),
            max_tokens = generation.request.max_tokens,
            choices = generation.choices,
            "generate"
        );
        let mut outputs = Vec::with_capacity(generation.choices);
        for _ in 0..generation.choices {
            let stops = generation.stops.clone();
            let mut output = TextOutput::new(Arc::clone(&self.tokenizer), stops, prompt_tokens);
            if let Err(e) = output.replay(&generation.request.resumed) {
                return respond::error(&e);
            }
            outputs.push(output);
        }
        let wants_logprobs = generation.request.sampling.logprobs.is_some();
        // A resumed stream's client already has the role chunk.
        let opening = generation.request.resumed.is_empty();
        let events = self.submit(generation.request, generation.choices);
        let (endpoint, model) = (generation.endpoint, generation.model);
        let (id, created) = match generation.resume {
            Some(resume) => (resume.id, resume.created),
            None => (
                match endpoint {
                    Endpoint::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
                    Endpoint::Completions => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
                },
                unix_now(),
            ),
        };
        if generation.stream {
            let chunker = Chunker {
                endpoint,
                id,
                created,
                model,
                include_usage: generation.include_usage,
                tokenizer: wants_logprobs.then(|| Arc::clone(&self.tokenizer)),
            };
            let choices = events.into_iter().zip(outputs).collect();
            return respond::sse(stream::body(choices, chunker, (opening, ext.stream_tokens)));
        }
        let answers = futures_util::future::join_all(
            events
                .into_iter()
                .zip(outputs)
                .map(|(events, output)| collect(events, output)),
        )
        .await;
        let answers = match answers.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(answers) => answers,
            Err(e) => return respond::error(&e),
        };
        let usage = stream::total_usage(answers.iter().map(|a| a.finish.usage));
        let tokenizer = &self.tokenizer;
        match endpoint {
            Endpoint::Chat => {
                let choices = answers.into_iter().enumerate().map(|(i, a)| ChatChoice {
                    index: i as u32,
                    message: AssistantMessage {
                        role: "assistant".to_string(),
                        content: a.text,
                    },
                    finish_reason: Some(a.finish.reason.as_str().to_string()),
                    logprobs: wants_logprobs.then(|| logprobs::chat(tokenizer, &a.logprobs)),
                });
                respond::json(
                    StatusCode::OK,
                    &ChatCompletion {
                        id,
                        object: "chat.completion".to_string(),
                        created,
                        model,
                        choices: choices.collect(),
                        usage,
                    },
                )
            }
            Endpoint::Completions => {
                let choices = answers.into_iter().enumerate().map(|(i, a)| {
                    let offsets = &mut logprobs::TextOffsets::default();
                    CompletionChoice {
                        index: i as u32,
                        finish_reason: Some(a.finish.reason.as_str().to_string()),
                        logprobs: wants_logprobs
                            .then(|| logprobs::completion(tokenizer, &a.logprobs, offsets)),
                        text: a.text,
                    }
                });
                respond::json(
                    StatusCode::OK,
                    &Completion {
                        id,
                        object: "text_completion".to_string(),
                        created,
                        model,
                        choices: choices.collect(),
                        usage: Some(Some(usage)),
                    },
                )
            }
        }
    }
}

impl App {
    /// Starts generating `choices` choices, unless a resumed stream (one
    /// choice) already holds all its tokens (it broke between its last token
    /// and its finish): then it finishes at once, as the engine would have.
    fn submit(
        &self,
        request: GenerateRequest,
        choices: usize,
    ) -> Vec<UnboundedReceiver<GenerateEvent>> {
        if request.resumed.len() < request.max_tokens {
            return self.engine.submit_choices(request, choices);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let usage = TokenUsage {
            prompt_tokens: request.prompt.len(),
            completion_tokens: request.resumed.len(),
            cached_tokens: 0,
        };
        // The receiver is in hand, so the send cannot fail.
        let _ = tx.send(GenerateEvent::Finished {
            reason: FinishReason::Length,
            usage,
        });
        vec![rx]
    }
}

/// One whole choice.
struct Answer {
    text: String,
    logprobs: Vec<(u32, TokenLogprobs)>,
    finish: Finish,
}

/// The whole of one choice. Returning drops `events`, cancelling the sequence
/// if a stop string ended it before the engine did.
async fn collect(
    mut events: UnboundedReceiver<GenerateEvent>,
    mut output: TextOutput,
) -> Result<Answer, ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        let piece = output.on_event(event)?;
        text.push_str(&piece.text);
        logprobs.extend(piece.logprobs);
        if let Some(finish) = piece.finish {
            return Ok(Answer {
                text,
                logprobs,
                finish,
            });
        }
    }
    Err(engine_gone())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| respond::parse_error(&e))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use protocol::openai::Usage;

    use super::*;
    use crate::engine::BatchEngine;

    fn sim_app() -> App {
        let config = WorkerConfig::sim("w1", "127.0.0.1:0".parse().unwrap(), "m", "z");
        let tokenizer = Tokenizer::builtin().unwrap();
        let engine = BatchEngine::start(&config.engine, &tokenizer).unwrap();
        App {
            config,
            engine: Arc::new(engine),
            tokenizer: Arc::new(tokenizer),
            defaults: Sampling::default(),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    #[tokio::test]
    async fn health_reports_draining_with_503() {
        let app = sim_app();
        for (draining, status, word) in [(false, 200, "ok"), (true, 503, "draining")] {
            app.draining.store(draining, Ordering::SeqCst);
            let response = health(&app);
            assert_eq!(response.status().as_u16(), status);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let report: HealthReport = serde_json::from_slice(&body).unwrap();
            assert_eq!(report.status, word);
            assert_eq!(
                (
                    report.worker_id.as_str(),
                    report.engine.as_str(),
                    report.block_size
                ),
                ("w1", "sim", 16)
            );
            assert_eq!(report.backend, "sim");
            assert_eq!(report.load.kv_blocks_total, 8192);
        }
    }

    /// Text, token ids (from the comments), finish reason and usage of a stream.
    async fn stream_of(app: &App, body: serde_json::Value) -> (String, Vec<u32>, String, Usage) {
        let ext = Extensions {
            stream_tokens: true,
        };
        let response = chat_completions(app, body.to_string().into(), ext)
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let (mut text, mut ids, mut finish, mut usage) = (String::new(), Vec::new(), None, None);
        for line in String::from_utf8(bytes.to_vec()).unwrap().lines() {
            if let Some(more) = protocol::resume::parse_tokens_comment(line.as_bytes()) {
                ids.extend(more);
            }
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
            assert!(chunk.get("error").is_none(), "{chunk}");
            if let Some(choice) = chunk["choices"].get(0) {
                assert!(choice["delta"].get("role").is_none() || text.is_empty());
                text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish = Some(reason.to_string());
                }
            }
            if chunk["usage"].is_object() {
                usage = Some(serde_json::from_value(chunk["usage"].clone()).unwrap());
            }
        }
        (text, ids, finish.unwrap(), usage.unwrap())
    }

    #[tokio::test]
    async fn a_resumed_stream_is_the_rest_of_the_same_answer() {
        let app = sim_app();
        let mut body = serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "tell me"}],
            "max_tokens": 24, "temperature": 0.9, "stream": true,
            "stream_options": {"include_usage": true},
        });
        let (whole, ids, finish, usage) = stream_of(&app, body.clone()).await;
        assert_eq!((ids.len(), finish.as_str()), (24, "length"));
        for k in [1, 10, 23, 24] {
            body["llmgw_resume"] = serde_json::json!({
                "token_ids": ids[..k], "id": "chatcmpl-first", "created": 7,
            });
            let (rest, rest_ids, rest_finish, rest_usage) = stream_of(&app, body.clone()).await;
            let sent = app.tokenizer.decode(&ids[..k]).unwrap();
            assert_eq!(format!("{sent}{rest}"), whole, "resumed after {k} tokens");
            assert_eq!(rest_ids, ids[k..]);
            assert_eq!(rest_finish, finish);
            assert_eq!(
                (rest_usage.prompt_tokens, rest_usage.completion_tokens),
                (usage.prompt_tokens, usage.completion_tokens)
            );
        }
        // A resumed stream keeps the identity the client has.
        let ext = Extensions::default();
        let response = chat_completions(&app, body.to_string().into(), ext)
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains(r#""id":"chatcmpl-first","#) && text.contains(r#""created":7,"#));
        assert!(!text.contains(": tokens") && !text.contains("assistant"));
    }
}
