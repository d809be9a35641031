//! The oracle: a router inside the bench that knows every worker's KV cache
//! exactly and at once, the bound KV-event routing is measured against.
//!
//! It decides with the gateway's own policy (`gateway::policy::order`,
//! strategy `kv`, the same weights), so what separates it from the gateway is
//! knowledge alone. What it knows that the gateway does not:
//! - every block each worker holds, from every event since the worker started
//!   (it subscribes before the workers start): no bound on the index, no
//!   approximate stand-in while a worker is being resynced, no snapshot round trips;
//! - exactly how many requests it has in flight on each worker and how many
//!   uncached prompt tokens of them are still waiting for their first token,
//!   at the moment it decides; the gateway has its own in-flight count and
//!   load reports the workers debounce by 50 ms;
//! - each prompt's block hashes before the request is sent (computed when the
//!   workload was built, with the workers' tokenizer and chat template), so
//!   tokenizing costs it nothing and it sends straight to the worker, no proxy hop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gateway::candidates::Candidate;
use gateway::config::{BreakerConfig, RoutingConfig, Strategy};
use gateway::policy;
use gateway::worker::Worker;
use protocol::bus::{Subjects, Topic};
use protocol::{BlockHash, Bus, KvEvent, KvEventBatch, LoadReport};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;

use super::cluster::{Member, LOCAL_ZONE, POOL};
use super::workload::Request;

/// Every worker's cached blocks, by worker id, exactly as its events say.
#[derive(Default)]
pub struct Caches {
    caches: Mutex<HashMap<String, Cache>>,
    /// Batches that arrived out of order or not at all; must stay 0 for the oracle to be one.
    pub gaps: AtomicU64,
}

#[derive(Default)]
struct Cache {
    blocks: HashSet<BlockHash>,
    last_id: u64,
}

impl Caches {
    /// Subscribes to every worker's KV events of the pool and applies them as they come.
    pub async fn follow(bus: &Bus) -> anyhow::Result<(Arc<Caches>, JoinHandle<()>)> {
        let subjects = Subjects::new(protocol::bus::DEFAULT_SUBJECT_PREFIX);
        let mut sub = bus.subscribe(subjects.worker(Topic::Kv, POOL, "*")).await?;
        let caches = Arc::new(Caches::default());
        let applier = caches.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                match serde_json::from_slice::<KvEventBatch>(&message.payload) {
                    Ok(batch) => applier.apply(batch),
                    Err(_) => {
                        applier.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok((caches, task))
    }

    fn apply(&self, batch: KvEventBatch) {
        let mut caches = self.caches.lock().unwrap();
        let cache = caches.entry(batch.worker_id).or_default();
        if batch.id != cache.last_id + 1 {
            self.gaps.fetch_add(1, Ordering::Relaxed);
        }
        cache.last_id = batch.id;
        for event in batch.events {
            match event {
                KvEvent::Stored { hashes, .. } => cache.blocks.extend(hashes),
                KvEvent::Removed { hashes } => {
                    for h in hashes {
                        cache.blocks.remove(&h);
                    }
                }
                KvEvent::Cleared => cache.blocks.clear(),
            }
        }
    }

    /// Leading blocks of `hashes` that `worker` holds.
    fn overlap(caches: &HashMap<String, Cache>, worker: &str, hashes: &[BlockHash]) -> u32 {
        caches.get(worker).map_or(0, |c| {
            hashes.iter().take_while(|h| c.blocks.contains(h)).count() as u32
        })
    }
}

pub struct Oracle {
    caches: Arc<Caches>,
    workers: Vec<(Arc<Worker>, String)>,
    routing: RoutingConfig,
    block_size: usize,
    state: Mutex<State>,
}

struct State {
    /// Per worker, in `workers` order.
    loads: Vec<Load>,
    rng: StdRng,
}

#[derive(Default, Clone, Copy)]
struct Load {
    in_flight: u32,
    /// Uncached prompt tokens of requests in flight still without a first token.
    prefill_pending: usize,
}

impl Oracle {
    pub fn new(
        caches: Arc<Caches>,
        members: &[Member],
        routing: &RoutingConfig,
        block_size: usize,
        seed: u64,
    ) -> anyhow::Result<Arc<Oracle>> {
        let workers = members
            .iter()
            .map(|m| {
                let worker = Worker::new(
                    m.id.as_str().into(),
                    POOL.into(),
                    m.url.parse()?,
                    m.zone.clone(),
                    Default::default(),
                    &BreakerConfig::default(),
                );
                Ok((Arc::new(worker), m.url.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(Oracle {
            caches,
            workers,
            routing: RoutingConfig {
                strategy: Strategy::Kv,
                ..routing.clone()
            },
            block_size,
            state: Mutex::new(State {
                loads: vec![Load::default(); members.len()],
                rng: StdRng::seed_from_u64(seed),
            }),
        }))
    }

    /// Chooses the worker for `request` and counts it in flight there until the ticket drops.
    pub fn pick(self: &Arc<Self>, request: &Request) -> Ticket {
        let caches = self.caches.caches.lock().unwrap();
        let mut state = self.state.lock().unwrap();
        let candidates = self
            .workers
            .iter()
            .zip(&state.loads)
            .map(|((worker, _), load)| Candidate {
                worker: worker.clone(),
                local: worker.zone == LOCAL_ZONE,
                in_flight: load.in_flight,
                load: Some(LoadReport {
                    running: load.in_flight as usize,
                    prefill_tokens_pending: load.prefill_pending,
                    ..LoadReport::default()
                }),
                overlap_blocks: Caches::overlap(&caches, &worker.id, &request.hashes),
                // The oracle weighs what it knows exactly: the overlap.
                held_blocks: 0,
                pending_prefill: load.prefill_pending,
            })
            .collect::<Vec<_>>();
        let overlaps: Vec<u32> = candidates.iter().map(|c| c.overlap_blocks).collect();
        drop(caches);
        let req = policy::Request {
            most_held_blocks: 0,
            prompt_blocks: request.hashes.len(),
            block_size: self.block_size,
        };
        let order = policy::order(candidates, &req, &self.routing, &mut state.rng, 0);
        let worker = self
            .workers
            .iter()
            .position(|(w, _)| Arc::ptr_eq(w, &order[0].worker))
            .expect("the policy orders the candidates it was given");
        let uncached = request
            .tokens
            .len()
            .saturating_sub(overlaps[worker] as usize * self.block_size);
        let load = &mut state.loads[worker];
        load.in_flight += 1;
        load.prefill_pending += uncached;
        Ticket {
            oracle: self.clone(),
            worker,
            prefill_pending: uncached,
        }
    }
}

/// A request the oracle routed, counted in flight on its worker until dropped.
pub struct Ticket {
    oracle: Arc<Oracle>,
    worker: usize,
    prefill_pending: usize,
}

impl Ticket {
    pub fn url(&self) -> &str {
        &self.oracle.workers[self.worker].1
    }

    pub fn worker_id(&self) -> &str {
        &self.oracle.workers[self.worker].0.id
    }

    /// The prompt is prefilled: its tokens no longer queue on the worker.
    pub fn first_token(&mut self) {
        let mut state = self.oracle.state.lock().unwrap();
        state.loads[self.worker].prefill_pending -= self.prefill_pending;
        self.prefill_pending = 0;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.oracle.state.lock().unwrap();
        let load = &mut state.loads[self.worker];
        load.prefill_pending -= self.prefill_pending;
        load.in_flight -= 1;
    }
}
