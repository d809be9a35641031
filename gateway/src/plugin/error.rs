//! Everything that can go wrong with a plugin, as one enum: a failure, never a decision.

use std::path::PathBuf;

use wasmtime::Trap;

/// Why a plugin version was refused, or why one call produced no decision.
///
/// A guest that traps, runs past its deadline or exhausts its memory is a
/// different thing from a guest that decided to reject a request: the latter
/// is a [`Decision::Reject`](super::Decision::Reject), never an error here.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The wasmtime engine could not be set up (e.g. address space for the pooling allocator).
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The bytes are not a valid component (or not one this host can compile).
    #[error("not a valid component: {0}")]
    Compile(String),
    /// The component imports something the host does not offer (files, network, ...).
    #[error("component imports what the host does not offer: {0}")]
    Link(String),
    /// The component does not export the `llmgw:policy/policy@0.2.0` world.
    #[error("component is not a policy of llmgw:policy@0.2.0: {0}")]
    WrongWorld(String),
    /// The guest's `init` refused its config; the message is the guest's.
    #[error("init refused the config: {0}")]
    Init(String),
    /// No instance could be created (e.g. every pooling allocator slot is taken).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The guest crashed: `unreachable` (a Rust panic), an out-of-bounds access, a stack overflow, ...
    #[error("plugin trapped {0}")]
    Trap(String),
    /// The guest used up its deadline (in CPU time, see `deadline`) and was interrupted.
    #[error("plugin ran past its {deadline_ms} ms deadline")]
    Timeout { deadline_ms: u64 },
    /// The guest tried to grow its memory past the limit.
    #[error("plugin tried to grow its memory past {limit_bytes} bytes")]
    OutOfMemory { limit_bytes: u64 },
    /// The guest returned a decision the gateway cannot act on.
    #[error("invalid decision: {0}")]
    InvalidDecision(String),
    /// No wasm file for the binding (plugin folder or pinned version absent).
    #[error("no such plugin version: {0}")]
    Missing(String),
    /// The bytes are not the ones their published sha256 names (a torn or tampered upload).
    #[error("sha256 mismatch: {0}")]
    Checksum(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PluginError {
    /// A short fixed label for metrics and `/status`, one per variant.
    /// The kinds a policy call can fail with, once its component loaded.
    pub const CALL_KINDS: [&'static str; 5] = [
        "instantiate",
        "trap",
        "timeout",
        "out_of_memory",
        "invalid_decision",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Engine(_) => "engine",
            PluginError::Compile(_) => "compile",
            PluginError::Link(_) => "link",
            PluginError::WrongWorld(_) => "wrong_world",
            PluginError::Init(_) => "init",
            PluginError::Instantiate(_) => "instantiate",
            PluginError::Trap(_) => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfMemory { .. } => "out_of_memory",
            PluginError::InvalidDecision(_) => "invalid_decision",
            PluginError::Missing(_) => "missing",
            PluginError::Checksum(_) => "checksum",
            PluginError::Io { .. } => "io",
        }
    }
}

/// What a failed guest call says about how it failed, read off the store's
/// state after the call: the limiter flags memory exhaustion before wasmtime
/// turns it into a trap, so that flag is checked first.
pub(crate) struct Failure {
    pub memory_exhausted: bool,
    pub deadline_ms: u64,
    pub memory_limit_bytes: u64,
    /// The export that failed: `init`, `set-workers` or `route`.
    pub during: &'static str,
    /// What the guest said of its panic, when it did (the SDK logs it).
    pub panic: Option<String>,
}

impl Failure {
    pub fn classify(&self, error: wasmtime::Error) -> PluginError {
        if self.memory_exhausted {
            return PluginError::OutOfMemory {
                limit_bytes: self.memory_limit_bytes,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout {
                deadline_ms: self.deadline_ms,
            },
            // `{:#}` keeps the guest backtrace wasmtime attaches as context.
            _ => PluginError::Trap(match &self.panic {
                Some(panic) => format!("in `{}`: {panic}; {error:#}", self.during),
                None => format!("in `{}`: {error:#}", self.during),
            }),
        }
    }
}
