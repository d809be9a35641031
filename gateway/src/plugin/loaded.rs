//! One plugin version compiled, linked, initialised and sample-checked, with
//! the initialised instances it recycles between calls.
//!
//! Instances are recycled rather than created per call: `init` state lives in
//! the instance's memory, so a fresh instance would re-run `init` (config
//! parsing) on every request; `bench policy` measures both ways.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::PolicyPre;
use super::decision::{self, Decision};
use super::engine::{PluginEngine, Tier};
use super::error::PluginError;
use super::host::{HostState, Tag};
use super::instance::Instance;
use super::table::WorkerTable;
use super::{sample, PolicyCaller, PolicyCandidates, RouteRequest};

/// An instance is retired after this many calls, so memory a guest leaks or
/// fragments a little per call never adds up to its limit.
const MAX_CALLS: u32 = 100_000;

/// What `/status` shows of a loaded version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    pub plugin: String,
    pub version: String,
    /// Of the component's bytes, lowercase hex.
    pub sha256: String,
    /// When it started serving, milliseconds since the Unix epoch; kept when
    /// its optimized build replaces the baseline one.
    pub loaded_at_ms: u64,
    /// Which compiler built the code serving.
    pub tier: Tier,
    /// It declared in `init` that its failures must fail closed.
    pub fail_closed: bool,
    /// The config `init` got (the binding's, or `{pool}.json` over it).
    pub config: serde_json::Value,
}

/// A plugin version ready to route. Requests hold it by `Arc`, so a request
/// in flight keeps the version it started with across a swap.
pub struct LoadedPolicy {
    info: PolicyInfo,
    config: String,
    code: Arc<Code>,
    engine: PluginEngine,
    tag: Arc<Tag>,
    /// Initialised instances not in a call. An instance is taken out for the
    /// whole call, so no two calls ever share one.
    idle: Mutex<Vec<Instance>>,
}

/// Compiled and pre-instantiated code: shared by every config of one version.
/// Its instances are made in stores of the engine that compiled it (the
/// one `pre` holds), whatever the tier.
pub(crate) struct Code {
    pre: PolicyPre<HostState>,
    sha256: String,
    tier: Tier,
}

impl LoadedPolicy {
    /// Compiles `bytes` at `tier`, links them, runs `init(config)` and the
    /// sample decisions; any failure refuses the version. Takes milliseconds
    /// to seconds: call it off the request path.
    pub fn load(
        engine: &PluginEngine,
        tier: Tier,
        plugin: &str,
        version: &str,
        bytes: &[u8],
        config: &str,
    ) -> Result<Self, PluginError> {
        let code = compile(engine, tier, bytes)?;
        Self::start(engine, plugin, version, code, config)
    }

    /// This version's compiled code under another config (e.g. a blue-green
    /// flip) or name: no compilation, only `init` and the sample decisions.
    pub fn reuse_code(
        &self,
        plugin: &str,
        version: &str,
        config: &str,
    ) -> Result<Self, PluginError> {
        Self::start(&self.engine, plugin, version, self.code.clone(), config)
    }

    /// This version, config and name on other code of the same bytes (its
    /// optimized build): `init` and the sample decisions run again, as they
    /// must on any new code, but it keeps the time it started serving.
    pub(crate) fn with_code(&self, code: Arc<Code>) -> Result<Self, PluginError> {
        let mut loaded = Self::start(
            &self.engine,
            &self.info.plugin,
            &self.info.version,
            code,
            &self.config,
        )?;
        loaded.info.loaded_at_ms = self.info.loaded_at_ms;
        Ok(loaded)
    }

    /// Whether this version runs `code` (not merely code of the same bytes).
    pub(crate) fn runs(&self, code: &Arc<Code>) -> bool {
        Arc::ptr_eq(&self.code, code)
    }

    /// The code this version runs, to recognise it later with [`runs`](Self::runs).
    pub(crate) fn code(&self) -> &Arc<Code> {
        &self.code
    }

    fn start(
        engine: &PluginEngine,
        plugin: &str,
        version: &str,
        code: Arc<Code>,
        config: &str,
    ) -> Result<Self, PluginError> {
        let tag = Arc::new(Tag {
            name: plugin.to_string(),
            version: version.to_string(),
            inits: Default::default(),
        });
        let mut first = Instance::new(engine, &code.pre, &tag, config)?;
        let (table, candidates) = (sample::table(), sample::candidates());
        for request in sample::requests() {
            let raw = first.route(engine, &request, &table, &candidates, &super::nobody())?;
            decision::check(raw, candidates.worker.len())?;
        }
        Ok(Self {
            info: PolicyInfo {
                plugin: plugin.to_string(),
                version: version.to_string(),
                sha256: code.sha256.clone(),
                loaded_at_ms: unix_ms(SystemTime::now()),
                tier: code.tier,
                fail_closed: first.fails_closed(),
                config: serde_json::from_str(config)
                    .unwrap_or_else(|_| serde_json::Value::String(config.to_string())),
            },
            config: config.to_string(),
            code,
            engine: engine.clone(),
            tag,
            idle: Mutex::new(vec![first]),
        })
    }

    /// Asks the plugin to order `candidates`, which refer into `table`, for `request`.
    ///
    /// Synchronous and bounded by the call deadline (`call_timeout_ms`); an
    /// error means the plugin failed, and the instance that failed is dropped.
    /// When no initialised instance is idle a new one is made (and `init` run)
    /// within the call; an instance that has not seen `table` is sent it first.
    pub fn route(
        &self,
        request: &RouteRequest,
        table: &WorkerTable,
        candidates: &PolicyCandidates,
        caller: &PolicyCaller,
    ) -> Result<Decision, PluginError> {
        let idle = self.lock_idle().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => Instance::new(&self.engine, &self.code.pre, &self.tag, &self.config)?,
        };
        let raw = instance.route(&self.engine, request, table, candidates, caller)?;
        // A decision that fails the check came from a guest that returned
        // normally: its instance is sound and goes back to the pool.
        let checked = decision::check(raw, candidates.worker.len());
        self.put_back(instance);
        checked
    }

    /// Like [`route`](Self::route) but on a new instance, `init` and
    /// `set-workers` included, dropped afterwards: the alternative `bench
    /// policy` compares against.
    pub fn route_fresh(
        &self,
        request: &RouteRequest,
        table: &WorkerTable,
        candidates: &PolicyCandidates,
        caller: &PolicyCaller,
    ) -> Result<Decision, PluginError> {
        let mut instance = Instance::new(&self.engine, &self.code.pre, &self.tag, &self.config)?;
        let raw = instance.route(&self.engine, request, table, candidates, caller)?;
        decision::check(raw, candidates.worker.len())
    }

    /// Drops its idle instances: a version kept only as a fallback makes
    /// new ones when it is asked, rather than holding pooling slots.
    pub(crate) fn release_idle(&self) {
        self.lock_idle().clear();
    }

    /// Linear memory an initialised instance holds (one that decided
    /// already, when there is one idle).
    pub fn instance_memory_bytes(&self) -> Option<usize> {
        self.lock_idle().first().map(Instance::memory_bytes)
    }

    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// The config text `init` was given.
    pub fn config(&self) -> &str {
        &self.config
    }

    fn put_back(&self, instance: Instance) {
        if instance.calls >= MAX_CALLS {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.engine.limits().idle_per_version {
            idle.push(instance);
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        // Poisoned only if a push or pop panicked; the Vec is still whole.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Compiles, links and type-checks `bytes` with `tier`'s engine.
pub(crate) fn compile(
    engine: &PluginEngine,
    tier: Tier,
    bytes: &[u8],
) -> Result<Arc<Code>, PluginError> {
    let sha256 = sha256_hex(bytes);
    let component = Component::new(engine.engine(tier), bytes)
        .map_err(|error| PluginError::Compile(format!("{error:#}")))?;
    let pre = engine
        .linker(tier)
        .instantiate_pre(&component)
        .map_err(|error| PluginError::Link(format!("{error:#}")))?;
    let pre = PolicyPre::new(pre).map_err(|error| PluginError::WrongWorld(format!("{error:#}")))?;
    Ok(Arc::new(Code { pre, sha256, tier }))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
