//! The gateway: an OpenAI-compatible proxy that routes each request to a
//! worker of the model's pool by health, zone and load, with failover.
//!
//! A request flows through the modules in this order: `server` (listeners,
//! tower layers) → `api` → `admit` → `parse` → `candidates` → `policy` →
//! `failover` (over `upstream`) → `stream` (relay back). `health` keeps the
//! worker states in `pools` current; `admin` reports them. `live` is the
//! config and registry in force, which `control` swaps as etcd changes.

pub mod admin;
pub mod admit;
pub mod api;
pub mod body;
pub mod candidates;
pub mod config;
pub mod control;
pub mod decide;
pub mod error;
pub mod failover;
pub mod health;
pub mod index;
pub mod live;
pub mod metrics;
pub mod mirror;
pub mod parse;
pub mod plugin;
pub mod plugin_table;
pub mod policy;
pub mod pools;
pub mod prefix;
pub mod probe;
pub mod score;
pub mod server;
pub mod stream;
pub mod tls;
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
