//! The host against real components: the example policies, the hostile one,
//! and swaps. The components are built once per test run (see `wasm`).

mod examples;
mod hostile;
mod swap;
mod wasm;

use std::sync::OnceLock;

use super::sample;
use super::{
    Decision, LoadedPolicy, PluginEngine, PluginsConfig, PolicyCandidates, PolicyEngine,
    RouteRequest, Tier, WorkerTable,
};

/// One engine for every test: engines reserve address space and run a ticker.
///
/// Deadlines are generous because tests share two cores with compilations;
/// the hostile cases need a deadline, not a short one.
fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = PluginsConfig {
            call_timeout_ms: 200,
            init_timeout_ms: 500,
            max_instances: 128,
            ..PluginsConfig::default()
        };
        PluginEngine::with_seed(&config, 7).expect("engine")
    })
}

/// Both tiers, for what must hold whichever compiler built the code.
const TIERS: [Tier; 2] = [Tier::Baseline, Tier::Optimized];

fn load(plugin: &str, config: &str) -> Result<LoadedPolicy, super::PluginError> {
    load_at(Tier::Optimized, plugin, config)
}

fn load_at(tier: Tier, plugin: &str, config: &str) -> Result<LoadedPolicy, super::PluginError> {
    LoadedPolicy::load(
        engine(),
        tier,
        plugin,
        "1.0.0",
        &wasm::bytes(plugin),
        config,
    )
}

/// A pool's workers, every one a candidate in the order given, referring to
/// the table in reverse: the host must not care, and the SDK in the guest
/// must keep a candidate's position apart from its worker's index.
struct Pool {
    table: WorkerTable,
    candidates: PolicyCandidates,
}

/// A worker: id, zone and labels.
type Spec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

fn pool(workers: &[Spec<'_>]) -> Pool {
    let n = workers.len() as u32;
    Pool {
        table: WorkerTable::new(
            workers
                .iter()
                .rev()
                .map(|(id, zone, labels)| (sample::worker(id, zone, labels), PolicyEngine::Llmgw))
                .collect(),
        ),
        candidates: sample::candidates_of(&(0..n).rev().collect::<Vec<_>>()),
    }
}

impl Pool {
    fn route(
        &self,
        policy: &LoadedPolicy,
        request: &RouteRequest,
    ) -> Result<Decision, super::PluginError> {
        self.route_as(policy, request, &super::nobody())
    }

    fn route_as(
        &self,
        policy: &LoadedPolicy,
        request: &RouteRequest,
        caller: &super::PolicyCaller,
    ) -> Result<Decision, super::PluginError> {
        policy.route(request, &self.table, &self.candidates, caller)
    }

    /// The ids a decision routes to, in order.
    fn routed(&self, decision: &Decision) -> Vec<&str> {
        match decision {
            Decision::Route(order) => order
                .iter()
                .map(|&i| {
                    let worker = self.candidates.worker[i] as usize;
                    self.table.workers()[worker].id.as_str()
                })
                .collect(),
            Decision::Reject { status, message } => panic!("rejected {status}: {message}"),
        }
    }
}

fn request(zone: &str, session_key: Option<&str>) -> RouteRequest {
    sample::request(zone, session_key)
}
