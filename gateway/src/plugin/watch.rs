//! Embedded mode's plugin source: polls the plugin directory and feeds each
//! pool's slot through [`PolicySlot::try_load`], the path the etcd source
//! shares.
//!
//! A poll is a `stat` per binding, nothing next to a request, and works on
//! every filesystem; `wake` starts one as soon as the OS reports a change,
//! so a deploy does not wait out the interval.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::config::PolicyBinding;
use super::dir::{self, Selected};
use super::engine::PluginEngine;
use super::error::PluginError;
use super::loaded::sha256_hex;
use super::slot::PolicySlot;
use super::wake::{self, Signal};

/// A refusal that may pass on a later try (no free instance slot, a read
/// racing a write, a deadline missed on a starved machine) is retried after
/// this long even if nothing changed; others wait for a change.
pub(crate) const RETRY_TRANSIENT: Duration = Duration::from_secs(10);

pub struct PluginWatcher {
    engine: PluginEngine,
    dir: PathBuf,
    watched: Vec<Watched>,
}

struct Watched {
    pool: String,
    binding: PolicyBinding,
    slot: Arc<PolicySlot>,
    seen: Option<Seen>,
}

/// What the last poll found for one binding, to act only on a change.
struct Seen {
    /// The cheap fingerprint: checked every poll without reading the wasm.
    probe: Probe,
    /// The last version, bytes (sha256) and config tried, loaded or refused.
    tried: Option<(String, String, String)>,
    /// When the last try was refused for a reason that may pass.
    transient_refusal: Option<Instant>,
}

#[derive(PartialEq)]
enum Probe {
    Found {
        selected: Selected,
        len: u64,
        modified: Option<SystemTime>,
        config: String,
    },
    Failed(String),
}

impl PluginWatcher {
    pub fn new(engine: PluginEngine, dir: impl Into<PathBuf>) -> Self {
        Self {
            engine,
            dir: dir.into(),
            watched: Vec::new(),
        }
    }

    /// Feeds `slot` from the plugin `binding` names, for `pool` (whose name
    /// picks the config override file).
    pub fn watch(
        &mut self,
        pool: impl Into<String>,
        binding: PolicyBinding,
        slot: Arc<PolicySlot>,
    ) {
        self.watched.push(Watched {
            pool: pool.into(),
            binding,
            slot,
            seen: None,
        });
    }

    /// Checks every binding once and loads what changed, on this thread
    /// (blocking: reads files, compiles). Returns how many slots swapped.
    /// Call it once before serving so pools start with their plugins.
    pub fn poll_once(&mut self) -> usize {
        let mut swapped = 0;
        for watched in &mut self.watched {
            if watched.poll(&self.engine, &self.dir) {
                swapped += 1;
            }
        }
        swapped
    }

    /// Polls on a thread of its own, as soon as something changed under the
    /// directory and every `interval` regardless, until the handle is
    /// dropped or stopped. A thread rather than a task: each poll may block
    /// for a compilation, and nothing on the runtime waits for it.
    pub fn spawn(mut self, interval: Duration) -> WatchHandle {
        let (stop, signals) = mpsc::channel();
        let notifier = wake::on_change(&self.dir, stop.clone());
        let thread = std::thread::Builder::new()
            .name("plugin-watch".to_string())
            .spawn(move || {
                // Notifications last as long as this thread.
                let _notifier = notifier;
                loop {
                    self.poll_once();
                    if !wake::wait(&signals, interval) {
                        return;
                    }
                }
            })
            .expect("spawning a thread only fails when the process is out of resources");
        WatchHandle {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Watched {
    /// True when the slot swapped to a new version or config.
    fn poll(&mut self, engine: &PluginEngine, dir: &std::path::Path) -> bool {
        let plugin = self.binding.plugin.clone();
        let probe = match probe(dir, &self.binding, &self.pool) {
            Ok(probe) => probe,
            Err(error) => {
                let failed = Probe::Failed(error.to_string());
                if self.seen.as_ref().map(|seen| &seen.probe) != Some(&failed) {
                    let version = self.binding.version.as_deref().unwrap_or("latest");
                    self.slot.refuse(&plugin, version, None, &error);
                    self.seen = Some(Seen {
                        probe: failed,
                        tried: None,
                        transient_refusal: None,
                    });
                }
                return false;
            }
        };
        let retry_due = self
            .seen
            .as_ref()
            .and_then(|seen| seen.transient_refusal)
            .is_some_and(|at| at.elapsed() >= RETRY_TRANSIENT);
        if !retry_due && self.seen.as_ref().is_some_and(|seen| seen.probe == probe) {
            return false;
        }
        let Probe::Found {
            selected, config, ..
        } = &probe
        else {
            unreachable!("probe() only returns Found");
        };
        let bytes = match std::fs::read(&selected.path) {
            Ok(bytes) => bytes,
            Err(source) => {
                let error = PluginError::Io {
                    path: selected.path.clone(),
                    source,
                };
                self.slot.refuse(&plugin, &selected.version, None, &error);
                // Not recorded as seen: the next poll reads again.
                return false;
            }
        };
        let tried = (selected.version.clone(), sha256_hex(&bytes), config.clone());
        let unchanged = self
            .seen
            .as_ref()
            .is_some_and(|seen| seen.tried.as_ref() == Some(&tried));
        if unchanged && !retry_due {
            // Touched but identical (a copy of the same file): nothing to do.
            if let Some(seen) = &mut self.seen {
                seen.probe = probe;
            }
            return false;
        }
        let mut result = self
            .slot
            .try_load(engine, &plugin, &selected.version, &bytes, config);
        // Nothing serving and no version pinned: the highest version that
        // passes its checks serves rather than the built-in policy.
        if result.is_err() && self.binding.version.is_none() && self.slot.current().is_none() {
            for older in dir::older(dir, &self.binding, &selected.version) {
                let Ok(bytes) = std::fs::read(&older.path) else {
                    continue;
                };
                if let Ok(loaded) =
                    self.slot
                        .try_load(engine, &plugin, &older.version, &bytes, config)
                {
                    tracing::warn!(pool = %self.pool, plugin, refused = %selected.version,
                        serving = %older.version, "the newest version was refused; the highest version that passes its checks serves");
                    result = Ok(loaded);
                    break;
                }
            }
        }
        if result.is_ok() {
            self.slot
                .set_config_source(dir::config_source(dir, &self.binding, &self.pool));
        }
        let transient_refusal = match &result {
            Err(error) if is_transient(error) => Some(Instant::now()),
            _ => None,
        };
        self.seen = Some(Seen {
            probe,
            tried: Some(tried),
            transient_refusal,
        });
        result.is_ok()
    }
}

fn probe(dir: &std::path::Path, binding: &PolicyBinding, pool: &str) -> Result<Probe, PluginError> {
    let selected = dir::select(dir, binding)?;
    let config = dir::config_text(dir, binding, pool)?;
    let metadata = std::fs::metadata(&selected.path).map_err(|source| PluginError::Io {
        path: selected.path.clone(),
        source,
    })?;
    Ok(Probe::Found {
        selected,
        len: metadata.len(),
        modified: metadata.modified().ok(),
        config,
    })
}

/// A refusal that may pass on a later try with the same bytes and config.
pub(crate) fn is_transient(error: &PluginError) -> bool {
    matches!(
        error,
        PluginError::Instantiate(_) | PluginError::Io { .. } | PluginError::Timeout { .. }
    )
}

/// Stops the watcher thread when dropped (after any poll in progress).
pub struct WatchHandle {
    stop: Option<mpsc::Sender<Signal>>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Stops the watcher and waits for its thread to end.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            // A panic in the watcher has already been reported by the panic hook.
            let _ = thread.join();
        }
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // Fails only when the thread has already ended.
            let _ = stop.send(Signal::Stop);
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        // Ends the thread's wait; not joined here, so dropping the handle
        // never blocks an async caller.
        self.signal_stop();
    }
}
