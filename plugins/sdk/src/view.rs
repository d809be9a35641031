//! Candidates as a policy sees them: each request's figures joined with the
//! id, zone, labels and engine of their worker, from the table the host
//! sent last.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::bindings::llmgw::policy::types::{self, State};
use crate::{Engine, Label, Worker};

/// A worker that may take the request, and its figures now.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'w> {
    pub id: &'w str,
    pub zone: &'w str,
    pub labels: &'w [Label],
    /// The kind of server it is.
    pub engine: Engine,
    pub health: Health,
    pub load: Load,
    /// Leading blocks of this request's prompt the worker holds in KV cache.
    pub overlap_blocks: u32,
    /// The built-in policy's cost for this worker: lower is better.
    pub score: f64,
    /// Where the host listed it: what a decision names.
    position: u32,
}

/// What the gateway knows of a candidate's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Probes pass and the circuit breaker is closed.
    Healthy,
    /// Not probed yet.
    Unknown,
    /// Recovering: the breaker grants one trial request.
    HalfOpen,
}

/// Load figures. `in_flight` is the gateway's own count; the rest come from
/// the worker's load reports and are `None` when unknown or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub in_flight: u32,
    pub running: Option<u32>,
    pub waiting: Option<u32>,
    pub kv_blocks_used: Option<u32>,
    pub kv_blocks_total: Option<u32>,
}

impl<'w> Candidate<'w> {
    /// The value of the worker's label `key`, if it has one.
    pub fn label(&self, key: &str) -> Option<&'w str> {
        self.labels
            .iter()
            .find(|label| label.key == key)
            .map(|label| label.value.as_str())
    }

    /// Its position in the host's candidate list, as a [`Decision::Route`](crate::Decision::Route) lists it.
    pub fn position(&self) -> u32 {
        self.position
    }
}

/// Joins the host's `candidates` with their `workers` and those workers'
/// `engines` (a worker without one runs `llmgw`), keeping the host's order.
/// Fails on lists of different lengths or a candidate whose worker is not in
/// the table, which only a faulty host causes.
pub(crate) fn join<'w>(
    workers: &'w [Worker],
    engines: &[Engine],
    candidates: &types::Candidates,
) -> Result<Vec<Candidate<'w>>, String> {
    let c = candidates;
    let n = c.worker.len();
    let lengths = [
        c.state.len(),
        c.in_flight.len(),
        c.running.len(),
        c.waiting.len(),
        c.kv_blocks_used.len(),
        c.kv_blocks_total.len(),
        c.overlap_blocks.len(),
        c.score.len(),
    ];
    if lengths.iter().any(|&len| len != n) {
        return Err(format!(
            "candidate lists of different lengths: {n} workers, {lengths:?}"
        ));
    }
    (0..n)
        .map(|i| {
            let worker = workers.get(c.worker[i] as usize).ok_or_else(|| {
                format!(
                    "candidate {i} names worker {} of {}: the host sent no such worker",
                    c.worker[i],
                    workers.len()
                )
            })?;
            let has = |flag: State| c.state[i] & flag == flag;
            let reported = |figure: u32| has(State::REPORTED).then_some(figure);
            Ok(Candidate {
                id: &worker.id,
                zone: &worker.zone,
                labels: &worker.labels,
                engine: engines
                    .get(c.worker[i] as usize)
                    .copied()
                    .unwrap_or(Engine::Llmgw),
                // Half-open says more than unprobed, should both hold.
                health: if has(State::HALF_OPEN) {
                    Health::HalfOpen
                } else if has(State::UNPROBED) {
                    Health::Unknown
                } else {
                    Health::Healthy
                },
                load: Load {
                    in_flight: c.in_flight[i],
                    running: reported(c.running[i]),
                    waiting: reported(c.waiting[i]),
                    kv_blocks_used: reported(c.kv_blocks_used[i]),
                    kv_blocks_total: reported(c.kv_blocks_total[i]),
                },
                overlap_blocks: c.overlap_blocks[i],
                score: c.score[i],
                position: i as u32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::testing::{candidate, wire};

    #[test]
    fn engines_join_by_worker_index() {
        let cs = [candidate("w1"), candidate("w2")];
        let workers = [cs[0].worker.clone(), cs[1].worker.clone()];
        let view = join(&workers, &[Engine::Llmgw, Engine::Vllm], &wire(&cs, [1, 0])).unwrap();
        assert_eq!(
            (view[0].engine, view[1].engine),
            (Engine::Vllm, Engine::Llmgw)
        );
        // A host that sent no engines: every worker reads as ours.
        let view = join(&workers, &[], &wire(&cs, [1, 0])).unwrap();
        assert_eq!(view[0].engine, Engine::Llmgw);
    }

    #[test]
    fn label_finds_value_by_key() {
        let c = candidate("w1")
            .with_label("version", "v2")
            .with_label("colour", "blue");
        let workers = [c.worker.clone()];
        let view = join(&workers, &[], &wire(&[c], [0])).unwrap();
        assert_eq!(view[0].label("colour"), Some("blue"));
        assert_eq!(view[0].label("zone"), None);
    }

    #[test]
    fn candidates_keep_the_hosts_order_whatever_the_tables() {
        let workers = [candidate("w0").worker, candidate("w1").worker];
        let figures = wire(&[candidate("x"), candidate("y")], [1, 0]);
        let view = join(&workers, &[], &figures).unwrap();
        let seen: Vec<_> = view.iter().map(|c| (c.id, c.position())).collect();
        assert_eq!(seen, [("w1", 0), ("w0", 1)]);
    }

    #[test]
    fn figures_without_a_report_are_unknown() {
        let workers = [candidate("w0").worker];
        let cs = [
            candidate("x").with_in_flight(3),
            candidate("y").with_running(7),
        ];
        let view = join(&workers, &[], &wire(&cs, [0, 0])).unwrap();
        assert_eq!((view[0].load.in_flight, view[0].load.running), (3, None));
        assert_eq!(view[1].load.running, Some(7));
    }

    #[test]
    fn health_crosses_as_state_flags() {
        let workers = [candidate("w0").worker];
        let healths = [Health::Healthy, Health::Unknown, Health::HalfOpen];
        let cs = healths.map(|health| candidate("x").with_health(health));
        let view = join(&workers, &[], &wire(&cs, [0, 0, 0])).unwrap();
        let seen: Vec<Health> = view.iter().map(|c| c.health).collect();
        assert_eq!(seen, healths);
    }

    #[test]
    fn half_open_wins_over_unprobed() {
        let workers = [candidate("w0").worker];
        let mut figures = wire(&[candidate("x"), candidate("y")], [0, 0]);
        figures.state = vec![State::UNPROBED, State::UNPROBED | State::HALF_OPEN];
        let view = join(&workers, &[], &figures).unwrap();
        assert_eq!(view[0].health, Health::Unknown);
        assert_eq!(view[1].health, Health::HalfOpen);
    }

    #[test]
    fn a_faulty_host_is_an_error() {
        let workers = [candidate("w0").worker];
        let error = join(&workers, &[], &wire(&[candidate("x")], [1])).unwrap_err();
        assert!(error.contains("worker 1 of 1"), "{error}");
        let mut short = wire(&[candidate("x")], [0]);
        short.score.clear();
        assert!(join(&workers, &[], &short).is_err());
    }
}
