//! What a routing document would route to, checked against the live fleet
//! (registrations, cordons) before `gatewayctl` writes it: each pool's
//! workers, the order its policy puts them in for a plain request, and the
//! mistakes that take a pool down. Refused, unless forced: a pool left with
//! no worker that has one now or has registrations it would ignore (a block
//! size or model no worker has), a policy that refuses a plain request with
//! a 5xx (a colour or version no worker carries), an unversioned plugin
//! binding (any later `plugin put` would roll out at once). Warned: a pool
//! losing more than half its workers, a pool with no worker yet.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use gateway::config::{RawPool, RoutingDoc};
use gateway::engine::EngineKind;
use gateway::plugin::{
    CandidateState, Decision, Label, LoadedPolicy, PolicyCandidates, PolicyEngine, PolicyWorker,
    RouteRequest, WorkerTable,
};
use protocol::control::Registration;

/// The fleet a document is checked against.
pub struct Fleet {
    pub registrations: Vec<Registration>,
    /// (pool, id) of the cordoned workers.
    pub cordoned: HashSet<(String, String)>,
}

/// What a document would do.
#[derive(Default)]
pub struct Preview {
    /// One line per pool: where it routes.
    pub lines: Vec<String>,
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

/// A worker a pool could route to.
struct Eligible {
    worker: PolicyWorker,
    engine: PolicyEngine,
}

/// `doc` over `fleet`, with the plugins it binds loaded (by pool); `before`
/// is the document it replaces.
pub fn preview(
    doc: &RoutingDoc,
    before: Option<&RoutingDoc>,
    fleet: &Fleet,
    policies: &HashMap<String, LoadedPolicy>,
) -> Preview {
    let mut preview = Preview::default();
    for pool in &doc.pools {
        let (eligible, excluded) = eligible(pool, fleet);
        if let Some(binding) = pool.policy.as_ref().filter(|b| b.version.is_none()) {
            let message = format!(
                "pool `{}` binds its plugin without a version: any later `plugin put` would serve at once; pin one",
                pool.name
            );
            // Refused where a change brings it in; one already in force is
            // only recalled, so editing its config stays possible.
            let already = before
                .and_then(|b| b.pools.iter().find(|p| p.name == pool.name))
                .and_then(|p| p.policy.as_ref())
                .is_some_and(|b| b.plugin == binding.plugin && b.version.is_none());
            if already {
                preview.warnings.push(message);
            } else {
                preview.refusals.push(message);
            }
        }
        let shut_out = if excluded.is_empty() {
            String::new()
        } else {
            format!("; {} excluded", excluded.join(", "))
        };
        let had = before
            .and_then(|b| b.pools.iter().find(|p| p.name == pool.name))
            .map(|p| eligible_count(p, fleet));
        if eligible.is_empty() {
            // A pool whose workers have not registered yet is how a fleet starts.
            let message = format!("pool `{}` would have no worker{shut_out}", pool.name);
            if had.unwrap_or(0) > 0 || !excluded.is_empty() {
                preview.refusals.push(message);
            } else {
                preview
                    .warnings
                    .push(format!("{message} until workers register for it"));
            }
            continue;
        }
        let order = match policies.get(&pool.name) {
            Some(policy) => match ask(policy, pool, &eligible) {
                Ok(order) => order,
                Err(refusal) => {
                    preview
                        .refusals
                        .push(format!("pool `{}`: {refusal}", pool.name));
                    continue;
                }
            },
            None => eligible.iter().map(|e| e.worker.id.clone()).collect(),
        };
        preview.lines.push(format!(
            "pool `{}` routes to {}{shut_out}",
            pool.name,
            order.join(", then ")
        ));
        if let Some(had) = had.filter(|&had| eligible.len() * 2 < had) {
            preview.warnings.push(format!(
                "pool `{}` goes from {had} workers to {}",
                pool.name,
                eligible.len()
            ));
        }
    }
    preview
}

fn eligible_count(pool: &RawPool, fleet: &Fleet) -> usize {
    eligible(pool, fleet).0.len()
}

/// The workers `pool` may route to (its static ones, and registrations of
/// its model and block size not cordoned), and why others are not.
fn eligible(pool: &RawPool, fleet: &Fleet) -> (Vec<Eligible>, Vec<String>) {
    let labels = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .iter()
            .map(|(k, v)| Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    let mut eligible: Vec<Eligible> = pool
        .workers
        .iter()
        .map(|w| Eligible {
            worker: PolicyWorker {
                id: w.id.clone(),
                zone: w.zone.clone(),
                labels: labels(&w.labels),
            },
            engine: w.engine.unwrap_or(pool.engine).into(),
        })
        .collect();
    let mut excluded = Vec::new();
    for r in fleet.registrations.iter().filter(|r| r.pool == pool.name) {
        let why = if pool.workers.iter().any(|w| w.id == r.id) {
            Some("a static worker has its id".to_string())
        } else if !pool.models.contains(&r.model) {
            Some(format!("serves {}", r.model))
        } else if r.block_size != pool.block_size {
            Some(format!(
                "block size {}, not {}",
                r.block_size, pool.block_size
            ))
        } else if fleet.cordoned.contains(&(r.pool.clone(), r.id.clone())) {
            Some("cordoned".to_string())
        } else {
            None
        };
        match why {
            Some(why) => excluded.push(format!("{} ({why})", r.id)),
            None => eligible.push(Eligible {
                worker: PolicyWorker {
                    id: r.id.clone(),
                    zone: r.zone.clone(),
                    labels: labels(&r.labels),
                },
                engine: r
                    .engine_kind
                    .as_deref()
                    .and_then(|k| EngineKind::from_str(k).ok())
                    .unwrap_or_default()
                    .into(),
            }),
        }
    }
    (eligible, excluded)
}

/// The ids `policy` orders `eligible` in for a plain request, or why it
/// refuses one with a 5xx.
fn ask(
    policy: &LoadedPolicy,
    pool: &RawPool,
    eligible: &[Eligible],
) -> Result<Vec<String>, String> {
    let n = eligible.len();
    let table = WorkerTable::new(
        eligible
            .iter()
            .map(|e| (e.worker.clone(), e.engine))
            .collect(),
    );
    let zeros = || vec![0u32; n];
    let candidates = PolicyCandidates {
        worker: (0..n as u32).collect(),
        state: vec![CandidateState::empty(); n],
        in_flight: zeros(),
        running: zeros(),
        waiting: zeros(),
        kv_blocks_used: zeros(),
        kv_blocks_total: zeros(),
        overlap_blocks: zeros(),
        score: vec![0.0; n],
    };
    let request = RouteRequest {
        model: pool.models.first().cloned().unwrap_or_default(),
        pool: pool.name.clone(),
        stream: false,
        prompt_tokens: 1,
        block_size: pool.block_size as u32,
        session_key: None,
        headers: Vec::new(),
        gateway_zone: eligible[0].worker.zone.clone(),
        attempt: 1,
    };
    let info = policy.info();
    match policy.route(&request, &table, &candidates, &gateway::plugin::nobody()) {
        Ok(Decision::Route(order)) => Ok(order.into_iter().map(|i| eligible[i].worker.id.clone()).collect()),
        Ok(Decision::Reject { status, message }) if status >= 500 => Err(format!(
            "its policy ({} {}) refuses a plain request over all {n} of its workers: {status} {message}",
            info.plugin, info.version
        )),
        // A 4xx is about the request (a header it wants, say), not the pool.
        Ok(Decision::Reject { .. }) => Ok(eligible.iter().map(|e| e.worker.id.clone()).collect()),
        Err(e) => Err(format!("its policy ({} {}) failed on a plain request: {e}", info.plugin, info.version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str, model: &str) -> Registration {
        Registration {
            id: id.into(),
            pool: "p".into(),
            url: format!("http://{id}:1"),
            zone: "a".into(),
            labels: Default::default(),
            model: model.into(),
            block_size: 16,
            engine: "sim/sim".into(),
            started_at_ms: 0,
            engine_kind: None,
            metrics_url: None,
            kv_events: None,
            kv_replay: None,
        }
    }

    fn doc(models: &str) -> RoutingDoc {
        RoutingDoc::from_toml(&format!("[[pools]]\nname = \"p\"\nmodels = {models}\n")).unwrap()
    }

    #[test]
    fn losing_most_of_a_pool_is_warned_and_losing_all_refused() {
        let fleet = Fleet {
            registrations: vec![
                registration("m1", "m"),
                registration("n1", "n"),
                registration("n2", "n"),
                registration("n3", "n"),
            ],
            cordoned: HashSet::new(),
        };
        let policies = HashMap::new();
        let before = doc(r#"["m", "n"]"#);
        let most = preview(&doc(r#"["m"]"#), Some(&before), &fleet, &policies);
        assert!(most.refusals.is_empty());
        assert_eq!(most.warnings, ["pool `p` goes from 4 workers to 1"]);
        assert_eq!(
            most.lines,
            ["pool `p` routes to m1; n1 (serves n), n2 (serves n), n3 (serves n) excluded"]
        );
        let all = preview(&doc(r#"["x"]"#), Some(&before), &fleet, &policies);
        assert_eq!(all.refusals.len(), 1, "{:?}", all.refusals);
        // A pool no worker has registered for yet is how a fleet starts.
        let empty = Fleet {
            registrations: Vec::new(),
            cordoned: HashSet::new(),
        };
        let start = preview(&doc(r#"["m"]"#), None, &empty, &policies);
        assert!(start.refusals.is_empty() && start.warnings.len() == 1);
    }
}
