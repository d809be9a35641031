//! What a guest can reach: the `host` imports (log, clock, random, the
//! workers' engines, the request's caller), WASI over an empty sandbox, and
//! the memory limiter. One per instance.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::llmgw::policy::{host, types};
use super::bindings::Policy;
use super::deadline::Deadline;

/// Which plugin version an instance runs, for the lines it logs.
#[derive(Debug)]
pub(crate) struct Tag {
    pub name: String,
    pub version: String,
    /// Instances whose `init` succeeded: every pooled instance runs `init`,
    /// and only the first one's lines are worth more than debug.
    pub inits: AtomicU32,
}

/// The store data of one instance.
pub(crate) struct HostState {
    tag: Arc<Tag>,
    /// The sandbox WASI calls see (see [`link`]).
    wasi: WasiCtx,
    table: ResourceTable,
    rng: SmallRng,
    memory_limit_bytes: usize,
    /// Set when the guest asked for more memory than its limit: the call's
    /// failure is then reported as out of memory, not as the trap it becomes.
    pub memory_exhausted: bool,
    /// Linear memory the instance's memories hold, all together.
    pub memory_bytes: usize,
    /// The running call's deadline.
    pub deadline: Deadline,
    /// The engines of the worker table the guest is being sent or holds.
    pub engines: Vec<types::Engine>,
    /// Who sent the request being routed.
    pub caller: types::Caller,
    /// The guest asked, in `init`, that its failures fail closed.
    pub fail_closed: bool,
    /// The panic the guest reported last (the SDK logs one before it traps).
    pub panic: Option<String>,
    /// In `init` (or instantiation).
    pub initializing: bool,
}

impl HostState {
    pub fn new(tag: Arc<Tag>, memory_limit_bytes: usize, seed: u64) -> Self {
        Self {
            tag,
            wasi: sandbox(),
            table: ResourceTable::new(),
            rng: SmallRng::seed_from_u64(seed),
            memory_limit_bytes,
            memory_exhausted: false,
            memory_bytes: 0,
            deadline: Deadline::default(),
            engines: Vec::new(),
            caller: nobody(),
            fail_closed: false,
            panic: None,
            initializing: false,
        }
    }
}

/// Links the policy world's imports and WASI 0.2, which Rust's std imports
/// in part and the interpreters of other languages (componentize-py,
/// componentize-js) import whole, over an empty sandbox: no files (nothing
/// preopened), no network (no socket, no name lookup), no environment or
/// arguments, stdin empty, stdout and stderr discarded. Waiting is refused:
/// a blocking poll runs inside the host, where no deadline can interrupt it,
/// so `wasi:io/poll`'s `poll` and `pollable.block` trap instead.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Policy::add_to_linker::<HostState, Own>(linker, |state| state)?;
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    for name in ["poll", "[method]pollable.block"] {
        poll.func_new(name, |_, _, _, _| {
            wasmtime::bail!("a policy may not wait: `wasi:io/poll` is refused")
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// The `wasi:io/poll` the linked WASI defines (components importing an
/// older 0.2 release are matched to it).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

impl HostState {
    pub fn tag(&self) -> &Tag {
        &self.tag
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn sandbox() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The policy imports are implemented on `HostState` itself.
struct Own;

impl HasData for Own {
    type Data<'a> = &'a mut HostState;
}

/// A guest's log line is capped: a plugin must not flood the gateway's logs.
const MAX_LOG_BYTES: usize = 1024;

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let mut end = message.len().min(MAX_LOG_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let (plugin, version, message) = (&self.tag.name, &self.tag.version, &message[..end]);
        // What `init` says was said by the version's first instance already.
        let level = match self.initializing && self.tag.inits.load(Ordering::Relaxed) > 0 {
            true => host::Level::Debug,
            false => level,
        };
        if level == host::Level::Error && message.starts_with("panicked at ") {
            self.panic = Some(message.to_string());
        }
        match level {
            host::Level::Debug => tracing::debug!(plugin, version, message, "plugin log"),
            host::Level::Info => tracing::info!(plugin, version, message, "plugin log"),
            host::Level::Warn => tracing::warn!(plugin, version, message, "plugin log"),
            host::Level::Error => tracing::error!(plugin, version, message, "plugin log"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
    }

    fn random(&mut self) -> u64 {
        self.rng.random()
    }

    fn worker_engines(&mut self) -> Vec<types::Engine> {
        self.engines.clone()
    }

    fn request_caller(&mut self) -> types::Caller {
        self.caller.clone()
    }

    fn fail_closed(&mut self) {
        self.fail_closed = true;
    }
}

impl types::Host for HostState {}

/// The caller of a request sent without an API key.
pub fn nobody() -> types::Caller {
    types::Caller {
        tenant: None,
        priority: types::Priority::Normal,
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.memory_bytes += desired.saturating_sub(current);
        if desired > self.memory_limit_bytes {
            self.memory_exhausted = true;
            // An error, not `Ok(false)`: the guest traps at once instead of
            // getting a chance to retry smaller allocations until its deadline.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_limit_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; Rust guests never grow them much.
        Ok(desired <= 100_000)
    }
}
