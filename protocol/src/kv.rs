//! KV-cache events: what a worker reports as its prefix cache changes, and the
//! messages that carry them (and load) from workers to gateways.

use serde::{Deserialize, Serialize};

use crate::blocks::BlockHash;
use crate::health::LoadReport;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KvEvent {
    /// `hashes` became cached, each the child of the one before; the first the child of `parent`.
    Stored {
        parent: Option<BlockHash>,
        hashes: Vec<BlockHash>,
    },
    /// `hashes` are no longer cached.
    Removed { hashes: Vec<BlockHash> },
    /// Nothing is cached: sent first, so a router drops what a previous run of this worker held.
    Cleared,
}

/// Identifies one run of a worker process: a restarted worker has a new
/// instance, and whatever the router knew of the old one is void.
pub type Instance = u64;

/// A batch of KV events of one worker, in order. `id` grows by one per
/// message and per instance, so a receiver can tell it missed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEventBatch {
    pub worker_id: String,
    pub instance: Instance,
    pub id: u64,
    pub events: Vec<KvEvent>,
}

/// Everything a worker holds, answered on request so a router can resync after
/// a gap: the state after event batch `last_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshot {
    pub worker_id: String,
    pub instance: Instance,
    pub last_id: u64,
    pub block_size: usize,
    pub blocks: Vec<BlockHash>,
}

/// A worker's load, published when it changes and as a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadMessage {
    pub worker_id: String,
    pub instance: Instance,
    pub block_size: usize,
    pub load: LoadReport,
}
