//! The engine the server talks to: requests in, token events out. One OS
//! thread owns the scheduler and the compute, so a step never waits on the
//! async runtime and the runtime never waits on a step.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::blocks::next_block_hash;
use protocol::{KvEvent, LoadReport};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::{EngineConfig, EngineKind};
use crate::kv_cache::{KvCache, SeqId};
use crate::model::{load_compute, ModelError};
use crate::scheduler::{
    Compute, FinishReason, NewSequence, Output, Sampling, Scheduler, SchedulerConfig,
    TokenLogprobs, TokenUsage,
};
use crate::sim::SimCompute;
use prompt::{Tokenizer, TokenizerError};

/// A generation request, already tokenized and checked against the engine's limits.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Tokens of this answer another worker generated before it broke; they
    /// count towards `max_tokens` and are not sent again.
    pub resumed: Vec<u32>,
    pub max_tokens: usize,
    /// Sampling seed; the prompt's hash when the client gives none.
    pub seed: Option<u64>,
    pub sampling: Sampling,
}

/// What the engine reports about one choice of a request, in order:
/// `Admitted`, `Token`s, `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// The choice started running; `cached_tokens` of its prompt came from the prefix cache.
    Admitted { cached_tokens: usize },
    Token {
        id: u32,
        /// When the request's sampling asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        usage: TokenUsage,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// Reported in `/health`, e.g. `sim`.
    pub name: String,
    /// Where it computes, reported in `/health` and registrations: `cpu`,
    /// `cuda`, or `sim` for the simulated engine.
    pub backend: String,
    pub block_size: usize,
}

/// An inference engine as the HTTP server sees it.
pub trait Engine: Send + Sync + 'static {
    /// Starts `n` choices of a request, sampled independently (the first
    /// with the request's seed) over one computation of the prompt: one
    /// receiver per choice. Dropping a receiver cancels that choice and frees
    /// its KV blocks.
    fn submit_choices(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Vec<UnboundedReceiver<GenerateEvent>>;

    /// Starts a request of one choice.
    fn submit(&self, request: GenerateRequest) -> UnboundedReceiver<GenerateEvent> {
        self.submit_choices(request, 1)
            .pop()
            .expect("one receiver per choice")
    }

    fn load(&self) -> LoadReport;
    fn info(&self) -> EngineInfo;
    /// False once the engine can serve no more (its thread died, e.g. a
    /// compute backend's error): `/health` then says so, and gateways eject
    /// the worker instead of sending it requests that end unanswered.
    fn serving(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot prepare the engine's tokens")]
    Tokenizer(#[from] TokenizerError),
    #[error("cannot load the model")]
    Model(#[from] ModelError),
    #[error("cannot start the engine thread")]
    Thread(#[source] std::io::Error),
}

struct Submission {
    request: GenerateRequest,
    /// One per choice.
    events: Vec<UnboundedSender<GenerateEvent>>,
}

/// A continuous-batching engine on its own thread. Dropping it lets the thread
/// finish the sequences still listened to, then joins it.
pub struct BatchEngine {
    submissions: Option<Sender<Submission>>,
    kv_events: Option<UnboundedReceiver<Vec<KvEvent>>>,
    load: Arc<Mutex<LoadReport>>,
    info: EngineInfo,
    thread: Option<JoinHandle<()>>,
}

impl BatchEngine {
    /// Builds the configured engine kind and starts its thread.
    pub fn start(config: &EngineConfig, tokenizer: &Tokenizer) -> Result<Self, EngineError> {
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_running: config.max_running,
                max_prefill_tokens_per_step: config.max_prefill_tokens_per_step,
                max_model_len: config.max_model_len,
                eos_token: tokenizer.eos_token(),
            },
            KvCache::new(config.num_blocks, config.block_size),
        );
        let (name, backend, compute): (&str, &str, Box<dyn Compute + Send>) = match config.kind {
            EngineKind::Sim => (
                "sim",
                "sim",
                Box::new(SimCompute::new(config.sim.clone(), tokenizer)?),
            ),
            EngineKind::Llama => {
                let path = config
                    .model_path
                    .as_deref()
                    .expect("validated: llama has a model");
                let compute =
                    load_compute(path, config.backend, config.num_blocks, config.block_size)?;
                ("llama", config.backend.as_str(), compute)
            }
        };
        let info = EngineInfo {
            name: name.to_string(),
            backend: backend.to_string(),
            block_size: config.block_size,
        };
        BatchEngine::spawn(info, scheduler, compute)
    }

    fn spawn(
        info: EngineInfo,
        scheduler: Scheduler,
        compute: Box<dyn Compute + Send>,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::channel();
        let (kv_tx, kv_rx) = unbounded_channel();
        let load = Arc::new(Mutex::new(scheduler.load()));
        let engine_loop = EngineLoop {
            kv_events: kv_tx,
            decode_rate: DecodeRate::new(),
            scheduler,
            compute,
            streams: HashMap::new(),
            next_id: 0,
            load: Arc::clone(&load),
        };
        let thread = std::thread::Builder::new()
            .name(format!("engine-{}", info.name))
            .spawn(move || engine_loop.run(rx))
            .map_err(EngineError::Thread)?;
        Ok(BatchEngine {
            submissions: Some(tx),
            kv_events: Some(kv_rx),
            load,
            info,
            thread: Some(thread),
        })
    }
}

impl BatchEngine {
    /// The KV cache's events, one batch per engine step that changed the cache.
    /// Whoever takes them must keep reading (or drop the receiver, which
    /// discards them); left untaken they are discarded too.
    pub fn take_kv_events(&mut self) -> UnboundedReceiver<Vec<KvEvent>> {
        self.kv_events
            .take()
            .unwrap_or_else(|| unbounded_channel().1)
    }
}

impl Engine for BatchEngine {
    fn submit_choices(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Vec<UnboundedReceiver<GenerateEvent>> {
        let (events, receivers) = (0..n.max(1)).map(|_| unbounded_channel()).unzip();
        if let Some(submissions) = &self.submissions {
            // If the thread is gone the submission, and with it `events`, is dropped:
            // the caller sees its streams end without `Finished`.
            let _ = submissions.send(Submission { request, events });
        }
        receivers
    }

    fn load(&self) -> LoadReport {
        *self.load.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn serving(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for BatchEngine {
    fn drop(&mut self) {
        // Closing the channel is the thread's signal to stop.
        self.submissions.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

/// The engine thread's state.
struct EngineLoop {
    scheduler: Scheduler,
    compute: Box<dyn Compute + Send>,
    /// Where each running or waiting sequence's events go.
    streams: HashMap<SeqId, UnboundedSender<GenerateEvent>>,
    next_id: u64,
    load: Arc<Mutex<LoadReport>>,
    kv_events: UnboundedSender<Vec<KvEvent>>,
    decode_rate: DecodeRate,
}

/// Tokens generated per second, over windows of about a second.
struct DecodeRate {
    since: Instant,
    tokens: u64,
    per_s: f64,
}

impl DecodeRate {
    const WINDOW: Duration = Duration::from_secs(1);

    fn new() -> DecodeRate {
        DecodeRate {
            since: Instant::now(),
            tokens: 0,
            per_s: 0.0,
        }
    }

    fn record(&mut self, tokens: u64) -> f64 {
        self.tokens += tokens;
        let elapsed = self.since.elapsed();
        if elapsed >= Self::WINDOW {
            self.per_s = self.tokens as f64 / elapsed.as_secs_f64();
            self.tokens = 0;
            self.since = Instant::now();
        }
        self.per_s
    }
}

impl EngineLoop {
    /// Sleeps while idle; otherwise takes new requests, drops abandoned ones,
    /// runs one step, and delivers its tokens. Ends once the handle is gone and
    /// no sequence is left.
    fn run(mut self, submissions: Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.scheduler.is_idle() {
                if !open {
                    return;
                }
                match submissions.recv() {
                    Ok(s) => self.add(s),
                    Err(_) => return,
                }
            }
            while open {
                match submissions.try_recv() {
                    Ok(s) => self.add(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_abandoned();
            let outputs = self.scheduler.step(self.compute.as_mut());
            let tokens = outputs
                .iter()
                .filter(|o| matches!(o, Output::Token { .. }))
                .count();
            let mut load = self.scheduler.load();
            load.decode_tokens_per_s = self.decode_rate.record(tokens as u64);
            // Before delivering, so a client that saw a token sees its effect on the load.
            *self.load.lock().unwrap_or_else(PoisonError::into_inner) = load;
            self.deliver(outputs);
            let kv_events = self.scheduler.drain_kv_events();
            if !kv_events.is_empty() {
                // Fails only when nobody listens, and then the events have no use.
                let _ = self.kv_events.send(kv_events);
            }
        }
    }

    fn add(&mut self, submission: Submission) {
        let Submission { request, events } = submission;
        let seed = request
            .seed
            .unwrap_or_else(|| next_block_hash(None, &request.prompt).0);
        let first = SeqId(self.next_id);
        for (i, events) in events.into_iter().enumerate() {
            let id = SeqId(self.next_id);
            self.next_id += 1;
            self.scheduler.add(NewSequence {
                id,
                prompt: request.prompt.clone(),
                resumed: request.resumed.clone(),
                max_tokens: request.max_tokens,
                // Choice i's own stream of draws; choice 0's is the request's.
                seed: seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                sampling: request.sampling.clone(),
                after: (i > 0).then_some(first),
            });
            self.streams.insert(id, events);
        }
    }

    /// A closed stream means the client left or has all it wants: free its blocks now.
    fn drop_abandoned(&mut self) {
        let scheduler = &mut self.scheduler;
        self.streams.retain(|&id, events| {
            let listening = !events.is_closed();
            if !listening {
                scheduler.cancel(id);
            }
            listening
        });
    }

    fn deliver(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            let (seq, event) = match output {
                Output::Admitted { seq, cached_tokens } => {
                    (seq, GenerateEvent::Admitted { cached_tokens })
                }
                Output::Token { seq, id, logprobs } => (seq, GenerateEvent::Token { id, logprobs }),
                Output::Finished { seq, reason, usage } => {
                    (seq, GenerateEvent::Finished { reason, usage })
                }
            };
            let finished = matches!(event, GenerateEvent::Finished { .. });
            if let Some(events) = self.streams.get(&seq) {
                // A failed send is a stream closed since `drop_abandoned`; the next step cancels it.
                let _ = events.send(event);
            }
            if finished {
                self.streams.remove(&seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    fn engine(num_blocks: usize) -> BatchEngine {
        let config = EngineConfig {
            num_blocks,
            block_size: 4,
            max_model_len: num_blocks * 4,
            sim: SimConfig {
                prefill_us_per_token: 0,
                decode_step_us: 200,
                decode_us_per_seq: 0,
            },
            ..EngineConfig::default()
        };
        BatchEngine::start(&config, &Tokenizer::builtin().unwrap()).unwrap()
    }

    async fn collect(mut rx: UnboundedReceiver<GenerateEvent>) -> Vec<GenerateEvent> {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    }

    #[tokio::test]
    async fn generates_deterministically_and_reuses_the_prefix() {
        let engine = engine(64);
        let request = GenerateRequest {
            prompt: (1..=10).collect(),
            resumed: Vec::new(),
            max_tokens: 5,
            seed: None,
            sampling: Sampling::default(),
        };
        let first = collect(engine.submit(request.clone())).await;
        let second = collect(engine.submit(request)).await;
        assert_eq!(first.len(), 1 + 5 + 1);
        assert_eq!(first[0], GenerateEvent::Admitted { cached_tokens: 0 });
        assert_eq!(second[0], GenerateEvent::Admitted { cached_tokens: 8 });
        assert_eq!(first[1..6], second[1..6]);
        let GenerateEvent::Finished { reason, usage } = &second[6] else {
            panic!("{second:?}")
        };
        assert_eq!(*reason, FinishReason::Length);
        assert_eq!(
            *usage,
            TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 8
            }
        );
        let seeded = collect(engine.submit(GenerateRequest {
            prompt: vec![1],
            resumed: Vec::new(),
            max_tokens: 5,
            seed: Some(3),
            sampling: Sampling::default(),
        }))
        .await;
        assert_ne!(seeded[1..6], first[1..6]);
    }

    #[tokio::test]
    async fn dropping_the_receiver_frees_the_sequence() {
        let engine = engine(64);
        let mut rx = engine.submit(GenerateRequest {
            prompt: vec![1; 30],
            resumed: Vec::new(),
            max_tokens: 200,
            seed: None,
            sampling: Sampling::default(),
        });
        assert!(matches!(
            rx.recv().await,
            Some(GenerateEvent::Admitted { .. })
        ));
        assert!(matches!(rx.recv().await, Some(GenerateEvent::Token { .. })));
        assert!(engine.load().kv_blocks_used > 0);
        drop(rx);
        // Bounded only so a regression fails instead of hanging.
        for _ in 0..2000 {
            if engine.load().running == 0 && engine.load().kv_blocks_used == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("sequence not freed: {:?}", engine.load());
    }

    /// A compute backend that fails on its first step, as a GPU error would.
    struct Broken;

    impl Compute for Broken {
        fn step(&mut self, _: &crate::scheduler::StepPlan) -> Vec<crate::scheduler::Sampled> {
            panic!("device lost")
        }
    }

    #[tokio::test]
    async fn an_engine_whose_compute_fails_stops_serving() {
        let config = EngineConfig::default();
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_running: 1,
                max_prefill_tokens_per_step: 64,
                max_model_len: 64,
                eos_token: None,
            },
            KvCache::new(16, 4),
        );
        let info = EngineInfo {
            name: "broken".to_string(),
            backend: "cpu".to_string(),
            block_size: config.block_size,
        };
        let engine = BatchEngine::spawn(info, scheduler, Box::new(Broken)).unwrap();
        assert!(engine.serving());
        let request = GenerateRequest {
            prompt: vec![1, 2, 3],
            resumed: Vec::new(),
            max_tokens: 2,
            seed: None,
            sampling: Sampling::default(),
        };
        let events = collect(engine.submit(request)).await;
        assert!(!events
            .iter()
            .any(|e| matches!(e, GenerateEvent::Finished { .. })));
        // Bounded only so a regression fails instead of hanging.
        for _ in 0..2000 {
            if !engine.serving() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("a dead engine still says it serves");
    }
}
