//! A pool's workers as plugins see them: the strings (ids, zones, labels)
//! that per-request candidates refer to by index. An instance is sent a
//! table only when it differs from the last one it saw, which it tells by
//! one comparison of generations.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{PolicyCandidates, PolicyEngine, PolicyWorker};

/// Generations are unique in the process, so no two tables (of two pools,
/// or one pool before and after a change) can be mistaken for each other.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct WorkerTable {
    generation: u64,
    workers: Vec<PolicyWorker>,
    /// Each worker's engine, in the same order: a plugin asks for them apart.
    engines: Vec<PolicyEngine>,
}

impl WorkerTable {
    pub fn new(workers: Vec<(PolicyWorker, PolicyEngine)>) -> Self {
        let (workers, engines) = workers.into_iter().unzip();
        Self {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            workers,
            engines,
        }
    }

    /// Never 0, which stands for "no table yet".
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn workers(&self) -> &[PolicyWorker] {
        &self.workers
    }

    pub fn engines(&self) -> &[PolicyEngine] {
        &self.engines
    }
}

/// Candidates on `workers` (indices into a table), their figures empty, to
/// be pushed one candidate at a time.
pub fn candidates_on(workers: Vec<u32>) -> PolicyCandidates {
    let n = workers.len();
    PolicyCandidates {
        worker: workers,
        state: Vec::with_capacity(n),
        in_flight: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
        waiting: Vec::with_capacity(n),
        kv_blocks_used: Vec::with_capacity(n),
        kv_blocks_total: Vec::with_capacity(n),
        overlap_blocks: Vec::with_capacity(n),
        score: Vec::with_capacity(n),
    }
}
