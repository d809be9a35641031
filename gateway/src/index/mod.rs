//! The per-pool prefix index: which workers hold which KV blocks, and how many
//! leading blocks of a prompt each one holds.
//!
//! Two kinds behind one answer shape ([`Overlaps`]): [`PrefixIndex`] is exact,
//! fed by the workers' own KV events; [`ApproxIndex`] stands in for engines
//! that publish none, remembering where the gateway itself sent each prefix.
//! Both are pure: events, decisions and the time come in as arguments, nothing
//! is locked inside, and the caller wraps them in whatever lock it needs.

mod approx;
mod exact;
mod hasher;
mod overlap;
mod slots;

pub use approx::{ApproxIndex, ApproxStats};
pub use exact::{Applied, IndexStats, PrefixIndex};
pub use overlap::Overlaps;
