//! The policy host: routing policies as WebAssembly components of the
//! `llmgw:policy` world, compiled per version (quickly, then optimized) and
//! called per request.
//!
//! `engine` holds the wasmtime engines (baseline and optimized tier) and
//! linkers of a gateway; `loaded` is one compiled and initialised version
//! with its recycled instances, each sent a pool's `table` of workers only
//! when it changed; `slot` is a pool's policy in force, swapped
//! whole, and `upgrade` swaps in a version's optimized build once ready;
//! `watch` feeds slots from a plugin directory, polled when `wake` reports
//! a change and on an interval. A plugin's crash
//! (`PluginError`) is never a decision (`Decision`): the caller falls back
//! or fails closed.

mod bindings;
mod config;
mod deadline;
mod decision;
mod dir;
mod engine;
mod error;
mod host;
mod instance;
mod loaded;
pub mod record;
mod sample;
mod slot;
pub(crate) mod table;
mod upgrade;
mod wake;
mod watch;

#[cfg(test)]
mod tests;

pub use bindings::llmgw::policy::types::{
    Caller as PolicyCaller, Candidates as PolicyCandidates, Engine as PolicyEngine, Label,
    Priority as PolicyPriority, Request as RouteRequest, State as CandidateState,
    Worker as PolicyWorker,
};
pub use config::{OnError, PluginLimits, PluginsConfig, PolicyBinding, ShadowBinding};
pub use decision::Decision;
pub use dir::check as check_in_dir;
pub use engine::{PluginEngine, Tier};
pub use error::PluginError;
pub use host::nobody;
pub use loaded::{LoadedPolicy, PolicyInfo};
pub use slot::{PolicySlot, Prepared, Refusal, SlotStatus};
pub use table::WorkerTable;
pub use watch::{PluginWatcher, WatchHandle};

// For the etcd source, which selects versions and checks bytes as the directory does.
pub use dir::version_problem;
pub(crate) use dir::{highest, select as select_in_dir};
pub use loaded::sha256_hex;
pub(crate) use watch::{is_transient, RETRY_TRANSIENT};

/// Checks that `bytes` are a policy component this host can run, without
/// initialising it: its config comes later, with a pool's binding.
pub fn check_component(engine: &PluginEngine, bytes: &[u8]) -> Result<(), PluginError> {
    loaded::compile(engine, Tier::Baseline, bytes).map(drop)
}
