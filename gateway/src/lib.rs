//! The gateway: an OpenAI-compatible proxy that routes each request to a
//! worker of the model's pool by health, zone and load, with failover.
//!
//! A request flows through the modules in this order: `server` (listeners)
//! → `context` (request id, span, backstop) → `api` → `admit` → `parse` →
//! `tokenize` → `prefix` → `candidates` → `decide` (a WASM `plugin`, or the built-in `policy` over
//! `score`) → `failover` (over `upstream`) → `relay` (back to the client,
//! continuing a broken stream elsewhere through `failover` again). Each
//! `worker` carries its `health` state machines, which `probe` (by the
//! conventions of the worker's `engine`) and `failover` feed; `pools`
//! groups workers by model; `admin` reports them.
//! `live` is the config and registry in force, which `control` swaps as etcd
//! changes and `mirror` keeps fed with the workers' KV events and load.
//!
//! Modules other crates use (benches, `gatewayctl`) are public; the rest is not.

mod admin;
mod admit;
mod api;
mod body;
mod canary;
pub mod candidates;
pub mod config;
mod context;
pub mod control;
pub mod decide;
pub mod engine;
mod error;
mod failover;
mod health;
pub mod index;
mod jsonl;
mod kv_zmq;
mod live;
mod metrics;
mod mirror;
pub mod parse;
pub mod plugin;
mod plugin_table;
pub mod policy;
pub mod pools;
mod prefix;
pub mod probe;
pub mod rehash;
pub mod relay;
mod routable;
mod score;
mod server;
pub mod shadow;
pub mod tenancy;
mod tls;
pub mod tokenize;
pub mod upstream;
pub mod worker;

pub use config::Config;
pub use server::{start, start_on_bus, Handle, StartError};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
