//! A pool's workers as plugins see them: the strings (ids, zones, labels)
//! that per-request candidates refer to by index. An instance is sent a
//! table only when it differs from the last one it saw, which it tells by
//! one comparison of generations.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{PolicyEngine, PolicyWorker};

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
