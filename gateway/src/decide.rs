//! Decide: the pool's WASM policy orders the candidates when one is in force,
//! the built-in policy otherwise. A plugin that fails (trap, timeout, out of
//! memory, invalid decision) never fails the gateway: the request falls back
//! to the built-in policy, or gets a 503 when `plugins.on_error` is
//! `fail_closed`.
//!
//! A plugin is sent each request's figures as numbers; the workers' strings
//! (ids, zones, labels) go in a table kept per pool (`PluginTable`) that the
//! candidates refer to by index, and that an instance is sent only when it
//! changed.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use protocol::{ApiError, ErrorKind};

use crate::candidates::Candidate;
use crate::config::{Config, RoutingConfig};
use crate::metrics;
use crate::plugin::{
    CandidateState, Decision, Label, LoadedPolicy, OnError, PluginError, PolicyCandidates,
    PolicyWorker, RouteRequest, WorkerTable,
};
use crate::policy;
use crate::pools::{Pool, Worker};

/// What the policy stage knows of the request.
pub struct Facts<'a> {
    pub model: &'a str,
    pub stream: bool,
    pub prompt_tokens: usize,
    pub prompt_blocks: usize,
    pub session_key: Option<String>,
    pub headers: &'a http::HeaderMap,
}

/// The workers to try, in order, or the policy's rejection.
pub fn decide(
    config: &Config,
    pool: &Pool,
    candidates: Vec<Candidate>,
    facts: &Facts<'_>,
) -> Result<Vec<Arc<Worker>>, ApiError> {
    let Some(plugin) = pool.policy.current() else {
        return Ok(builtin(config, pool, candidates, facts));
    };
    let inputs = PluginInputs::new(config, pool, &candidates, facts);
    match call(|| inputs.ask(&plugin)) {
        Ok(Decision::Route(order)) => {
            metrics::policy_decision(&pool.name, "route");
            Ok(order
                .into_iter()
                .map(|i| candidates[i].worker.clone())
                .collect())
        }
        Ok(Decision::Reject { status, message }) => {
            metrics::policy_decision(&pool.name, "reject");
            Err(ApiError::new(ErrorKind::Rejected(status), message))
        }
        Err(e) => {
            metrics::policy_error(&pool.name, e.kind());
            let info = plugin.info();
            tracing::warn!(pool = %pool.name, plugin = %info.plugin, version = %info.version,
                kind = e.kind(), error = %e, "policy failed");
            match config.plugins.on_error {
                OnError::Fallback => Ok(builtin(config, pool, candidates, facts)),
                OnError::FailClosed => Err(ApiError::new(
                    ErrorKind::Overloaded,
                    "the routing policy failed; retry later",
                )),
            }
        }
    }
}

/// What a plugin is asked with for one request, built as every request
/// builds it (public so `bench policy` times what a request pays).
pub struct PluginInputs {
    pub request: RouteRequest,
    table: Arc<Snapshot>,
    /// In the order of the gateway's candidates, so a decision's positions
    /// index those too.
    pub candidates: PolicyCandidates,
}

impl PluginInputs {
    pub fn new(config: &Config, pool: &Pool, candidates: &[Candidate], facts: &Facts<'_>) -> Self {
        let (table, workers) = pool.plugin_table.locate(&pool.workers, candidates);
        Self {
            request: RouteRequest {
                model: facts.model.to_string(),
                pool: pool.name.clone(),
                stream: facts.stream,
                prompt_tokens: facts.prompt_tokens as u32,
                block_size: pool.block_size as u32,
                session_key: facts.session_key.clone(),
                headers: allowed_headers(&config.plugins.headers, facts.headers),
                gateway_zone: config.zone.clone(),
                attempt: 1,
            },
            table,
            candidates: policy_candidates(
                candidates,
                workers,
                &score_request(pool, facts),
                &config.routing,
            ),
        }
    }

    /// The table `candidates` refer into.
    pub fn table(&self) -> &WorkerTable {
        &self.table.table
    }

    /// `plugin`'s decision on these inputs; see [`LoadedPolicy::route`].
    pub fn ask(&self, plugin: &LoadedPolicy) -> Result<Decision, PluginError> {
        plugin.route(&self.request, self.table(), &self.candidates)
    }
}

/// A pool's workers as plugins see them, kept between requests.
///
/// Derived from the workers themselves rather than from config, so workers
/// that join, leave or are replaced (e.g. re-registered with other labels)
/// while the gateway runs are picked up: a worker is known by its `Arc`,
/// whose id, zone and labels never change, and the table is rebuilt when a
/// candidate's worker is not in it or the pool's worker count differs.
#[derive(Default)]
pub struct PluginTable {
    current: ArcSwapOption<Snapshot>,
}

struct Snapshot {
    /// Held, so no worker's address is reused while the table names it.
    workers: Vec<Arc<Worker>>,
    table: WorkerTable,
}

impl PluginTable {
    /// The table for `candidates`, gathered from `pool_workers`, and each
    /// candidate's index in it.
    fn locate(
        &self,
        pool_workers: &[Arc<Worker>],
        candidates: &[Candidate],
    ) -> (Arc<Snapshot>, Vec<u32>) {
        if let Some(current) = self.current.load_full() {
            if current.workers.len() == pool_workers.len() {
                if let Some(indices) = current.indices(candidates) {
                    return (current, indices);
                }
            }
        }
        // The candidates may have been gathered from a worker set that
        // changed since: they join the table whatever the pool holds now.
        let mut workers = pool_workers.to_vec();
        for c in candidates {
            if !workers.iter().any(|w| Arc::ptr_eq(w, &c.worker)) {
                workers.push(c.worker.clone());
            }
        }
        let table = WorkerTable::new(workers.iter().map(|w| policy_worker(w)).collect());
        let snapshot = Arc::new(Snapshot { workers, table });
        let indices = snapshot
            .indices(candidates)
            .expect("every candidate's worker was just added");
        self.current.store(Some(snapshot.clone()));
        (snapshot, indices)
    }
}

impl Snapshot {
    /// Each candidate's index in the table, or `None` if one is not in it.
    fn indices(&self, candidates: &[Candidate]) -> Option<Vec<u32>> {
        let n = self.workers.len();
        // Candidates are gathered in the pool's order, so each one's worker
        // is usually found a few steps past the previous one's.
        let mut next = 0;
        candidates
            .iter()
            .map(|c| {
                let found = (0..n)
                    .map(|step| (next + step) % n)
                    .find(|&i| Arc::ptr_eq(&self.workers[i], &c.worker))?;
                next = found + 1;
                Some(found as u32)
            })
            .collect()
    }
}

fn policy_worker(worker: &Worker) -> PolicyWorker {
    PolicyWorker {
        id: worker.id.clone(),
        zone: worker.zone.clone(),
        labels: worker
            .labels
            .iter()
            .map(|(k, v)| Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

fn score_request(pool: &Pool, facts: &Facts<'_>) -> policy::Request {
    policy::Request {
        prompt_blocks: facts.prompt_blocks,
        block_size: pool.block_size,
    }
}

/// Runs a plugin call where it may block: a guest's WASI calls (a panic
/// message written to stderr, say) block on the runtime, which tokio forbids
/// on a worker thread unless it was told with `block_in_place`.
fn call<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn builtin(
    config: &Config,
    pool: &Pool,
    candidates: Vec<Candidate>,
    facts: &Facts<'_>,
) -> Vec<Arc<Worker>> {
    policy::order(
        candidates,
        &score_request(pool, facts),
        &config.routing,
        &mut rand::rng(),
        pool.next_turn(),
    )
}

/// The request headers the operator allow-listed for policies, as text.
fn allowed_headers(allowed: &[String], headers: &http::HeaderMap) -> Vec<(String, String)> {
    allowed
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name.as_str())
                .iter()
                .map(move |v| (name, v))
        })
        .filter_map(|(name, v)| Some((name.to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The candidates as plugins see them, each by its worker's index in the
/// table, with the built-in cost as its score.
fn policy_candidates(
    candidates: &[Candidate],
    workers: Vec<u32>,
    request: &policy::Request,
    routing: &RoutingConfig,
) -> PolicyCandidates {
    let n = candidates.len();
    let mut out = PolicyCandidates {
        worker: workers,
        state: Vec::with_capacity(n),
        in_flight: Vec::with_capacity(n),
        running: Vec::with_capacity(n),
        waiting: Vec::with_capacity(n),
        kv_blocks_used: Vec::with_capacity(n),
        kv_blocks_total: Vec::with_capacity(n),
        overlap_blocks: Vec::with_capacity(n),
        score: Vec::with_capacity(n),
    };
    // Once per request: a clock read per candidate would cost more than the
    // rest of its figures.
    let now = Instant::now();
    for c in candidates {
        let mut state = CandidateState::empty();
        if c.worker.breaker.lock().unwrap().name(now) == "half_open" {
            state |= CandidateState::HALF_OPEN;
        }
        if c.worker.probe.lock().unwrap().name() == "unknown" {
            state |= CandidateState::UNPROBED;
        }
        if c.load.is_some() {
            state |= CandidateState::REPORTED;
        }
        let report =
            |f: fn(&protocol::LoadReport) -> usize| c.load.as_ref().map_or(0, |l| f(l) as u32);
        out.state.push(state);
        out.in_flight.push(c.in_flight);
        out.running.push(report(|l| l.running));
        out.waiting.push(report(|l| l.waiting));
        out.kv_blocks_used.push(report(|l| l.kv_blocks_used));
        out.kv_blocks_total.push(report(|l| l.kv_blocks_total));
        out.overlap_blocks.push(c.overlap_blocks);
        out.score.push(crate::score::cost(
            c,
            request.prompt_blocks,
            request.block_size,
            routing,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tests::cand;

    fn workers(candidates: &[Candidate]) -> Vec<Arc<Worker>> {
        candidates.iter().map(|c| c.worker.clone()).collect()
    }

    fn ids(snapshot: &Snapshot, indices: &[u32]) -> Vec<String> {
        indices
            .iter()
            .map(|&i| snapshot.table.workers()[i as usize].id.clone())
            .collect()
    }

    #[test]
    fn the_table_holds_while_the_workers_do_whatever_the_candidates() {
        let all: Vec<Candidate> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| cand(id, true, 0, 0))
            .collect();
        let pool = workers(&all);
        let table = PluginTable::default();
        let (first, indices) = table.locate(&pool, &all);
        assert_eq!(indices, [0, 1, 2, 3]);
        // Fewer candidates (one unhealthy), in another order: same table.
        let some = [all[3].clone(), all[1].clone(), all[2].clone()];
        let (second, indices) = table.locate(&pool, &some);
        assert_eq!(second.table.generation(), first.table.generation());
        assert_eq!(ids(&second, &indices), ["d", "b", "c"]);
        assert!(table.locate(&pool, &[]).1.is_empty());
    }

    #[test]
    fn a_joined_left_or_replaced_worker_makes_a_new_table() {
        let all: Vec<Candidate> = ["a", "b"].iter().map(|id| cand(id, true, 0, 0)).collect();
        let table = PluginTable::default();
        let generation = |pool: &[Arc<Worker>], candidates: &[Candidate]| {
            let (snapshot, indices) = table.locate(pool, candidates);
            assert_eq!(
                ids(&snapshot, &indices),
                candidates
                    .iter()
                    .map(|c| c.worker.id.clone())
                    .collect::<Vec<_>>()
            );
            snapshot.table.generation()
        };
        let start = generation(&workers(&all), &all);
        assert_eq!(generation(&workers(&all), &all[..1]), start);

        let joined = [all[0].clone(), all[1].clone(), cand("c", false, 0, 0)];
        let after_join = generation(&workers(&joined), &joined);
        assert_ne!(after_join, start);
        let left = generation(&workers(&joined[1..]), &joined[1..]);
        assert_ne!(left, after_join);
        // "b" again, but another worker: re-registered with other labels, say.
        let replaced = [cand("b", true, 0, 0), joined[2].clone()];
        assert_ne!(generation(&workers(&replaced), &replaced), left);
    }

    #[test]
    fn candidates_from_an_older_worker_set_still_find_their_worker() {
        let old = [cand("a", true, 0, 0), cand("gone", true, 0, 0)];
        let now = workers(&old[..1]);
        let (snapshot, indices) = PluginTable::default().locate(&now, &old);
        assert_eq!(ids(&snapshot, &indices), ["a", "gone"]);
    }

    #[test]
    fn figures_cross_with_what_is_known_of_them() {
        let fresh = cand("fresh", true, 0, 0);
        let mut reported = cand("reported", false, 3, 2);
        reported.load = Some(protocol::LoadReport {
            running: 5,
            waiting: 1,
            kv_blocks_used: 10,
            kv_blocks_total: 100,
            ..Default::default()
        });
        // Probed healthy, so only the report is flagged.
        *reported.worker.probe.lock().unwrap() = crate::health::ProbeState::Healthy { failures: 0 };
        let request = policy::Request {
            prompt_blocks: 4,
            block_size: 16,
        };
        let (candidates, routing) = ([fresh, reported], RoutingConfig::default());
        let out = policy_candidates(&candidates, vec![7, 3], &request, &routing);
        assert_eq!(out.worker, [7, 3]);
        assert_eq!(
            out.state,
            [CandidateState::UNPROBED, CandidateState::REPORTED]
        );
        assert_eq!((out.in_flight[1], out.overlap_blocks[1]), (3, 2));
        assert_eq!(
            (
                out.running,
                out.waiting,
                out.kv_blocks_used,
                out.kv_blocks_total
            ),
            (vec![0, 5], vec![0, 1], vec![0, 10], vec![0, 100])
        );
        let cost = |c| crate::score::cost(c, 4, 16, &routing);
        assert_eq!(out.score, candidates.iter().map(cost).collect::<Vec<_>>());
    }

    #[test]
    fn only_allow_listed_headers_reach_policies() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        let allowed = vec!["X-Tenant".to_string(), "x-missing".to_string()];
        assert_eq!(
            allowed_headers(&allowed, &headers),
            [("x-tenant".to_string(), "acme".to_string())]
        );
        assert!(allowed_headers(&[], &headers).is_empty());
    }
}
