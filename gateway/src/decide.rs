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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use protocol::{ApiError, ErrorKind};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::candidates::Candidate;
use crate::config::{Config, RoutingConfig};
use crate::health::ProbeState;
use crate::metrics;
use crate::plugin::table::candidates_on;
use crate::plugin::{
    record, CandidateState, Decision, LoadedPolicy, OnError, PluginError, PolicyCaller,
    PolicyCandidates, RouteRequest, WorkerTable,
};
use crate::plugin_table::TableSnapshot;
use crate::policy;
use crate::pools::Pool;
use crate::shadow::Live;

/// What the policy stage knows of the request.
pub struct Facts<'a> {
    pub model: &'a str,
    pub stream: bool,
    pub prompt_tokens: usize,
    pub prompt_blocks: usize,
    pub session_key: Option<String>,
    pub headers: &'a http::HeaderMap,
    /// Its API key's tenant and priority class.
    pub caller: PolicyCaller,
}

/// The candidates to try, in order, or the policy's rejection. `rng` breaks
/// ties, whichever policy decides. Workers of a zone shifted away come
/// after all others, whatever the policy said: they take new requests only
/// when nothing else can, the first attempt's failover included.
pub fn decide(
    config: &Config,
    pool: &Pool,
    candidates: Vec<Candidate>,
    facts: &Facts<'_>,
    rng: &mut impl Rng,
) -> Result<Vec<Candidate>, ApiError> {
    let mut order = policy_order(config, pool, candidates, facts, rng)?;
    order.sort_by_key(|c| c.worker.zone_shifted.load(Ordering::Relaxed));
    Ok(order)
}

fn policy_order(
    config: &Config,
    pool: &Pool,
    mut candidates: Vec<Candidate>,
    facts: &Facts<'_>,
    rng: &mut impl Rng,
) -> Result<Vec<Candidate>, ApiError> {
    let Some(plugin) = pool.policy.current() else {
        let logged = logged(config, rng).then(|| {
            let mut listed = candidates.clone();
            (
                PluginInputs::new(config, pool, &mut listed, facts, rng),
                listed,
            )
        });
        let order = builtin(config, pool, candidates, facts, rng);
        if let Some((inputs, listed)) = logged {
            // Positions of the built-in order among the candidates as listed.
            let positions = order
                .iter()
                .filter_map(|c| {
                    listed
                        .iter()
                        .position(|l| Arc::ptr_eq(&l.worker, &c.worker))
                })
                .collect();
            log_decision(config, None, &inputs, &Ok(Decision::Route(positions)));
        }
        return Ok(order);
    };
    let inputs = PluginInputs::new(config, pool, &mut candidates, facts, rng);
    let info = plugin.info();
    let span = tracing::info_span!("policy", plugin = %info.plugin, version = %info.version,
        outcome = tracing::field::Empty);
    let decision = span.in_scope(|| call(|| inputs.ask(&plugin)));
    if logged(config, rng) {
        let version = record::Version {
            plugin: info.plugin.clone(),
            version: info.version.clone(),
        };
        log_decision(config, Some(version), &inputs, &decision);
    }
    // When it fails, the plugin's previous version decides first: it knows
    // the plugin's intent (workers it keeps requests off), the built-in
    // policy does not.
    let previous = match &decision {
        Err(e) => {
            metrics::policy_error(&pool.name, e.kind());
            tracing::warn!(pool = %pool.name, plugin = %info.plugin, version = %info.version,
                kind = e.kind(), error = %e, "policy failed");
            pool.policy
                .previous()
                .map(|p| (p.info().version.clone(), call(|| inputs.ask(&p))))
        }
        Ok(_) => None,
    };
    shadow(pool, &decision, inputs, rng);
    span.record(
        "outcome",
        match &decision {
            Ok(Decision::Route(_)) => "route",
            Ok(Decision::Reject { .. }) => "reject",
            Err(e) => e.kind(),
        },
    );
    match decision {
        Ok(Decision::Route(order)) => {
            metrics::policy_decision(&pool.name, "route");
            Ok(order.into_iter().map(|i| candidates[i].clone()).collect())
        }
        Ok(Decision::Reject { status, message }) => {
            metrics::policy_decision(&pool.name, "reject");
            tracing::info!(pool = %pool.name, plugin = %info.plugin, version = %info.version,
                status, %message, "policy rejected the request");
            Err(ApiError::new(ErrorKind::Rejected(status), message))
        }
        Err(_) => {
            match previous {
                Some((version, Ok(Decision::Route(order)))) => {
                    metrics::policy_decision(&pool.name, "route");
                    tracing::info!(pool = %pool.name, plugin = %info.plugin, %version,
                        "the previous version decided");
                    return Ok(order.into_iter().map(|i| candidates[i].clone()).collect());
                }
                Some((_, Ok(Decision::Reject { status, message }))) => {
                    metrics::policy_decision(&pool.name, "reject");
                    return Err(ApiError::new(ErrorKind::Rejected(status), message));
                }
                Some((version, Err(e))) => {
                    metrics::policy_error(&pool.name, e.kind());
                    tracing::warn!(pool = %pool.name, plugin = %info.plugin, %version,
                        kind = e.kind(), error = %e, "the previous version failed too");
                }
                None => {}
            }
            // A policy that declared it must fail closed, or a gateway that says so.
            if info.fail_closed || config.plugins.on_error == OnError::FailClosed {
                return Err(ApiError::new(
                    ErrorKind::Overloaded,
                    "the routing policy failed; retry later",
                ));
            }
            Ok(builtin(config, pool, candidates, facts, rng))
        }
    }
}

/// What a plugin is asked with for one request, built as every request
/// builds it (public so `bench policy` times what a request pays).
pub struct PluginInputs {
    pub request: RouteRequest,
    table: Arc<TableSnapshot>,
    /// In the order of the gateway's candidates, so a decision's positions
    /// index those too.
    pub candidates: PolicyCandidates,
    pub caller: PolicyCaller,
}

impl PluginInputs {
    /// Shuffles `candidates` first: a plugin that keeps the order it was
    /// given on ties (a stable sort by score, say) then breaks them at
    /// random, as the built-in policy does, instead of piling new prefixes
    /// onto the first worker of the pool.
    pub fn new(
        config: &Config,
        pool: &Pool,
        candidates: &mut Vec<Candidate>,
        facts: &Facts<'_>,
        rng: &mut impl Rng,
    ) -> Self {
        // Located in the pool's order, which the table's lookup is fast for.
        let (table, workers) = pool
            .plugin_table
            .locate(&pool.workers, candidates.iter().map(|c| &c.worker));
        let mut paired: Vec<(Candidate, u32)> = candidates.drain(..).zip(workers).collect();
        paired.shuffle(rng);
        let workers = paired
            .into_iter()
            .map(|(c, w)| {
                candidates.push(c);
                w
            })
            .collect();
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
            caller: facts.caller.clone(),
            candidates: policy_candidates(
                candidates,
                workers,
                &score_request(pool, facts, candidates),
                &config.routing,
            ),
        }
    }

    /// The table `candidates` refer into.
    pub fn table(&self) -> &WorkerTable {
        self.table.table()
    }

    /// The zone of the candidate at `position`.
    pub fn zone_of(&self, position: usize) -> &str {
        let worker = self.candidates.worker[position] as usize;
        &self.table().workers()[worker].zone
    }

    /// `plugin`'s decision on these inputs; see [`LoadedPolicy::route`].
    pub fn ask(&self, plugin: &LoadedPolicy) -> Result<Decision, PluginError> {
        plugin.route(&self.request, self.table(), &self.candidates, &self.caller)
    }
}

fn score_request(pool: &Pool, facts: &Facts<'_>, candidates: &[Candidate]) -> policy::Request {
    policy::Request::new(facts.prompt_blocks, pool.block_size, candidates)
}

/// Whether this decision is one of the sample `plugins.decision_log` keeps.
fn logged(config: &Config, rng: &mut impl Rng) -> bool {
    let plugins = &config.plugins;
    plugins.decision_log.is_some() && rng.random::<f64>() < plugins.decision_log_sample
}

fn log_decision(
    config: &Config,
    policy: Option<record::Version>,
    inputs: &PluginInputs,
    decision: &Result<Decision, PluginError>,
) {
    let Some(log) = config
        .plugins
        .decision_log
        .as_deref()
        .and_then(record::log_at)
    else {
        return;
    };
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let parts = (
        &inputs.request,
        inputs.table(),
        &inputs.candidates,
        &inputs.caller,
    );
    log.append(record::Logged::of(policy, parts, decision, ts_ms));
}

/// Sends a sample of requests' inputs to the pool's shadow version, with
/// the live decision to compare against (none when the live one failed).
fn shadow(
    pool: &Pool,
    decision: &Result<Decision, PluginError>,
    inputs: PluginInputs,
    rng: &mut impl Rng,
) {
    if pool.shadow_sample <= 0.0 || rng.random::<f64>() >= pool.shadow_sample {
        return;
    }
    let live = match decision {
        Ok(Decision::Route(order)) => Live::Route(order[0]),
        Ok(Decision::Reject { status, .. }) => Live::Reject(*status),
        Err(_) => return,
    };
    pool.shadow.submit(&pool.name, inputs, live);
}

/// Runs a plugin call where it may block: a guest's WASI calls (a panic
/// message written to stderr, say) block on the runtime, which tokio forbids
/// on a worker thread unless it was told with `block_in_place`.
pub(crate) fn call<T>(f: impl FnOnce() -> T) -> T {
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
    rng: &mut impl Rng,
) -> Vec<Candidate> {
    let request = score_request(pool, facts, &candidates);
    policy::order(candidates, &request, &config.routing, rng, pool.next_turn())
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
    let mut out = candidates_on(workers);
    // Once per request: a clock read per candidate would cost more than the
    // rest of its figures.
    let now = Instant::now();
    for c in candidates {
        let mut state = CandidateState::empty();
        if c.worker.breaker.lock().unwrap().is_half_open(now) {
            state |= CandidateState::HALF_OPEN;
        }
        if *c.worker.probe.lock().unwrap() == ProbeState::Unknown {
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
        out.score.push(crate::score::cost(c, request, routing));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tests::cand;

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
        *reported.worker.probe.lock().unwrap() = ProbeState::Healthy { failures: 0 };
        let request = policy::Request::new(4, 16, &[]);
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
        let cost = |c| crate::score::cost(c, &request, &routing);
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
