//! One initialised instance of a plugin version: its own store, memory and
//! guest state, including the worker table it was last sent. Used by one
//! call at a time; dropped after any failure.

use std::sync::Arc;

use wasmtime::Store;

use super::bindings::llmgw::policy::types;
use super::bindings::{Policy, PolicyPre};
use super::engine::PluginEngine;
use super::error::{Failure, PluginError};
use super::host::{HostState, Tag};
use super::table::WorkerTable;
use super::{PolicyCandidates, RouteRequest};

pub(crate) struct Instance {
    store: Store<HostState>,
    policy: Policy,
    /// Calls served, so a long-lived instance can be retired (see `MAX_CALLS`).
    pub calls: u32,
    /// The generation of the worker table the guest holds; 0 before the first.
    table: u64,
}

impl Instance {
    /// Instantiates `pre` and runs the guest's `init(config)`, both within the init deadline.
    pub fn new(
        engine: &PluginEngine,
        pre: &PolicyPre<HostState>,
        tag: &Arc<Tag>,
        config: &str,
    ) -> Result<Self, PluginError> {
        let limits = engine.limits_for(&tag.name);
        let mut state = HostState::new(
            tag.clone(),
            limits.memory_limit_bytes as usize,
            engine.next_seed(),
        );
        state.initializing = true;
        // The engine that compiled `pre`, not one chosen here: code of one
        // tier cannot run in a store of the other's engine.
        let mut store = Store::new(pre.engine(), state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().deadline.on_expiry()));
        // Armed before instantiating: instantiation runs guest start code too.
        let ticks = store.data_mut().deadline.arm(limits.init_timeout_ms);
        store.set_epoch_deadline(ticks);
        let failure = |store: &Store<HostState>| Failure {
            memory_exhausted: store.data().memory_exhausted,
            deadline_ms: limits.init_timeout_ms,
            memory_limit_bytes: limits.memory_limit_bytes,
            during: "init",
            panic: store.data().panic.clone(),
        };
        let policy = match pre.instantiate(&mut store) {
            Ok(policy) => policy,
            // A trap here is the guest's; anything else (no free pooling
            // slot) is the host's capacity.
            Err(error) if error.downcast_ref::<wasmtime::Trap>().is_some() => {
                return Err(failure(&store).classify(error))
            }
            Err(error) if store.data().memory_exhausted => {
                return Err(failure(&store).classify(error))
            }
            Err(error) => return Err(PluginError::Instantiate(format!("{error:#}"))),
        };
        let initialized = policy.call_init(&mut store, config);
        store.data_mut().initializing = false;
        match initialized {
            Ok(Ok(())) => {
                tag.inits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Self {
                    store,
                    policy,
                    calls: 0,
                    table: 0,
                })
            }
            Ok(Err(message)) => Err(PluginError::Init(message)),
            Err(error) => Err(failure(&store).classify(error)),
        }
    }

    /// Calls the guest's `route`, after `set-workers` if the guest does not
    /// hold `table` yet; each call within the call deadline.
    pub fn route(
        &mut self,
        engine: &PluginEngine,
        request: &RouteRequest,
        table: &WorkerTable,
        candidates: &PolicyCandidates,
        caller: &types::Caller,
    ) -> Result<types::Decision, PluginError> {
        let timeout_ms = engine
            .limits_for(&self.store.data().tag().name)
            .call_timeout_ms;
        self.calls += 1;
        self.store.data_mut().caller = caller.clone();
        if self.table != table.generation() {
            self.store.data_mut().engines = table.engines().to_vec();
            self.arm(timeout_ms);
            let sent = self
                .policy
                .call_set_workers(&mut self.store, table.workers());
            sent.map_err(|error| self.failure(engine, (timeout_ms, "set-workers"), error))?;
            // Only once the guest took it: after a failure the instance is dropped anyway.
            self.table = table.generation();
        }
        self.arm(timeout_ms);
        let decided = self.policy.call_route(&mut self.store, request, candidates);
        decided.map_err(|error| self.failure(engine, (timeout_ms, "route"), error))
    }

    /// Its guest asked, in `init`, to fail closed.
    pub fn fails_closed(&self) -> bool {
        self.store.data().fail_closed
    }

    /// Linear memory it holds.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory_bytes
    }

    fn arm(&mut self, timeout_ms: u64) {
        let ticks = self.store.data_mut().deadline.arm(timeout_ms);
        self.store.set_epoch_deadline(ticks);
    }

    fn failure(
        &self,
        engine: &PluginEngine,
        (deadline_ms, during): (u64, &'static str),
        error: wasmtime::Error,
    ) -> PluginError {
        Failure {
            memory_exhausted: self.store.data().memory_exhausted,
            during,
            panic: self.store.data().panic.clone(),
            deadline_ms,
            memory_limit_bytes: engine
                .limits_for(&self.store.data().tag().name)
                .memory_limit_bytes,
        }
        .classify(error)
    }
}
