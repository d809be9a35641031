//! A pool's workers as plugins see them: the table of ids, zones and labels
//! that a request's candidates refer to by index, kept between requests and
//! rebuilt only when the pool's workers change.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::engine::EngineKind;
use crate::plugin::{Label, PolicyEngine, PolicyWorker, WorkerTable};
use crate::worker::Worker;

/// A pool's workers as plugins see them, kept between requests.
///
/// Derived from the workers themselves rather than from config, so workers
/// that join, leave or are replaced (e.g. re-registered with other labels)
/// while the gateway runs are picked up: a worker is known by its `Arc`,
/// whose id, zone and labels never change, and the table is rebuilt when a
/// candidate's worker is not in it or the pool's worker count differs.
#[derive(Default)]
pub struct PluginTable {
    current: ArcSwapOption<TableSnapshot>,
}

pub struct TableSnapshot {
    /// Held, so no worker's address is reused while the table names it.
    workers: Vec<Arc<Worker>>,
    table: WorkerTable,
}

impl PluginTable {
    /// The table for `candidates`, gathered from `pool_workers`, and each
    /// candidate's index in it.
    pub fn locate<'a>(
        &self,
        pool_workers: &[Arc<Worker>],
        candidates: impl Iterator<Item = &'a Arc<Worker>> + Clone,
    ) -> (Arc<TableSnapshot>, Vec<u32>) {
        if let Some(current) = self.current.load_full() {
            if current.workers.len() == pool_workers.len() {
                if let Some(indices) = current.indices(candidates.clone()) {
                    return (current, indices);
                }
            }
        }
        // The candidates may have been gathered from a worker set that
        // changed since: they join the table whatever the pool holds now.
        let mut workers = pool_workers.to_vec();
        for c in candidates.clone() {
            if !workers.iter().any(|w| Arc::ptr_eq(w, c)) {
                workers.push(c.clone());
            }
        }
        let table = WorkerTable::new(workers.iter().map(|w| policy_worker(w)).collect());
        let snapshot = Arc::new(TableSnapshot { workers, table });
        let indices = snapshot
            .indices(candidates)
            .expect("every candidate's worker was just added");
        self.current.store(Some(snapshot.clone()));
        (snapshot, indices)
    }
}

impl TableSnapshot {
    pub fn table(&self) -> &WorkerTable {
        &self.table
    }

    /// Each candidate's index in the table, or `None` if one is not in it.
    fn indices<'a>(&self, candidates: impl Iterator<Item = &'a Arc<Worker>>) -> Option<Vec<u32>> {
        let n = self.workers.len();
        // Candidates are gathered in the pool's order, so each one's worker
        // is usually found a few steps past the previous one's.
        let mut next = 0;
        candidates
            .map(|c| {
                let found = (0..n)
                    .map(|step| (next + step) % n)
                    .find(|&i| Arc::ptr_eq(&self.workers[i], c))?;
                next = found + 1;
                Some(found as u32)
            })
            .collect()
    }
}

impl From<EngineKind> for PolicyEngine {
    fn from(kind: EngineKind) -> PolicyEngine {
        match kind {
            EngineKind::Llmgw => PolicyEngine::Llmgw,
            EngineKind::Vllm => PolicyEngine::Vllm,
            EngineKind::Sglang => PolicyEngine::Sglang,
            EngineKind::Llamacpp => PolicyEngine::Llamacpp,
            EngineKind::Openai => PolicyEngine::Openai,
        }
    }
}

fn policy_worker(worker: &Worker) -> (PolicyWorker, PolicyEngine) {
    let engine = PolicyEngine::from(worker.engine.kind);
    let worker = PolicyWorker {
        id: worker.id.to_string(),
        zone: worker.zone.clone(),
        labels: worker
            .labels
            .iter()
            .map(|(k, v)| Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    };
    (worker, engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::tests;

    fn worker(id: &str) -> Arc<Worker> {
        tests::worker(id, "a")
    }

    fn ids(snapshot: &TableSnapshot, indices: &[u32]) -> Vec<String> {
        indices
            .iter()
            .map(|&i| snapshot.table.workers()[i as usize].id.clone())
            .collect()
    }

    #[test]
    fn the_table_holds_while_the_workers_do_whatever_the_candidates() {
        let all: Vec<Arc<Worker>> = ["a", "b", "c", "d"].iter().map(|id| worker(id)).collect();
        let pool = all.clone();
        let table = PluginTable::default();
        let (first, indices) = table.locate(&pool, all.iter());
        assert_eq!(indices, [0, 1, 2, 3]);
        // Fewer candidates (one unhealthy), in another order: same table.
        let some = [all[3].clone(), all[1].clone(), all[2].clone()];
        let (second, indices) = table.locate(&pool, some.iter());
        assert_eq!(second.table.generation(), first.table.generation());
        assert_eq!(ids(&second, &indices), ["d", "b", "c"]);
        assert!(table.locate(&pool, [].iter()).1.is_empty());
    }

    #[test]
    fn a_joined_left_or_replaced_worker_makes_a_new_table() {
        let all: Vec<Arc<Worker>> = ["a", "b"].iter().map(|id| worker(id)).collect();
        let table = PluginTable::default();
        let generation = |pool: &[Arc<Worker>], candidates: &[Arc<Worker>]| {
            let (snapshot, indices) = table.locate(pool, candidates.iter());
            assert_eq!(
                ids(&snapshot, &indices),
                candidates
                    .iter()
                    .map(|w| w.id.to_string())
                    .collect::<Vec<_>>()
            );
            snapshot.table.generation()
        };
        let start = generation(&all, &all);
        assert_eq!(generation(&all, &all[..1]), start);

        let joined = [all[0].clone(), all[1].clone(), worker("c")];
        let after_join = generation(&joined, &joined);
        assert_ne!(after_join, start);
        let left = generation(&joined[1..], &joined[1..]);
        assert_ne!(left, after_join);
        // "b" again, but another worker: re-registered with other labels, say.
        let replaced = [worker("b"), joined[2].clone()];
        assert_ne!(generation(&replaced, &replaced), left);
    }

    #[test]
    fn candidates_from_an_older_worker_set_still_find_their_worker() {
        let old = [worker("a"), worker("gone")];
        let now = old[..1].to_vec();
        let (snapshot, indices) = PluginTable::default().locate(&now, old.iter());
        assert_eq!(ids(&snapshot, &indices), ["a", "gone"]);
    }
}
