//! The policy host: routing policies as WebAssembly components of the
//! `llmgw:policy` world, compiled once per version and called per request.
//!
//! `engine` holds the one wasmtime engine and linker of a gateway; `loaded`
//! is one compiled and initialised version with its recycled instances;
//! `slot` is a pool's policy in force, swapped whole; `watch` feeds slots
//! from a plugin directory. A plugin's crash (`PluginError`) is never a
//! decision (`Decision`): the caller falls back or fails closed.

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
mod watch;

#[cfg(test)]
mod tests;

pub use bindings::llmgw::policy::types::{
    Candidate as PolicyCandidate, Health, Label, Load, Request as RouteRequest,
};
pub use config::{OnError, PluginsConfig, PolicyBinding};
pub use decision::Decision;
pub use engine::PluginEngine;
pub use error::PluginError;
pub use loaded::{LoadedPolicy, PolicyInfo};
pub use slot::{PolicySlot, Refusal, SlotStatus};
pub use watch::{PluginWatcher, WatchHandle};
