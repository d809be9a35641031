//! A worker's `/health` answer: who it is and how loaded it is.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ok`, or `draining` while the worker finishes its last requests.
    pub status: String,
    pub worker_id: String,
    pub model: String,
    pub engine: String,
    /// Where the engine computes: `cpu`, `cuda`, or `sim` (simulated compute).
    /// Absent from workers older than the field.
    #[serde(default)]
    pub backend: String,
    pub block_size: usize,
    pub load: LoadReport,
}

/// Load figures of one worker at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Prompt tokens still to prefill across running and waiting sequences.
    #[serde(default)]
    pub prefill_tokens_pending: usize,
    /// Tokens generated per second over the last second or so.
    #[serde(default)]
    pub decode_tokens_per_s: f64,
}
