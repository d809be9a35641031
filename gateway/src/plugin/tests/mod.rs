//! The host against real components: the example policies, the hostile one,
//! and swaps. The components are built once per test run (see `wasm`).

mod examples;
mod hostile;
mod swap;
mod wasm;

use std::sync::OnceLock;

use super::sample;
use super::{
    Decision, LoadedPolicy, PluginEngine, PluginsConfig, PolicyCandidate, RouteRequest, Tier,
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

fn candidate(id: &str, zone: &str, labels: &[(&str, &str)]) -> PolicyCandidate {
    sample::candidate(id, zone, labels)
}

fn request(zone: &str, session_key: Option<&str>) -> RouteRequest {
    sample::request(zone, session_key)
}

/// The ids a decision routes to, in order.
fn routed<'c>(decision: &Decision, candidates: &'c [PolicyCandidate]) -> Vec<&'c str> {
    match decision {
        Decision::Route(order) => order.iter().map(|&i| candidates[i].id.as_str()).collect(),
        Decision::Reject { status, message } => panic!("rejected {status}: {message}"),
    }
}
