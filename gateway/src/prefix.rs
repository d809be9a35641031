//! What the gateway knows of each worker's KV cache: the exact index fed by
//! the workers' events (ours over the bus, vLLM's and SGLang's over
//! ZeroMQ), and the approximate one fed by this gateway's own decisions,
//! which stands in for any worker whose events it cannot trust right now
//! (no bus, a gap being resynced, an engine that publishes none).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{BlockHash, KvEventBatch, KvSnapshot};

use crate::config::{RoutingConfig, Strategy};
use crate::index::{Applied, ApproxIndex, PrefixIndex};
use crate::worker::Worker;

/// What routing believes one worker holds of one prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cached {
    /// Leading prompt blocks in its KV cache.
    pub overlap_blocks: u32,
    /// Blocks in its cache in all: how full it is.
    pub held_blocks: usize,
}

pub struct PrefixState {
    exact: Mutex<Exact>,
    approx: Mutex<ApproxIndex>,
}

struct Exact {
    index: PrefixIndex,
    /// Workers whose events the index follows right now.
    followed: HashSet<String>,
    /// Those of them whose events come over ZeroMQ, not the bus: they count
    /// whatever the bus's state, and have no snapshots to ask for.
    over_zmq: HashSet<String>,
}

/// Where a worker's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bus,
    Zmq,
}

impl PrefixState {
    pub fn new(block_size: usize, routing: &RoutingConfig) -> PrefixState {
        PrefixState {
            exact: Mutex::new(Exact {
                index: PrefixIndex::new(block_size, routing.max_blocks_per_worker),
                followed: HashSet::new(),
                over_zmq: HashSet::new(),
            }),
            approx: Mutex::new(ApproxIndex::new(
                routing.approx_ttl,
                routing.approx_max_entries,
            )),
        }
    }

    /// What each of `workers` holds of the prompt `hashes`, in their order:
    /// exact where the worker's events are followed (and, for events over
    /// the bus, the bus is up), approximate elsewhere; nothing under a
    /// strategy that ignores the cache.
    pub fn cached(
        &self,
        strategy: Strategy,
        bus_up: bool,
        hashes: &[BlockHash],
        workers: &[Arc<Worker>],
        now: Instant,
    ) -> Vec<Cached> {
        if !strategy.uses_cache() {
            return vec![Cached::default(); workers.len()];
        }
        let approx = self.approx.lock().unwrap();
        let approx_overlaps = approx.overlaps(hashes, now);
        let exact = (strategy == Strategy::Kv).then(|| self.exact.lock().unwrap());
        let exact = exact.as_ref().map(|e| (e, e.index.overlaps(hashes)));
        workers
            .iter()
            .map(|w| match exact {
                Some((e, ref overlaps)) if e.counts(&w.id, bus_up) => {
                    let index = &e.index;
                    Cached {
                        overlap_blocks: overlaps.blocks(&w.id),
                        held_blocks: index.held_blocks(&w.id),
                    }
                }
                _ => Cached {
                    overlap_blocks: approx_overlaps.blocks(&w.id),
                    held_blocks: approx.held_blocks(&w.id),
                },
            })
            .collect()
    }

    /// Remembers that `worker_id` was sent the prompt `hashes`, under a
    /// strategy that routes by cache: the only place the approximate index
    /// learns.
    pub fn learn(&self, strategy: Strategy, worker_id: &str, hashes: &[BlockHash], now: Instant) {
        if strategy.uses_cache() && !hashes.is_empty() {
            self.approx.lock().unwrap().record(worker_id, hashes, now);
        }
    }

    pub fn apply(&self, batch: &KvEventBatch, source: Source) -> Applied {
        let mut exact = self.exact.lock().unwrap();
        let applied = exact.index.apply(batch);
        exact.follow(&batch.worker_id, &applied);
        match source {
            Source::Zmq => exact.over_zmq.insert(batch.worker_id.clone()),
            Source::Bus => exact.over_zmq.remove(&batch.worker_id),
        };
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
        exact.over_zmq.remove(worker_id);
        self.approx.lock().unwrap().remove_worker(worker_id);
    }

    /// Workers to ask for a snapshot over the bus: those waiting for one,
    /// or, after the bus reconnected, every worker followed over it (events
    /// may have been lost meanwhile).
    pub fn to_resync(&self, all: bool) -> Vec<String> {
        let exact = self.exact.lock().unwrap();
        let over_bus = |w: &&str| !exact.over_zmq.contains(*w);
        if all {
            exact
                .followed
                .iter()
                .map(String::as_str)
                .filter(over_bus)
                .map(str::to_string)
                .collect()
        } else {
            exact
                .index
                .awaiting_resync()
                .filter(over_bus)
                .map(str::to_string)
                .collect()
        }
    }

    /// (exact entries, approximate entries), for metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let exact = self.exact.lock().unwrap().index.stats().entries;
        (exact, self.approx.lock().unwrap().stats().entries)
    }

    /// Blocks the exact index holds for `worker_id`, from its events.
    pub fn exact_blocks(&self, worker_id: &str) -> usize {
        self.exact.lock().unwrap().index.held_blocks(worker_id)
    }

    pub fn is_followed(&self, worker_id: &str) -> bool {
        self.exact.lock().unwrap().followed.contains(worker_id)
    }
}

impl Exact {
    /// Whether the index's word on `worker_id` counts now.
    fn counts(&self, worker_id: &str, bus_up: bool) -> bool {
        self.followed.contains(worker_id) && (bus_up || self.over_zmq.contains(worker_id))
    }

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
    use crate::worker::tests;

    fn worker(id: &str) -> Arc<Worker> {
        tests::worker(id, "a")
    }
    use protocol::{block_hashes, KvEvent};

    #[test]
    fn followed_workers_use_events_others_the_approximation() {
        let state = PrefixState::new(4, &RoutingConfig::default());
        let hashes = block_hashes(&(0..16).collect::<Vec<u32>>(), 4);
        let now = Instant::now();
        state.apply(
            &KvEventBatch {
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
            },
            Source::Bus,
        );
        state.learn(Strategy::Kv, "b", &hashes[..2], now);
        state.learn(Strategy::Kv, "a", &hashes, now);
        // A strategy that ignores the cache neither learns nor sees overlaps.
        state.learn(Strategy::RoundRobin, "c", &hashes, now);
        let workers = [worker("a"), worker("b"), worker("c")];
        let cached = |strategy, bus_up| state.cached(strategy, bus_up, &hashes, &workers, now);
        let overlaps = |bus_up| -> Vec<u32> {
            let cached = cached(Strategy::Kv, bus_up);
            cached.iter().map(|c| c.overlap_blocks).collect()
        };
        assert_eq!(overlaps(true), [3, 2, 0]);
        let held: Vec<usize> = cached(Strategy::Kv, true)
            .iter()
            .map(|c| c.held_blocks)
            .collect();
        assert_eq!(
            held,
            [3, 2, 0],
            "a's from its events, b's from this gateway's sends"
        );
        assert_eq!(cached(Strategy::RoundRobin, true), [Cached::default(); 3]);

        // Bus down: the approximation answers for everyone.
        assert_eq!(overlaps(false), [4, 2, 0]);

        // A gap stops following `a` until a snapshot comes.
        let gap = state.apply(
            &KvEventBatch {
                worker_id: "a".into(),
                instance: 1,
                id: 5,
                events: vec![],
            },
            Source::Bus,
        );
        assert!(gap.needs_resync());
        assert_eq!(state.to_resync(false), ["a"]);
        assert_eq!(overlaps(true)[0], 4);
        state.resync(&KvSnapshot {
            worker_id: "a".into(),
            instance: 1,
            last_id: 5,
            block_size: 4,
            blocks: hashes[..1].to_vec(),
        });
        assert_eq!(overlaps(true)[0], 1);

        state.remove_worker("a");
        assert!(!state.is_followed("a"));
    }

    #[test]
    fn events_over_zmq_count_without_the_bus_and_are_never_resynced_over_it() {
        let state = PrefixState::new(4, &RoutingConfig::default());
        let hashes = block_hashes(&(0..8).collect::<Vec<u32>>(), 4);
        let batch = |worker: &str| KvEventBatch {
            worker_id: worker.into(),
            instance: 1,
            id: 1,
            events: vec![KvEvent::Stored {
                parent: None,
                hashes: hashes.clone(),
            }],
        };
        state.apply(&batch("v"), Source::Zmq);
        state.apply(&batch("w"), Source::Bus);
        let workers = [worker("v"), worker("w")];
        let cached = state.cached(Strategy::Kv, false, &hashes, &workers, Instant::now());
        assert_eq!((cached[0].overlap_blocks, cached[1].overlap_blocks), (2, 0));
        assert_eq!(state.to_resync(true), ["w"]);
    }
}
