//! What the gateway knows of each worker's KV cache: the exact index fed by
//! the workers' events over the bus, and the approximate one fed by this
//! gateway's own decisions, which stands in for any worker whose events it
//! cannot trust right now (no bus, a gap being resynced, an engine that
//! publishes none).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::{BlockHash, KvEventBatch, KvSnapshot};

use crate::candidates::Candidate;
use crate::config::{RoutingConfig, Strategy};
use crate::index::{Applied, ApproxIndex, PrefixIndex};

pub struct PrefixState {
    exact: Mutex<Exact>,
    approx: Mutex<ApproxIndex>,
}

struct Exact {
    index: PrefixIndex,
    /// Workers whose events the index follows right now.
    followed: HashSet<String>,
}

impl PrefixState {
    pub fn new(block_size: usize, routing: &RoutingConfig) -> PrefixState {
        PrefixState {
            exact: Mutex::new(Exact {
                index: PrefixIndex::new(block_size, routing.max_blocks_per_worker),
                followed: HashSet::new(),
            }),
            approx: Mutex::new(ApproxIndex::new(
                Duration::from_millis(routing.approx_ttl_ms),
                routing.approx_max_entries,
            )),
        }
    }

    /// Sets each candidate's overlap with the prompt `hashes`: exact where the
    /// worker's events are followed and the bus is up, approximate elsewhere.
    pub fn fill(
        &self,
        strategy: Strategy,
        bus_up: bool,
        hashes: &[BlockHash],
        candidates: &mut [Candidate],
        now: Instant,
    ) {
        if hashes.is_empty() || !matches!(strategy, Strategy::Kv | Strategy::Approx) {
            return;
        }
        let approx = self.approx.lock().unwrap().overlaps(hashes, now);
        let exact = (strategy == Strategy::Kv && bus_up).then(|| self.exact.lock().unwrap());
        let exact = exact
            .as_ref()
            .map(|e| (e.index.overlaps(hashes), &e.followed));
        for c in candidates {
            c.overlap_blocks = match exact {
                Some((ref overlaps, followed)) if followed.contains(&c.worker.id) => {
                    overlaps.blocks(&c.worker.id)
                }
                _ => approx.blocks(&c.worker.id),
            };
        }
    }

    /// Remembers that `worker_id` was sent the prompt `hashes`.
    pub fn record(&self, worker_id: &str, hashes: &[BlockHash], now: Instant) {
        if !hashes.is_empty() {
            self.approx.lock().unwrap().record(worker_id, hashes, now);
        }
    }

    pub fn apply(&self, batch: &KvEventBatch) -> Applied {
        let mut exact = self.exact.lock().unwrap();
        let applied = exact.index.apply(batch);
        exact.follow(&batch.worker_id, &applied);
        applied
    }

    pub fn resync(&self, snapshot: &KvSnapshot) -> Applied {
        let mut exact = self.exact.lock().unwrap();
        let applied = exact.index.resync(snapshot);
        exact.follow(&snapshot.worker_id, &applied);
        applied
    }

    /// Forgets a worker: it left the pool, or its cache cannot be matched.
    pub fn remove_worker(&self, worker_id: &str) {
        let mut exact = self.exact.lock().unwrap();
        exact.index.remove_worker(worker_id);
        exact.followed.remove(worker_id);
        self.approx.lock().unwrap().remove_worker(worker_id);
    }

    /// Workers to ask for a snapshot: those waiting for one, or, after the bus
    /// reconnected, every worker followed (events may have been lost meanwhile).
    pub fn to_resync(&self, all: bool) -> Vec<String> {
        let exact = self.exact.lock().unwrap();
        if all {
            exact.followed.iter().cloned().collect()
        } else {
            exact.index.awaiting_resync().map(str::to_string).collect()
        }
    }

    /// (exact entries, approximate entries), for metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let exact = self.exact.lock().unwrap().index.stats().entries;
        (exact, self.approx.lock().unwrap().stats().entries)
    }

    pub fn is_followed(&self, worker_id: &str) -> bool {
        self.exact.lock().unwrap().followed.contains(worker_id)
    }
}

impl Exact {
    fn follow(&mut self, worker_id: &str, applied: &Applied) {
        match applied {
            Applied::Ok | Applied::NewInstance => {
                self.followed.insert(worker_id.to_string());
            }
            Applied::Stale => {}
            _ => {
                self.followed.remove(worker_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tests::cand;
    use protocol::{block_hashes, KvEvent};

    #[test]
    fn followed_workers_use_events_others_the_approximation() {
        let state = PrefixState::new(4, &RoutingConfig::default());
        let hashes = block_hashes(&(0..16).collect::<Vec<u32>>(), 4);
        let now = Instant::now();
        state.apply(&KvEventBatch {
            worker_id: "a".into(),
            instance: 1,
            id: 1,
            events: vec![
                KvEvent::Cleared,
                KvEvent::Stored {
                    parent: None,
                    hashes: hashes[..3].to_vec(),
                },
            ],
        });
        state.record("b", &hashes[..2], now);
        state.record("a", &hashes, now);
        let mut cands = vec![cand("a", true, 0, 0), cand("b", true, 0, 0)];
        state.fill(Strategy::Kv, true, &hashes, &mut cands, now);
        assert_eq!((cands[0].overlap_blocks, cands[1].overlap_blocks), (3, 2));

        // Bus down: the approximation answers for everyone.
        state.fill(Strategy::Kv, false, &hashes, &mut cands, now);
        assert_eq!((cands[0].overlap_blocks, cands[1].overlap_blocks), (4, 2));

        // A gap stops following `a` until a snapshot comes.
        let gap = state.apply(&KvEventBatch {
            worker_id: "a".into(),
            instance: 1,
            id: 5,
            events: vec![],
        });
        assert!(gap.needs_resync());
        assert_eq!(state.to_resync(false), ["a"]);
        state.fill(Strategy::Kv, true, &hashes, &mut cands, now);
        assert_eq!(cands[0].overlap_blocks, 4);
        state.resync(&KvSnapshot {
            worker_id: "a".into(),
            instance: 1,
            last_id: 5,
            block_size: 4,
            blocks: hashes[..1].to_vec(),
        });
        state.fill(Strategy::Kv, true, &hashes, &mut cands, now);
        assert_eq!(cands[0].overlap_blocks, 1);

        state.remove_worker("a");
        assert!(!state.is_followed("a"));
    }
}
