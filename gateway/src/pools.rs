//! The worker registry: pools by model, and each worker's live state (in-flight
//! count, probe health, circuit breaker) shared by routing, probes and status.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;
use protocol::LoadReport;
use workers::tokenizer::{Tokenizer, TokenizerError};

use crate::config::{BreakerConfig, Config};
use crate::health::{Breaker, ProbeState};
use crate::metrics;
use crate::plugin::PolicySlot;
use crate::prefix::PrefixState;
use crate::tokenize;

pub struct Registry {
    pools: Vec<Arc<Pool>>,
    by_model: HashMap<String, Arc<Pool>>,
}

pub struct Pool {
    pub name: String,
    pub models: Vec<String>,
    pub workers: Vec<Arc<Worker>>,
    pub block_size: usize,
    pub tokenizer: Arc<Tokenizer>,
    pub prefix: PrefixState,
    /// The WASM policy in force; empty means the built-in policy.
    pub policy: Arc<PolicySlot>,
    /// Requests routed so far: the round-robin strategy's turn.
    turn: AtomicUsize,
}

impl Pool {
    pub fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn worker(&self, id: &str) -> Option<&Arc<Worker>> {
        self.workers.iter().find(|w| w.id == id)
    }
}

pub struct Worker {
    pub id: String,
    pub pool: String,
    /// Base URL, no path.
    pub url: Uri,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    in_flight: AtomicU32,
    /// Prompt tokens this gateway sent the worker to prefill that have not
    /// produced a first byte yet: known at once, unlike the worker's report.
    pending_prefill: AtomicUsize,
    pub probe: Mutex<ProbeState>,
    pub breaker: Mutex<Breaker>,
    /// The worker's last own load report (from probes or the bus), and when it came.
    reported_load: Mutex<Option<(LoadReport, Instant)>>,
    /// The block size the worker says it hashes with, once it said so.
    pub reported_block_size: Mutex<Option<usize>>,
}

impl Registry {
    pub fn from_config(config: &Config) -> Result<Registry, TokenizerError> {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                Ok(Arc::new(Pool {
                    name: p.name.clone(),
                    models: p.models.clone(),
                    block_size: p.block_size,
                    tokenizer: tokenize::load(&p.tokenizer)?,
                    prefix: PrefixState::new(p.block_size, &config.routing),
                    policy: Arc::new(PolicySlot::new(p.name.clone())),
                    turn: AtomicUsize::new(0),
                    workers: p
                        .workers
                        .iter()
                        .map(|w| {
                            Arc::new(Worker::new(
                                w.id.clone(),
                                p.name.clone(),
                                // Validated in config.
                                w.url.parse().expect("worker url validated"),
                                w.zone.clone(),
                                w.labels.clone(),
                                &config.breaker,
                            ))
                        })
                        .collect(),
                }))
            })
            .collect::<Result<_, TokenizerError>>()?;
        let by_model = pools
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| (m.clone(), p.clone())))
            .collect();
        Ok(Registry { pools, by_model })
    }

    pub fn pool_for(&self, model: &str) -> Option<&Arc<Pool>> {
        self.by_model.get(model)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn workers(&self) -> impl Iterator<Item = &Arc<Worker>> {
        self.pools.iter().flat_map(|p| p.workers.iter())
    }

    /// Model ids served, in config order.
    pub fn models(&self) -> Vec<String> {
        self.pools
            .iter()
            .flat_map(|p| p.models.iter().cloned())
            .collect()
    }

    /// True when some pool has a worker that may take traffic.
    pub fn any_routable(&self) -> bool {
        self.workers().any(|w| w.probe.lock().unwrap().routable())
    }
}

impl Worker {
    pub fn new(
        id: String,
        pool: String,
        url: Uri,
        zone: String,
        labels: BTreeMap<String, String>,
        breaker: &BreakerConfig,
    ) -> Worker {
        Worker {
            id,
            pool,
            url,
            zone,
            labels,
            in_flight: AtomicU32::new(0),
            pending_prefill: AtomicUsize::new(0),
            probe: Mutex::new(ProbeState::default()),
            breaker: Mutex::new(Breaker::new(breaker)),
            reported_load: Mutex::new(None),
            reported_block_size: Mutex::new(None),
        }
    }

    pub fn report_load(&self, load: LoadReport, now: Instant) {
        *self.reported_load.lock().unwrap() = Some((load, now));
    }

    /// The worker's own load report, unless older than `stale`.
    pub fn fresh_load(&self, now: Instant, stale: Duration) -> Option<LoadReport> {
        let reported = *self.reported_load.lock().unwrap();
        reported.and_then(|(load, at)| (now.saturating_duration_since(at) < stale).then_some(load))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn pending_prefill(&self) -> usize {
        self.pending_prefill.load(Ordering::Relaxed)
    }

    /// Counts `tokens` of prefill against this worker until the guard drops.
    pub fn start_prefill(self: &Arc<Self>, tokens: usize) -> Prefill {
        self.pending_prefill.fetch_add(tokens, Ordering::Relaxed);
        Prefill(self.clone(), tokens)
    }

    /// Counts a request against this worker until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::worker_in_flight(&self.pool, &self.id, n);
        InFlight(self.clone())
    }
}

/// One request in flight on a worker; dropping it ends the count.
pub struct InFlight(Arc<Worker>);

impl InFlight {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::worker_in_flight(&self.0.pool, &self.0.id, n);
    }
}

/// Prefill sent to a worker and not answered yet; dropping it ends the count.
pub struct Prefill(Arc<Worker>, usize);

impl Drop for Prefill {
    fn drop(&mut self) {
        self.0.pending_prefill.fetch_sub(self.1, Ordering::Relaxed);
    }
}
