//! The second stage of a load: a version served from its baseline (Winch)
//! build is compiled again by cranelift on a thread of the slot's own, and
//! the optimized build replaces it if the slot still runs that baseline code.
//!
//! One thread per slot at a time, and only the newest version waits: a
//! version replaced before its turn is never compiled, so a burst of deploys
//! costs one optimizing compilation, not one each.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::engine::{PluginEngine, Tier};
use super::error::PluginError;
use super::loaded::{self, Code};

/// What an upgrade acts on: a pool's policy slot. A trait, so that the slot
/// (which owns its upgrader) and this module do not depend on each other.
pub(crate) trait Upgradable: Send + Sync + 'static {
    fn upgrader(&self) -> &Upgrader;
    /// Whether the version serving runs `code`.
    fn runs(&self, code: &Arc<Code>) -> bool;
    /// Serves `optimized` in place of `baseline`, if that still serves.
    fn replace_code(&self, baseline: &Arc<Code>, optimized: Arc<Code>);
    /// The optimized build failed; the baseline keeps serving.
    fn keep_baseline(&self, error: &PluginError);
}

/// A slot's pending optimization; see the module docs.
#[derive(Default)]
pub(crate) struct Upgrader {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: Option<Job>,
    /// A thread is taking jobs; it ends when it finds none.
    running: bool,
}

struct Job {
    engine: PluginEngine,
    bytes: Vec<u8>,
    /// The code to replace: the job is void once the slot runs other code.
    baseline: Arc<Code>,
}

impl Upgrader {
    /// Queues `bytes`, served as `baseline` in `slot`, for optimization,
    /// replacing any job not started yet.
    pub fn request<S: Upgradable>(
        &self,
        slot: Weak<S>,
        engine: &PluginEngine,
        bytes: &[u8],
        baseline: Arc<Code>,
    ) {
        let mut state = self.lock();
        state.next = Some(Job {
            engine: engine.clone(),
            bytes: bytes.to_vec(),
            baseline,
        });
        if state.running {
            return;
        }
        state.running = true;
        // Not joined by shutdown: the job only makes a version faster, and
        // the process may end in the middle of it.
        std::thread::Builder::new()
            .name("plugin-upgrade".to_string())
            .spawn(move || run(&slot))
            .expect("spawning a thread only fails when the process is out of resources");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoned only if a field assignment panicked; the state is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes jobs until none is left or the slot is gone.
fn run<S: Upgradable>(slot: &Weak<S>) {
    loop {
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let job = {
            let mut state = slot.upgrader().lock();
            match state.next.take() {
                Some(job) => job,
                None => {
                    state.running = false;
                    return;
                }
            }
        };
        // Checked again after compiling, under the slot's load lock.
        if !slot.runs(&job.baseline) {
            continue;
        }
        match loaded::compile(&job.engine, Tier::Optimized, &job.bytes) {
            Ok(optimized) => slot.replace_code(&job.baseline, optimized),
            Err(error) => slot.keep_baseline(&error),
        }
    }
}
