//! Shadow decisions: a pool may bind a second version of its plugin in
//! shadow (`policy.shadow`). For a sample of requests the live decision's
//! inputs go, after it was made, to a thread of their own where the shadow
//! version decides too; its answer is compared with the live one and
//! counted, never acted on. A request never waits for it: when the thread
//! is behind, a sample is skipped (and counted), so a shadow that loops or
//! traps costs the live path nothing but the CPU the thread takes.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::Serialize;

use crate::decide::PluginInputs;
use crate::metrics;
use crate::plugin::{Decision, LoadedPolicy, PolicySlot, SlotStatus};

/// Samples waiting for the shadow thread at most.
const BACKLOG: usize = 256;

/// Every `outcome` of `llmgw_shadow_decisions_total`.
pub const OUTCOMES: [&str; 7] = [
    "agree",
    "other_worker",
    "other_zone",
    "shadow_rejects",
    "shadow_routes",
    "error",
    "skipped",
];

/// A pool's shadow version and what it was seen to do.
pub struct Shadow {
    pub slot: Arc<PolicySlot>,
    stats: Mutex<Stats>,
}

/// How the shadow's first choices compared with the live ones, since its
/// version was loaded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub version: Option<String>,
    pub compared: u64,
    /// Same first worker, or both rejected.
    pub agree: u64,
    /// Another worker of the same zone first.
    pub other_worker: u64,
    /// A worker of another zone first.
    pub other_zone: u64,
    /// The shadow rejected what the live version routed.
    pub shadow_rejects: u64,
    /// The shadow routed what the live version rejected.
    pub shadow_routes: u64,
    /// Its failures by kind (trap, timeout, ...), not compared.
    pub errors: BTreeMap<&'static str, u64>,
    /// Samples dropped because the shadow thread was behind.
    pub skipped: u64,
}

/// The live decision, as positions into the inputs both versions see.
#[derive(Debug, Clone, Copy)]
pub enum Live {
    Route(usize),
    Reject(u16),
}

struct Job {
    shadow: Arc<Shadow>,
    policy: Arc<LoadedPolicy>,
    inputs: PluginInputs,
    live: Live,
    pool: String,
}

impl Shadow {
    pub fn new(pool: &str) -> Arc<Shadow> {
        Arc::new(Shadow {
            // Named apart in logs and status from the live version's slot.
            slot: Arc::new(PolicySlot::new(format!("{pool}:shadow"))),
            stats: Mutex::default(),
        })
    }

    /// Has the shadow version decide on `inputs` too, later, elsewhere.
    pub fn submit(self: &Arc<Self>, pool: &str, inputs: PluginInputs, live: Live) {
        let Some(policy) = self.slot.current() else {
            return;
        };
        let job = Job {
            shadow: Arc::clone(self),
            policy,
            inputs,
            live,
            pool: pool.to_string(),
        };
        match runner().try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                metrics::shadow_decision(pool, "skipped");
                job.shadow.stats(&job.policy, |s| s.skipped += 1);
            }
        }
    }

    pub fn status(&self, sample: f64) -> serde_json::Value {
        let slot: SlotStatus = self.slot.status();
        let stats = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let agreement = (stats.compared > 0).then(|| stats.agree as f64 / stats.compared as f64);
        serde_json::json!({
            "policy": slot.policy,
            "last_refusal": slot.last_refusal,
            "sample": sample,
            "agreement": agreement,
            "stats": stats,
        })
    }

    /// Updates the stats of `policy`'s version, starting them afresh for a new one.
    fn stats(&self, policy: &LoadedPolicy, update: impl FnOnce(&mut Stats)) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let version = &policy.info().version;
        if stats.version.as_ref() != Some(version) {
            *stats = Stats {
                version: Some(version.clone()),
                ..Stats::default()
            };
        }
        update(&mut stats);
    }
}

impl Job {
    fn run(self) {
        let decision = self.inputs.ask(&self.policy);
        let outcome = match (&decision, self.live) {
            (Err(e), _) => {
                let kind = e.kind();
                self.shadow
                    .stats(&self.policy, |s| *s.errors.entry(kind).or_default() += 1);
                metrics::shadow_decision(&self.pool, "error");
                return;
            }
            (Ok(Decision::Reject { .. }), Live::Reject(_)) => "agree",
            (Ok(Decision::Reject { .. }), Live::Route(_)) => "shadow_rejects",
            (Ok(Decision::Route(_)), Live::Reject(_)) => "shadow_routes",
            (Ok(Decision::Route(order)), Live::Route(live)) => {
                let first = order[0];
                if first == live {
                    "agree"
                } else if self.inputs.zone_of(first) == self.inputs.zone_of(live) {
                    "other_worker"
                } else {
                    "other_zone"
                }
            }
        };
        metrics::shadow_decision(&self.pool, outcome);
        self.shadow.stats(&self.policy, |s| {
            s.compared += 1;
            match outcome {
                "agree" => s.agree += 1,
                "other_worker" => s.other_worker += 1,
                "other_zone" => s.other_zone += 1,
                "shadow_rejects" => s.shadow_rejects += 1,
                _ => s.shadow_routes += 1,
            }
        });
    }
}

/// The shadow thread's queue, started on first use: one thread per
/// process, so shadows never take more than one core between them.
fn runner() -> &'static SyncSender<Job> {
    static RUNNER: OnceLock<SyncSender<Job>> = OnceLock::new();
    RUNNER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Job>(BACKLOG);
        std::thread::Builder::new()
            .name("policy-shadow".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job.run();
                }
            })
            .expect("spawning a thread only fails when the process is out of resources");
        tx
    })
}
