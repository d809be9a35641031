//! An inference worker: an OpenAI-compatible HTTP server over a
//! continuous-batching engine with a paged, prefix-cached KV cache.
//!
//! A request goes: `server` (accept, route, drain) → `api` (parse, check,
//! `prompt` to tokens) → `engine` (its thread runs the `scheduler` over the
//! `kv_cache` and a compute backend such as `sim`) → `output` (detokenize,
//! stop strings) → `stream` or a JSON body, shaped by `respond`.

mod api;
pub mod config;
pub mod detokenize;
pub mod engine;
pub mod kv_cache;
mod logprobs;
pub mod model;
mod output;
mod publish;
pub mod register;
mod respond;
pub mod scheduler;
mod server;
pub mod sim;
mod stop;
mod stream;
mod unsupported;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    Backend, BusConfig, ConfigError, DefaultSampling, EngineConfig, EngineKind, EtcdConfig,
    SimConfig, WorkerConfig,
};

use api::App;
use engine::{BatchEngine, Engine, EngineError};
use prompt::{Tokenizer, TokenizerError};
use protocol::bus::{Bus, BusError};
use protocol::control::Registration;
use publish::Publisher;
use register::Registered;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running worker.
pub struct WorkerHandle {
    local_addr: SocketAddr,
    draining: Arc<AtomicBool>,
    shutdown: oneshot::Sender<Duration>,
    serving: JoinHandle<()>,
    registered: Option<Registered>,
}

/// Checks `config`, loads the tokenizer, starts the engine, binds, and returns
/// at once with the server running. Dropping the handle stops the server without grace.
pub async fn start(config: WorkerConfig) -> Result<WorkerHandle, WorkerError> {
    let bus = match &config.bus.nats_url {
        Some(url) => Some(Bus::nats(url).await?),
        None => None,
    };
    start_on_bus(config, bus).await
}

/// Like [`start`], publishing KV events and load on `bus` when given (the
/// embedded demo and benches pass an in-process bus).
pub async fn start_on_bus(
    config: WorkerConfig,
    bus: Option<Bus>,
) -> Result<WorkerHandle, WorkerError> {
    config.validate()?;
    let tokenizer = match (&config.engine.tokenizer_path, &config.engine.model_path) {
        (Some(path), _) | (None, Some(path)) => prompt::load(path)?,
        (None, None) => Tokenizer::builtin()?,
    };
    let defaults = default_sampling(&config.engine);
    let mut engine = BatchEngine::start(&config.engine, &tokenizer)?;
    let kv_events = engine.take_kv_events();
    let engine: Arc<dyn Engine> = Arc::new(engine);
    if let Some(bus) = bus {
        // Holds the engine weakly: the publisher ends when the server drops the engine.
        tokio::spawn(Publisher::new(bus, &config).run(Arc::downgrade(&engine), kv_events));
    }
    // Bound last, so a worker that cannot serve never accepts a connection.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| WorkerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| WorkerError::Bind {
        addr: config.listen,
        source,
    })?;
    tracing::info!(id = %config.id, model = %config.model, zone = %config.zone, addr = %local_addr, "worker listening");
    let registered = (!config.etcd.endpoints.is_empty()).then(|| {
        let info = engine.info();
        let url = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        Registered::spawn(
            &config.etcd,
            Registration {
                id: config.id.clone(),
                pool: config.pool.clone(),
                url,
                zone: config.zone.clone(),
                labels: config.labels.clone(),
                model: config.model.clone(),
                block_size: info.block_size,
                engine: format!("{}/{}", info.name, info.backend),
                started_at_ms: register::now_ms(),
                engine_kind: None,
                metrics_url: None,
                kv_events: None,
                kv_replay: None,
            },
        )
    });
    let draining = Arc::new(AtomicBool::new(false));
    let app = Arc::new(App {
        config,
        engine,
        tokenizer: Arc::new(tokenizer),
        defaults,
        draining: Arc::clone(&draining),
    });
    let (shutdown, signal) = oneshot::channel();
    let serving = tokio::spawn(server::serve(listener, app, signal));
    Ok(WorkerHandle {
        local_addr,
        draining,
        shutdown,
        serving,
        registered,
    })
}

/// The sampling of requests that leave it out: the model's recommendation,
/// else `engine.default_sampling`, else OpenAI's (the table first with
/// `over_model`). A recommendation that cannot be read, or a value of it out
/// of range, is left out with a warning rather than refusing the model.
fn default_sampling(engine: &EngineConfig) -> scheduler::Sampling {
    let model = match (engine.kind, &engine.model_path) {
        (EngineKind::Llama, Some(path)) => model::sampling_defaults(path).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the model's sampling recommendation");
            DefaultSampling::default()
        }),
        _ => DefaultSampling::default(),
    };
    for problem in model.problems("the model's sampling") {
        tracing::warn!(problem, "ignoring the model's sampling default");
    }
    let model = model.in_range();
    let table = engine.default_sampling;
    let (first, second, names) = if table.over_model {
        (table, model, ["engine.default_sampling", "model"])
    } else {
        (model, table, ["model", "engine.default_sampling"])
    };
    let chosen = first.or(second);
    let openai = scheduler::Sampling::default();
    let sampling = scheduler::Sampling {
        temperature: chosen.temperature.unwrap_or(openai.temperature),
        top_p: chosen.top_p.unwrap_or(openai.top_p),
        top_k: chosen.top_k.unwrap_or(openai.top_k),
        ..openai
    };
    let source = |in_first: bool, in_second: bool| match (in_first, in_second) {
        (true, _) => names[0],
        (false, true) => names[1],
        _ => "OpenAI's",
    };
    tracing::info!(
        temperature = sampling.temperature,
        temperature_from = source(first.temperature.is_some(), second.temperature.is_some()),
        top_p = sampling.top_p,
        top_p_from = source(first.top_p.is_some(), second.top_p.is_some()),
        top_k = sampling.top_k,
        top_k_from = source(first.top_k.is_some(), second.top_k.is_some()),
        "sampling defaults"
    );
    sampling
}

impl WorkerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Deregister (gateways stop sending new requests), then drain: `/health`
    /// turns 503 "draining", stop accepting, finish in-flight requests within
    /// `grace`, then stop.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(registered) = self.registered {
            registered.deregister().await;
        }
        self.draining.store(true, Ordering::SeqCst);
        // A send error means serving already ended; there is nothing to drain.
        let _ = self.shutdown.send(grace);
        if let Err(e) = self.serving.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}
