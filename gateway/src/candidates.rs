//! Candidates: the workers of a pool that may take this request now (probe
//! health and circuit breaker permitting), each with the figures routing
//! weighs: zone, live load, and how much of the prompt it already holds in
//! KV cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::LoadReport;

use crate::pools::Pool;
pub use crate::prefix::Cached;
use crate::worker::Worker;

#[derive(Clone)]
pub struct Candidate {
    pub worker: Arc<Worker>,
    /// In the gateway's own zone.
    pub local: bool,
    /// Requests this gateway has in flight on the worker.
    pub in_flight: u32,
    /// The worker's own last load report, if fresh; stale or missing is unknown, not idle.
    pub load: Option<LoadReport>,
    /// Leading prompt blocks the worker holds in KV cache.
    pub overlap_blocks: u32,
    /// Blocks it holds in all, as far as this gateway knows.
    pub held_blocks: usize,
    /// Prompt tokens this gateway sent the worker that are not prefilled yet.
    pub pending_prefill: usize,
}

impl Candidate {
    /// Requests the worker is serving: its report when fresh, never less than
    /// what this gateway alone has sent it.
    pub fn active(&self) -> u32 {
        let reported = self.load.map_or(0, |l| l.running + l.waiting) as u32;
        reported.max(self.in_flight)
    }

    /// Prompt tokens queued for prefill there: the worker's report when fresh,
    /// never less than what this gateway alone has sent it since.
    pub fn queued_prefill(&self) -> usize {
        let reported = self.load.map_or(0, |l| l.prefill_tokens_pending);
        reported.max(self.pending_prefill)
    }
}

/// The routable workers of `pool`, in its order; `cached` tells what each
/// pool worker holds of the prompt, in that same order (`PrefixState::cached`).
/// Workers of a zone shifted away are among them: `decide` puts them last.
pub fn gather(
    pool: &Pool,
    cached: &[Cached],
    zone: &str,
    now: Instant,
    load_stale: Duration,
) -> Vec<Candidate> {
    pool.workers
        .iter()
        .zip(cached)
        .filter(|(w, _)| w.routable(now))
        .map(|(w, cached)| Candidate {
            worker: w.clone(),
            local: w.zone == zone,
            in_flight: w.in_flight(),
            load: w.fresh_load(now, load_stale),
            overlap_blocks: cached.overlap_blocks,
            held_blocks: cached.held_blocks,
            pending_prefill: w.pending_prefill(),
        })
        .collect()
}
