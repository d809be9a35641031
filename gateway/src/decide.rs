//! Decide: the pool's WASM policy orders the candidates when one is in force,
//! the built-in policy otherwise. A plugin that fails (trap, timeout, out of
//! memory, invalid decision) never fails the gateway: the request falls back
//! to the built-in policy, or gets a 503 when `plugins.on_error` is
//! `fail_closed`.

use std::sync::Arc;
use std::time::Instant;

use protocol::{ApiError, ErrorKind};

use crate::candidates::Candidate;
use crate::config::Config;
use crate::metrics;
use crate::plugin::{Decision, Health, Label, Load, OnError, PolicyCandidate, RouteRequest};
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
    let request = policy::Request {
        prompt_blocks: facts.prompt_blocks,
        block_size: pool.block_size,
    };
    let Some(plugin) = pool.policy.current() else {
        return Ok(builtin(config, pool, candidates, &request));
    };
    let view: Vec<PolicyCandidate> = candidates
        .iter()
        .map(|c| candidate_view(c, &request, config))
        .collect();
    let route_request = RouteRequest {
        model: facts.model.to_string(),
        pool: pool.name.clone(),
        stream: facts.stream,
        prompt_tokens: facts.prompt_tokens as u32,
        block_size: pool.block_size as u32,
        session_key: facts.session_key.clone(),
        headers: allowed_headers(&config.plugins.headers, facts.headers),
        gateway_zone: config.zone.clone(),
        attempt: 1,
    };
    match call(|| plugin.route(&route_request, &view)) {
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
                OnError::Fallback => Ok(builtin(config, pool, candidates, &request)),
                OnError::FailClosed => Err(ApiError::new(
                    ErrorKind::Overloaded,
                    "the routing policy failed; retry later",
                )),
            }
        }
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
    request: &policy::Request,
) -> Vec<Arc<Worker>> {
    policy::order(
        candidates,
        request,
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

/// A candidate as plugins see it, with the built-in cost as its score.
fn candidate_view(c: &Candidate, request: &policy::Request, config: &Config) -> PolicyCandidate {
    let health = if c.worker.breaker.lock().unwrap().name(Instant::now()) == "half_open" {
        Health::HalfOpen
    } else if c.worker.probe.lock().unwrap().name() == "unknown" {
        Health::Unknown
    } else {
        Health::Healthy
    };
    let report = |f: fn(&protocol::LoadReport) -> usize| c.load.as_ref().map(|l| f(l) as u32);
    PolicyCandidate {
        id: c.worker.id.clone(),
        zone: c.worker.zone.clone(),
        labels: c
            .worker
            .labels
            .iter()
            .map(|(k, v)| Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        health,
        load: Load {
            in_flight: c.in_flight,
            running: report(|l| l.running),
            waiting: report(|l| l.waiting),
            kv_blocks_used: report(|l| l.kv_blocks_used),
            kv_blocks_total: report(|l| l.kv_blocks_total),
        },
        overlap_blocks: c.overlap_blocks,
        score: crate::score::cost(
            c,
            request.prompt_blocks,
            request.block_size,
            &config.routing,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
