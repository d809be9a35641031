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
use protocol::{ApiError, HealthReport};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::WorkerConfig;
use crate::engine::{Engine, GenerateEvent, GenerateRequest};
use crate::output::{engine_gone, Finish, TextOutput};
use crate::respond::{self, Body};
use crate::scheduler::Sampling;
use crate::stream::{self, Chunker, Endpoint};
use prompt::Tokenizer;

/// What every request handler shares.
pub struct App {
    pub config: WorkerConfig,
    pub engine: Arc<dyn Engine>,
    pub tokenizer: Arc<Tokenizer>,
    /// Set when a drain begins; `/health` then answers 503.
    pub draining: Arc<AtomicBool>,
}

/// A request ready for the engine, with what its response needs.
struct Generation {
    endpoint: Endpoint,
    model: String,
    request: GenerateRequest,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

pub async fn chat_completions(app: &App, body: Bytes) -> Result<Response<Body>, ApiError> {
    let request: ChatCompletionRequest = parse(&body)?;
    request.validate()?;
    app.check_model(&request.model)?;
    let prompt = prompt::chat_tokens(&request.messages, &app.tokenizer)?;
    let generation = app.generation(
        Endpoint::Chat,
        &request.model,
        prompt,
        request.max_tokens(),
        &request.sampling,
    )?;
    Ok(app.run(generation).await)
}

pub async fn completions(app: &App, body: Bytes) -> Result<Response<Body>, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    request.validate()?;
    app.check_model(&request.model)?;
    let prompt = prompt::completion_tokens(request.prompt()?, &app.tokenizer)?;
    let max_tokens = request.sampling.max_tokens;
    let generation = app.generation(
        Endpoint::Completions,
        &request.model,
        prompt,
        max_tokens,
        &request.sampling,
    )?;
    Ok(app.run(generation).await)
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
    /// not fit is refused, the default shrinks to fit.
    fn generation(
        &self,
        endpoint: Endpoint,
        model: &str,
        prompt: Vec<u32>,
        max_tokens: Option<u32>,
        sampling: &SamplingFields,
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
        let defaults = Sampling::default();
        Ok(Generation {
            endpoint,
            model: model.to_string(),
            request: GenerateRequest {
                prompt,
                max_tokens,
                seed: sampling.seed,
                sampling: Sampling {
                    temperature: sampling.temperature.unwrap_or(defaults.temperature),
                    top_p: sampling.top_p.unwrap_or(defaults.top_p),
                    top_k: sampling.top_k.unwrap_or(defaults.top_k),
                },
            },
            stops: sampling
                .stop
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            stream: sampling.is_stream(),
            include_usage: sampling.include_usage(),
        })
    }

    async fn run(&self, generation: Generation) -> Response<Body> {
        let prompt_tokens = generation.request.prompt.len();
        tracing::debug!(
            prompt_tokens,
            max_tokens = generation.request.max_tokens,
            "generate"
        );
        let events = self.engine.submit(generation.request);
        let output = TextOutput::new(Arc::clone(&self.tokenizer), generation.stops, prompt_tokens);
        let (endpoint, model) = (generation.endpoint, generation.model);
        let created = unix_now();
        let id = match endpoint {
            Endpoint::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            Endpoint::Completions => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        };
        if generation.stream {
            let chunker = Chunker {
                endpoint,
                id,
                created,
                model,
                include_usage: generation.include_usage,
            };
            return respond::sse(stream::body(events, output, chunker));
        }
        let (text, finish) = match collect(events, output).await {
            Ok(done) => done,
            Err(e) => return respond::error(&e),
        };
        let finish_reason = Some(finish.reason.as_str().to_string());
        match endpoint {
            Endpoint::Chat => respond::json(
                StatusCode::OK,
                &ChatCompletion {
                    id,
                    object: "chat.completion".to_string(),
                    created,
                    model,
                    choices: vec![ChatChoice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant".to_string(),
                            content: text,
                        },
                        finish_reason,
                        logprobs: None,
                    }],
                    usage: finish.usage,
                },
            ),
            Endpoint::Completions => respond::json(
                StatusCode::OK,
                &Completion {
                    id,
                    object: "text_completion".to_string(),
                    created,
                    model,
                    choices: vec![CompletionChoice {
                        index: 0,
                        text,
                        finish_reason,
                        logprobs: None,
                    }],
                    usage: Some(Some(finish.usage)),
                },
            ),
        }
    }
}

/// The whole completion. Returning drops `events`, cancelling the sequence if a
/// stop string ended it before the engine did.
async fn collect(
    mut events: UnboundedReceiver<GenerateEvent>,
    mut output: TextOutput,
) -> Result<(String, Finish), ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        let piece = output.on_event(event)?;
        text.push_str(&piece.text);
        if let Some(finish) = piece.finish {
            return Ok((text, finish));
        }
    }
    Err(engine_gone())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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

    use super::*;
    use crate::engine::BatchEngine;

    #[tokio::test]
    async fn health_reports_draining_with_503() {
        let config = WorkerConfig::sim("w1", "127.0.0.1:0".parse().unwrap(), "m", "z");
        let tokenizer = Tokenizer::builtin().unwrap();
        let engine = BatchEngine::start(&config.engine, &tokenizer).unwrap();
        let app = App {
            config,
            engine: Arc::new(engine),
            tokenizer: Arc::new(tokenizer),
            draining: Arc::new(AtomicBool::new(false)),
        };
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
}
