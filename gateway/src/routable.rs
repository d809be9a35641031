//! Whether a pool can route a request at all: some worker may take traffic
//! now, and its policy, offered every one of them for a plain request, does
//! not refuse it with a 5xx (a 4xx is about the request, not the pool). What
//! `/ready` asks of the pools in force, and the control plane of a routing
//! document before applying it.

use std::time::{Duration, Instant};

use crate::candidates;
use crate::config::Config;
use crate::decide::{self, Facts, PluginInputs};
use crate::plugin::{Decision, LoadedPolicy};
use crate::pools::Pool;
use crate::prefix::Cached;

/// Why `pool` cannot route, if it cannot, under `config` and `policy` (the
/// built-in one when `None`).
pub fn problem(
    config: &Config,
    pool: &Pool,
    policy: Option<&LoadedPolicy>,
    now: Instant,
) -> Option<String> {
    if pool.workers.is_empty() {
        return Some(format!("pool `{}` has no worker", pool.name));
    }
    let cached = vec![Cached::default(); pool.workers.len()];
    let mut candidates = candidates::gather(pool, &cached, &config.zone, now, Duration::ZERO);
    if candidates.is_empty() {
        return Some(format!(
            "no worker of pool `{}` may take traffic (all {} unhealthy or ejected)",
            pool.name,
            pool.workers.len()
        ));
    }
    let policy = policy?;
    let headers = http::HeaderMap::new();
    let facts = Facts {
        model: pool.models.first().map_or("", String::as_str),
        stream: false,
        prompt_tokens: 1,
        prompt_blocks: 0,
        session_key: None,
        headers: &headers,
        caller: crate::plugin::nobody(),
    };
    let inputs = PluginInputs::new(config, pool, &mut candidates, &facts, &mut rand::rng());
    match decide::call(|| inputs.ask(policy)) {
        Ok(Decision::Reject { status, message }) if status >= 500 => Some(format!(
            "the policy of pool `{}` ({} {}) refuses a plain request over all {} of its routable workers: {status} {message}",
            pool.name,
            policy.info().plugin,
            policy.info().version,
            candidates.len()
        )),
        // A policy that fails falls back to the built-in one (or fails
        // closed, which the operator chose): not this check's to judge.
        _ => None,
    }
}
