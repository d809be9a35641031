//! A pool's policy in force, swapped whole: requests load the current
//! version, a new one replaces it only after it passed every check. New
//! bytes serve from a baseline build first; `upgrade` swaps in their
//! optimized build later.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::engine::{PluginEngine, Tier};
use super::error::PluginError;
use super::loaded::{sha256_hex, unix_ms, Code, LoadedPolicy, PolicyInfo};
use super::upgrade::{Upgradable, Upgrader};

/// One pool's plugin: empty means the built-in policy.
pub struct PolicySlot {
    pool: String,
    current: ArcSwapOption<LoadedPolicy>,
    /// The version of the same plugin that served before `current`: what a
    /// request falls back to first when `current` fails on it.
    previous: ArcSwapOption<LoadedPolicy>,
    status: Mutex<SlotStatus>,
    /// Serialises loads, so two sources (the watcher, etcd) cannot swap in
    /// out of order the versions they compiled concurrently, and an
    /// optimized build never replaces a newer version.
    loading: Mutex<()>,
    upgrader: Upgrader,
}

/// What `/status` shows for a pool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlotStatus {
    pub pool: String,
    /// The version serving; `None` means the built-in policy.
    pub policy: Option<PolicyInfo>,
    /// The last version refused, and why; kept after a later success, so an
    /// operator sees what was tried.
    pub last_refusal: Option<Refusal>,
    /// Versions (or configs) swapped in.
    pub loads: u64,
    /// Versions (or configs) refused.
    pub refusals: u64,
    /// Where the config in force came from: the binding, or the plugin
    /// directory's `{pool}.json` over it.
    pub config_source: Option<String>,
}

/// A version that passed every check and waits to be swapped in.
pub struct Prepared {
    loaded: Arc<LoadedPolicy>,
    /// Freshly compiled bytes, for the optimizing build once it serves.
    bytes: Option<Vec<u8>>,
}

impl Prepared {
    /// The policy that will serve, to ask before it does.
    pub fn policy(&self) -> &Arc<LoadedPolicy> {
        &self.loaded
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub plugin: String,
    pub version: String,
    /// Of the refused bytes; `None` when there were none to read.
    pub sha256: Option<String>,
    /// [`PluginError::kind`].
    pub kind: &'static str,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl PolicySlot {
    pub fn new(pool: impl Into<String>) -> Self {
        let pool = pool.into();
        Self {
            status: Mutex::new(SlotStatus {
                pool: pool.clone(),
                ..SlotStatus::default()
            }),
            pool,
            current: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            loading: Mutex::new(()),
            upgrader: Upgrader::default(),
        }
    }

    /// The version to use for one request; hold the `Arc` for the whole
    /// request, so a swap meanwhile does not change its policy.
    pub fn current(&self) -> Option<Arc<LoadedPolicy>> {
        self.current.load_full()
    }

    /// The version of the same plugin that served before the current one.
    pub fn previous(&self) -> Option<Arc<LoadedPolicy>> {
        self.previous.load_full()
    }

    /// Loads `bytes` as `plugin` `version` with `config` and swaps it in, or
    /// refuses it and leaves the current version serving. Blocking and slow
    /// (compilation): call it from a blocking thread. Logs and records the
    /// outcome in [`status`](Self::status).
    ///
    /// New bytes are compiled by the baseline compiler, so they serve
    /// soon, then again by the optimizing one on a thread of the slot's,
    /// which swaps that build in unnoticed (no load counted, same
    /// `loaded_at_ms`). The same bytes as the current version (under another
    /// config or version name) reuse its compiled code, so a config flip
    /// costs only `init` and the samples.
    pub fn try_load(
        self: &Arc<Self>,
        engine: &PluginEngine,
        plugin: &str,
        version: &str,
        bytes: &[u8],
        config: &str,
    ) -> Result<Arc<LoadedPolicy>, PluginError> {
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        let prepared = self.prepare(engine, plugin, version, bytes, config)?;
        Ok(self.swap_in(engine, prepared))
    }

    /// The checks of [`try_load`](Self::try_load) without the swap, so a
    /// change touching several pools applies only if every one passes. A
    /// refusal is recorded as with `try_load`.
    pub fn prepare(
        &self,
        engine: &PluginEngine,
        plugin: &str,
        version: &str,
        bytes: &[u8],
        config: &str,
    ) -> Result<Prepared, PluginError> {
        let sha256 = sha256_hex(bytes);
        let (loaded, compiled) = match self.current() {
            Some(current) if current.info().sha256 == sha256 => {
                (current.reuse_code(plugin, version, config), false)
            }
            _ => (
                LoadedPolicy::load(engine, Tier::Baseline, plugin, version, bytes, config),
                true,
            ),
        };
        match loaded {
            Ok(loaded) => Ok(Prepared {
                loaded: Arc::new(loaded),
                bytes: compiled.then(|| bytes.to_vec()),
            }),
            Err(error) => {
                self.refuse(plugin, version, Some(sha256), &error);
                Err(error)
            }
        }
    }

    /// Swaps in a version [`prepare`](Self::prepare)d for this slot.
    pub fn commit(
        self: &Arc<Self>,
        engine: &PluginEngine,
        prepared: Prepared,
    ) -> Arc<LoadedPolicy> {
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        self.swap_in(engine, prepared)
    }

    fn swap_in(self: &Arc<Self>, engine: &PluginEngine, prepared: Prepared) -> Arc<LoadedPolicy> {
        let loaded = prepared.loaded;
        let before = self.current.swap(Some(loaded.clone()));
        // Another version of the same plugin becomes the fallback; a new
        // config of the same version, or another plugin, keeps the old one.
        if let Some(before) = before.filter(|b| {
            b.info().plugin == loaded.info().plugin && b.info().version != loaded.info().version
        }) {
            before.release_idle();
            self.previous.store(Some(before));
        } else if self
            .previous()
            .is_some_and(|p| p.info().plugin != loaded.info().plugin)
        {
            self.previous.store(None);
        }
        if let Some(bytes) = prepared.bytes {
            let code = loaded.code().clone();
            self.upgrader
                .request(Arc::downgrade(self), engine, &bytes, code);
        }
        let mut status = self.lock_status();
        status.policy = Some(loaded.info().clone());
        status.loads += 1;
        let info = loaded.info();
        tracing::info!(
            pool = %self.pool,
            plugin = %info.plugin,
            version = %info.version,
            sha256 = %info.sha256,
            "policy loaded"
        );
        loaded
    }

    /// Records (and logs) a version that was refused before `try_load` could
    /// read it, e.g. a missing file. The current version keeps serving.
    pub fn refuse(&self, plugin: &str, version: &str, sha256: Option<String>, error: &PluginError) {
        let serving = match self.current() {
            Some(_) => "policy refused; the version in force keeps serving",
            None => "policy refused; no version serves, the built-in policy routes",
        };
        tracing::warn!(
            pool = %self.pool,
            plugin,
            version,
            kind = error.kind(),
            error = %error,
            "{serving}"
        );
        let mut status = self.lock_status();
        status.refusals += 1;
        status.last_refusal = Some(Refusal {
            plugin: plugin.to_string(),
            version: version.to_string(),
            sha256,
            kind: error.kind(),
            reason: error.to_string(),
            at_ms: unix_ms(SystemTime::now()),
        });
    }

    /// Back to the built-in policy (the pool's binding was removed).
    pub fn clear(&self) {
        self.current.store(None);
        self.previous.store(None);
        self.lock_status().policy = None;
        tracing::info!(pool = %self.pool, "policy removed; built-in policy serves");
    }

    /// Says where the config of the version in force came from.
    pub fn set_config_source(&self, source: String) {
        self.lock_status().config_source = Some(source);
    }

    pub fn status(&self) -> SlotStatus {
        self.lock_status().clone()
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, SlotStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Upgradable for PolicySlot {
    /// Whether the version serving runs `code`.
    fn runs(&self, code: &Arc<Code>) -> bool {
        self.current().is_some_and(|current| current.runs(code))
    }

    /// Swaps in `optimized` for the version serving if it still runs
    /// `baseline` (a config flip meanwhile kept it), after `init` and the
    /// samples passed on it; otherwise the version has moved on and the
    /// build is dropped.
    fn replace_code(&self, baseline: &Arc<Code>, optimized: Arc<Code>) {
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(current) = self.current().filter(|current| current.runs(baseline)) else {
            return;
        };
        match current.with_code(optimized) {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                self.current.store(Some(loaded.clone()));
                self.lock_status().policy = Some(loaded.info().clone());
                tracing::info!(
                    pool = %self.pool,
                    plugin = %loaded.info().plugin,
                    version = %loaded.info().version,
                    "policy optimized"
                );
            }
            Err(error) => self.keep_baseline(&error),
        }
    }

    /// The optimized build failed where the baseline one passed (a deadline
    /// missed on a busy machine, most likely): the version keeps serving
    /// as it is, so this is no refusal.
    fn keep_baseline(&self, error: &PluginError) {
        tracing::warn!(
            pool = %self.pool,
            kind = error.kind(),
            error = %error,
            "optimized build failed; the baseline build keeps serving"
        );
    }

    fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }
}
