//! The wasmtime engines of a gateway, one per compiler tier: compiler
//! settings, the pooling allocator, the epoch ticker that bounds every call,
//! and a linker per engine (built once; every plugin version is
//! pre-instantiated against the one of its tier).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Linker;
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy,
};

use super::config::PluginsConfig;
use super::deadline::TICK;
use super::error::PluginError;
use super::host::{self, HostState};

/// Which compiler built a version's code.
///
/// A new version is compiled by Winch (a baseline compiler: several times
/// faster to compile, calls cost about a quarter more) so it serves soon,
/// then by cranelift off the request path, which replaces it when ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Baseline,
    Optimized,
}

/// A cheap handle (clones share the engines).
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    baseline: Compiler,
    optimized: Compiler,
    limits: Limits,
    /// Plugins' own limits, by name.
    by_plugin: BTreeMap<String, Limits>,
    /// Seeds each new instance's random generator: the base seed plus a counter.
    seeds: AtomicU64,
}

/// One tier's engine and its linker: code compiled by one engine cannot be
/// instantiated in the other's stores.
struct Compiler {
    engine: Engine,
    linker: Linker<HostState>,
}

/// Per-call bounds, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub call_timeout_ms: u64,
    pub init_timeout_ms: u64,
    pub memory_limit_bytes: u64,
    /// Initialised instances one loaded version keeps between calls.
    pub idle_per_version: usize,
}

impl PluginEngine {
    /// An engine whose guests draw random numbers from an OS-seeded generator.
    pub fn new(config: &PluginsConfig) -> Result<Self, PluginError> {
        Self::with_seed(config, rand::random())
    }

    /// An engine whose instances' random numbers are reproducible from `seed`
    /// (instance by instance, in creation order): for tests and benchmarks.
    pub fn with_seed(config: &PluginsConfig, seed: u64) -> Result<Self, PluginError> {
        let baseline = Compiler::new(config, Strategy::Winch)?;
        let optimized = Compiler::new(config, Strategy::Cranelift)?;
        spawn_ticker([baseline.engine.weak(), optimized.engine.weak()]);
        // The call is synchronous and short, so no more calls of one version
        // run at once than there are threads calling; more idle instances
        // would only hold pooling slots.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let idle_per_version = (cores * 2).clamp(2, config.max_instances.max(1) as usize);
        let limits = Limits {
            call_timeout_ms: config.call_timeout_ms,
            init_timeout_ms: config.init_timeout_ms,
            memory_limit_bytes: config.memory_limit_bytes,
            idle_per_version,
        };
        let by_plugin = config
            .limits
            .iter()
            .map(|(plugin, own)| {
                let mine = Limits {
                    call_timeout_ms: own.call_timeout_ms.unwrap_or(limits.call_timeout_ms),
                    init_timeout_ms: own.init_timeout_ms.unwrap_or(limits.init_timeout_ms),
                    memory_limit_bytes: own.memory_limit_bytes.unwrap_or(limits.memory_limit_bytes),
                    idle_per_version,
                };
                (plugin.clone(), mine)
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                baseline,
                optimized,
                limits,
                by_plugin,
                seeds: AtomicU64::new(seed),
            }),
        })
    }

    pub(crate) fn engine(&self, tier: Tier) -> &Engine {
        &self.compiler(tier).engine
    }

    pub(crate) fn linker(&self, tier: Tier) -> &Linker<HostState> {
        &self.compiler(tier).linker
    }

    fn compiler(&self, tier: Tier) -> &Compiler {
        match tier {
            Tier::Baseline => &self.inner.baseline,
            Tier::Optimized => &self.inner.optimized,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// `plugin`'s own limits where it has some, else the gateway-wide ones.
    pub(crate) fn limits_for(&self, plugin: &str) -> Limits {
        self.inner
            .by_plugin
            .get(plugin)
            .copied()
            .unwrap_or(self.inner.limits)
    }

    pub(crate) fn next_seed(&self) -> u64 {
        // Consecutive seeds are fine: `SmallRng::seed_from_u64` scrambles them.
        self.inner.seeds.fetch_add(1, Ordering::Relaxed)
    }
}

impl Compiler {
    fn new(config: &PluginsConfig, strategy: Strategy) -> Result<Self, PluginError> {
        let mut wasm = engine_config(config);
        wasm.strategy(strategy);
        let engine = Engine::new(&wasm).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker).map_err(engine_error)?;
        Ok(Self { engine, linker })
    }
}

/// The same settings for both tiers, so a version behaves the same (limits,
/// deadlines) whichever compiler built it.
fn engine_config(config: &PluginsConfig) -> Config {
    // A pooling slot holds the largest memory any plugin may grow to.
    let memory_limit = config
        .limits
        .values()
        .filter_map(|l| l.memory_limit_bytes)
        .fold(config.memory_limit_bytes, u64::max) as usize;
    let instances = config.max_instances;
    let mut pooling = PoolingAllocationConfig::new();
    // A Rust policy component is one main core module plus a few adapter
    // shims (measured: 4 core instances, 1 memory, 2 tables); the per-component
    // caps leave room for other languages without letting one component take
    // the pool.
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .max_core_instances_per_component(16)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        // The pool's own cap, a backstop behind the per-store limiter that
        // reports the exhaustion as out of memory.
        .max_memory_size(memory_limit.next_multiple_of(64 << 10))
        // A recycled slot keeps this much of its memory resident instead of
        // returning it to the OS and faulting it in again.
        .linear_memory_keep_resident(1 << 20);
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    wasm
}

fn engine_error(error: wasmtime::Error) -> PluginError {
    PluginError::Engine(format!("{error:#}"))
}

/// Advances the engines' epochs every [`TICK`] until both are dropped.
///
/// The thread holds only weak references: components, pre-instances and the
/// linkers keep an engine alive, and once all are gone the thread ends. A
/// thread rather than a tokio task so deadlines hold even when the runtime's
/// workers are all busy (in the very guest calls being bounded).
fn spawn_ticker(engines: [EngineWeak; 2]) {
    std::thread::Builder::new()
        .name("plugin-epoch".to_string())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            let mut alive = false;
            for engine in engines.iter().filter_map(EngineWeak::upgrade) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                return;
            }
        })
        .expect("spawning a thread only fails when the process is out of resources");
}
