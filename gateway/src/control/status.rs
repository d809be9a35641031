//! What the control plane reports in `/status` and metrics: whether etcd
//! answers, the revision in force, and the last change refused.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlStatus {
    /// This gateway's id under `{prefix}/gateways/`.
    pub gateway_id: String,
    pub etcd: Connection,
    /// The last etcd revision seen and applied.
    pub revision: i64,
    /// The revision of the routing document in force; `None`: this gateway's file.
    pub config_revision: Option<i64>,
    /// The revision of a routing document refused for a reason that may
    /// pass (a bound plugin not published yet, a load that timed out): it
    /// is tried again when a plugin key changes, and now and then.
    pub pending_config_revision: Option<i64>,
    /// Workers registered in etcd and routed to.
    pub registered_workers: usize,
    /// Registrations ignored, and why (no such pool, a model it does not
    /// serve, another block size, a static worker's id, bad JSON).
    pub ignored_registrations: Vec<String>,
    /// Changes applied and refused since start.
    pub applied: u64,
    pub refused: u64,
    /// The last change refused, until a routing document applies.
    pub last_refusal: Option<ConfigRefusal>,
    /// Set while this gateway serves the state it saved locally
    /// (`etcd.snapshot`) because etcd has not answered since it started.
    pub from_saved_state: Option<SavedState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SavedState {
    /// The etcd revision it was taken at.
    pub revision: i64,
    /// Milliseconds since the Unix epoch.
    pub saved_at_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    #[default]
    Connecting,
    Connected,
    Disconnected,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigRefusal {
    pub revision: i64,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The control plane's state, shared with the admin listener.
#[derive(Default)]
pub struct Control {
    status: Mutex<ControlStatus>,
}

impl Control {
    pub fn status(&self) -> ControlStatus {
        self.lock().clone()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut ControlStatus)) {
        change(&mut self.lock());
    }

    pub(super) fn refuse(&self, revision: i64, reason: String) {
        tracing::warn!(revision, %reason, "etcd config refused; the last good config keeps serving");
        metrics::control_change("refused");
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut status = self.lock();
        status.refused += 1;
        status.last_refusal = Some(ConfigRefusal {
            revision,
            reason,
            at_ms,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
