//! The policy host: routing policies as WebAssembly components of the
//! `llmgw:policy` world, compiled per version (quickly, then optimized) and
//! called per request.
//!
//! `engine` holds the wasmtime engines (baseline and optimized tier) and
//! linkers of a gateway; `loaded` is one compiled and initialised version
//! with its recycled instances; `slot` is a pool's policy in force, swapped
//! whole, and `upgrade` swaps in a version's optimized build once ready;
//! `watch` feeds slots from a plugin directory. A plugin's crash
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
mod sample;
mod slot;
mod upgrade;
mod watch;

#[cfg(test)]
mod tests;

pub use bindings::llmgw::policy::types::{
    Candidate as PolicyCandidate, Health, Label, Load, Request as RouteRequest,
};
pub use config::{OnError, PluginsConfig, PolicyBinding};
pub use decision::Decision;
pub use engine::{PluginEngine, Tier};
pub use error::PluginError;
pub use loaded::{LoadedPolicy, PolicyInfo};
pub use slot::{PolicySlot, Refusal, SlotStatus};
pub use watch::{PluginWatcher, WatchHandle};
