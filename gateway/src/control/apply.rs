//! Turns each etcd snapshot into the state in force. The routing document
//! is checked whole before it replaces the file's sections; registrations
//! for pools this config routes are merged with the static workers; each
//! pool's bound plugin goes through the checks the directory watcher's
//! [`PolicySlot::try_load`] runs (compile, `init`, sample decisions), all
//! before any swap, so a new document applies whole or not at all.
//! Whatever is refused leaves the last good state serving and says why in
//! the log, the metrics and `/status`. A document refused for a reason that
//! may pass (a plugin not published yet, a load that timed out) stays
//! pending and is tried again; one that does not validate waits for a new
//! document.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use protocol::control::{Key, Keys, Registration};

use super::artifact::{self, Artifact};
use super::follow::EtcdSnapshot;
use super::status::Control;
use crate::config::{registered_engine, worker_url, Config, RoutingDoc};
use crate::live::{Live, Shared};
use crate::metrics;
use crate::plugin::{
    is_transient, select_in_dir, sha256_hex, PluginEngine, PluginError, PolicyBinding, PolicySlot,
    Prepared, RETRY_TRANSIENT,
};
use crate::pools::Registry;
use crate::routable;

pub struct Applier {
    /// This gateway's own config file (with its flags applied).
    base: Config,
    keys: Keys,
    live: Shared,
    control: Arc<Control>,
    /// Made at the first plugin to load: its allocator reserves address space.
    engine: Option<PluginEngine>,
    /// The revision of the routing document last read: applied, refused,
    /// or pending.
    doc_revision: Option<i64>,
    /// Set while the document at `doc_revision` is refused for a reason
    /// that may pass.
    pending: Option<Pending>,
    /// In force.
    config: Arc<Config>,
    workers: Vec<Registration>,
    /// Per pool, the plugin load last tried.
    tried: HashMap<String, Try>,
    /// Per pool, when the last try was refused for a reason that may pass.
    transient: HashMap<String, Instant>,
    /// The zones shifted away now.
    shifted: HashSet<String>,
}

/// A routing document refused for a reason that may pass. Without this,
/// gateways that refused it (busy, or before its plugin was published)
/// would keep the old document while later ones run the new.
struct Pending {
    /// What was under `plugins/` at the last try; any change there is a
    /// reason to try again.
    plugins: PluginKeys,
    at: Instant,
    /// Also tried on the retry tick: the reason may pass with nothing
    /// changing in etcd (a starved machine, the plugin directory on disk).
    on_tick: bool,
    reason: String,
}

impl Pending {
    fn due(&self, plugins: PluginKeys) -> bool {
        plugins != self.plugins || (self.on_tick && self.at.elapsed() >= RETRY_TRANSIENT)
    }
}

/// A summary of the keys under `plugins/` that changes with any put or
/// delete there: how many there are and the newest `mod_revision`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PluginKeys {
    count: usize,
    newest: i64,
}

impl PluginKeys {
    fn of(keys: &Keys, snapshot: &EtcdSnapshot) -> PluginKeys {
        let prefix = keys.plugins();
        let (count, newest) = snapshot
            .kvs
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .fold((0, 0), |(count, newest), (_, (_, revision))| {
                (count + 1, newest.max(*revision))
            });
        PluginKeys { count, newest }
    }
}

/// A plugin load tried for a pool; the same again is not tried twice. A
/// selection that failed keeps its error in `config`.
#[derive(PartialEq)]
struct Try {
    slot: usize,
    plugin: String,
    version: String,
    sha256: String,
    config: String,
}

/// The plugin loads one snapshot calls for, checked and not yet swapped in.
#[derive(Default)]
struct Plan {
    ready: Vec<(Arc<PolicySlot>, Prepared)>,
    /// Pools whose binding was removed.
    clear: Vec<String>,
    failures: Vec<String>,
    /// Pools refused for a reason that may pass.
    transient: Vec<String>,
    tried: Vec<(String, Try)>,
}

impl Applier {
    pub fn new(base: Config, live: Shared, control: Arc<Control>) -> Applier {
        let config = live.load().config.clone();
        Applier {
            keys: Keys::new(&base.etcd.prefix),
            base,
            live,
            control,
            engine: None,
            doc_revision: None,
            pending: None,
            config,
            workers: Vec::new(),
            tried: HashMap::new(),
            transient: HashMap::new(),
            shifted: HashSet::new(),
        }
    }

    /// Blocking (tokenizers and plugins may load): call it off the runtime.
    pub fn apply(&mut self, snapshot: &EtcdSnapshot) {
        let (mut config, mut doc_revision) = self.next_config(snapshot);
        let (registry, workers, ignored, plan) = loop {
            let (workers, ignored) = registrations(&self.keys, snapshot, &config);
            let rebuild = !Arc::ptr_eq(&config, &self.config) || workers != self.workers;
            let registry = if rebuild {
                let previous = self.live.load().registry.clone();
                match Registry::build(&config, &workers, Some(&previous)) {
                    Ok(registry) => Some(Arc::new(registry)),
                    Err(e) if doc_revision.is_some() => {
                        // A tokenizer file or download may come later.
                        let reason = format!("cannot load a pool's tokenizer: {e}");
                        self.hold_doc(snapshot, reason, true);
                        (config, doc_revision) = (self.config.clone(), None);
                        continue;
                    }
                    Err(e) => {
                        let reason = format!("cannot load a pool's tokenizer: {e}");
                        self.control.refuse(snapshot.revision, reason);
                        None
                    }
                }
            } else {
                None
            };
            let serving = registry
                .clone()
                .unwrap_or_else(|| self.live.load().registry.clone());
            let plan = self.plan_plugins(snapshot, &config, &serving);
            // A new document applies whole or not at all: each pool it binds
            // a plugin for must load.
            if doc_revision.is_some() && !plan.failures.is_empty() {
                let on_tick = !plan.transient.is_empty() || self.base.plugins.dir.is_some();
                self.hold_doc(snapshot, plan.failures.join("; "), on_tick);
                (config, doc_revision) = (self.config.clone(), None);
                continue;
            }
            // Nor may it take down a pool that routes now (a label value no
            // worker carries, a block size no worker has): refused as an
            // invalid one is, until a new document comes.
            if doc_revision.is_some() {
                if let Some(reason) = self.breaks_a_pool(&config, &serving, &plan) {
                    let revision = snapshot
                        .kvs
                        .get(&self.keys.config())
                        .map_or(snapshot.revision, |(_, revision)| *revision);
                    self.control.refuse(revision, reason);
                    (config, doc_revision) = (self.config.clone(), None);
                    continue;
                }
            }
            break (registry, workers, ignored, plan);
        };
        self.commit_plugins(snapshot, plan);
        let serving = registry
            .clone()
            .unwrap_or_else(|| self.live.load().registry.clone());
        self.apply_shadows(snapshot, &config, &serving);
        let cordoned = cordons(&self.keys, snapshot);
        let shifted = shifts(&self.keys, snapshot, &config);
        match &registry {
            Some(registry) => registry.mark_rotation(&cordoned, &shifted),
            None => self.live.load().registry.mark_rotation(&cordoned, &shifted),
        }
        if shifted != self.shifted {
            tracing::info!(zones = ?shifted, "zones shifted away");
            self.shifted = shifted;
        }
        if let Some(registry) = registry {
            let previous = self.live.load().registry.clone();
            self.live.store(Arc::new(Live {
                config: config.clone(),
                registry: registry.clone(),
            }));
            registry.forget_departed(&previous);
            tracing::info!(
                revision = snapshot.revision,
                registered = workers.len(),
                "control plane state applied"
            );
            metrics::control_change("applied");
            self.control.update(|s| s.applied += 1);
            self.config = config;
            self.workers = workers;
        }
        if let Some(revision) = doc_revision {
            self.pending = None;
            // What was refused before is not what serves now.
            self.control.update(|s| {
                s.config_revision = revision;
                s.last_refusal = None;
            });
        }
        let pending = self.pending.as_ref().and(self.doc_revision);
        let (revision, registered) = (snapshot.revision, self.workers.len());
        // Each reason once, when it appears (a static worker's id taken by a
        // registration, say), not at every change.
        let before = self.control.status().ignored_registrations;
        for reason in ignored.iter().filter(|r| !before.contains(r)) {
            tracing::warn!(%reason, "registration ignored");
        }
        self.control.update(|s| {
            s.pending_config_revision = pending;
            s.revision = revision;
            s.registered_workers = registered;
            s.ignored_registrations = ignored;
        });
        metrics::control_revision(revision);
    }

    /// Why applying `config` over `registry` with `plan`'s policies would
    /// leave a pool unable to route that can route now, if it would.
    fn breaks_a_pool(&self, config: &Config, registry: &Registry, plan: &Plan) -> Option<String> {
        let live = self.live.load();
        let now = Instant::now();
        registry.pools().iter().find_map(|pool| {
            let before = live.registry.pools().iter().find(|p| p.name == pool.name)?;
            let current = before.policy.current();
            if routable::problem(&live.config, before, current.as_deref(), now).is_some() {
                return None;
            }
            let prepared = plan
                .ready
                .iter()
                .find(|(slot, _)| Arc::ptr_eq(slot, &pool.policy))
                .map(|(_, prepared)| prepared.policy().clone());
            let policy = match prepared {
                Some(policy) => Some(policy),
                None if plan.clear.contains(&pool.name) => None,
                None => pool.policy.current(),
            };
            let problem = routable::problem(config, pool, policy.as_deref(), now)?;
            Some(format!("it would break a pool that routes now: {problem}"))
        })
    }

    /// Refuses the routing document for a reason that may pass, and keeps
    /// it pending. A retry refused for the same reason is not counted again.
    fn hold_doc(&mut self, snapshot: &EtcdSnapshot, reason: String, on_tick: bool) {
        let revision = snapshot
            .kvs
            .get(&self.keys.config())
            .map_or(snapshot.revision, |(_, revision)| *revision);
        if self.pending.as_ref().is_some_and(|p| p.reason == reason) {
            tracing::debug!(revision, %reason, "routing config still refused");
        } else {
            self.control.refuse(revision, reason.clone());
        }
        self.pending = Some(Pending {
            plugins: PluginKeys::of(&self.keys, snapshot),
            at: Instant::now(),
            on_tick,
            reason,
        });
    }

    /// The config to route on: the file's with the routing document's
    /// sections once one validates; the one in force when it does not. With
    /// it, the config revision to report if it applies (`Some(None)`: the
    /// document was deleted), or `None` when nothing new was read. A
    /// pending document is read again when its retry is due.
    fn next_config(&mut self, snapshot: &EtcdSnapshot) -> (Arc<Config>, Option<Option<i64>>) {
        let doc = snapshot.kvs.get(&self.keys.config());
        let revision = doc.map(|(_, revision)| *revision);
        if revision == self.doc_revision {
            let plugins = PluginKeys::of(&self.keys, snapshot);
            if !self.pending.as_ref().is_some_and(|p| p.due(plugins)) {
                return (self.config.clone(), None);
            }
            tracing::info!(revision, "trying the pending routing config again");
        } else {
            self.pending = None;
        }
        self.doc_revision = revision;
        let Some((text, revision)) = doc else {
            tracing::info!("no routing config in etcd; this gateway's file applies");
            return (Arc::new(self.base.clone()), Some(None));
        };
        let parsed = std::str::from_utf8(text)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|text| toml::from_str::<RoutingDoc>(text).map_err(|e| e.to_string()))
            .and_then(|doc| self.base.with_doc(doc).map_err(|e| e.to_string()));
        match parsed {
            Ok(config) => {
                tracing::info!(revision, "routing config from etcd");
                (Arc::new(config), Some(Some(*revision)))
            }
            Err(reason) => {
                self.control.refuse(*revision, reason);
                (self.config.clone(), None)
            }
        }
    }

    /// Checks each pool's bound plugin whose slot, version, bytes or config
    /// changed (compile, `init`, sample decisions), without swapping any.
    fn plan_plugins(
        &mut self,
        snapshot: &EtcdSnapshot,
        config: &Config,
        registry: &Registry,
    ) -> Plan {
        let mut plan = Plan::default();
        for pool in registry.pools() {
            // A pool rebuilt from scratch has a new, empty slot.
            let slot = Arc::as_ptr(&pool.policy) as usize;
            let binding = config
                .pools
                .iter()
                .find(|p| p.name == pool.name)
                .and_then(|p| p.policy.as_ref());
            let Some(binding) = binding else {
                if self.tried.contains_key(&pool.name) || pool.policy.current().is_some() {
                    plan.clear.push(pool.name.clone());
                }
                continue;
            };
            let wanted = binding.version.as_deref().unwrap_or("latest");
            let artifact = match self.artifact(snapshot, binding) {
                Ok(artifact) => artifact,
                Err(error) => {
                    let tried = Try {
                        slot,
                        plugin: binding.plugin.clone(),
                        version: wanted.to_string(),
                        sha256: String::new(),
                        config: error.to_string(),
                    };
                    if self.tried.get(&pool.name) != Some(&tried) {
                        pool.policy.refuse(&binding.plugin, wanted, None, &error);
                        plan.failures.push(format!("pool {}: {error}", pool.name));
                        plan.tried.push((pool.name.clone(), tried));
                    }
                    continue;
                }
            };
            let init_config = binding.config_json();
            let tried = Try {
                slot,
                plugin: binding.plugin.clone(),
                version: artifact.version.clone(),
                sha256: sha256_hex(&artifact.bytes),
                config: init_config.clone(),
            };
            let retry_due = self
                .transient
                .get(&pool.name)
                .is_some_and(|at| at.elapsed() >= RETRY_TRANSIENT);
            if self.tried.get(&pool.name) == Some(&tried) && !retry_due {
                continue;
            }
            let prepared = self.engine().and_then(|engine| {
                pool.policy.prepare(
                    &engine,
                    &binding.plugin,
                    &artifact.version,
                    &artifact.bytes,
                    &init_config,
                )
            });
            match prepared {
                Ok(prepared) => plan.ready.push((pool.policy.clone(), prepared)),
                Err(error) => {
                    if is_transient(&error) {
                        plan.transient.push(pool.name.clone());
                    }
                    plan.failures.push(format!(
                        "pool {}: plugin {} {}: {error}",
                        pool.name, binding.plugin, artifact.version
                    ));
                }
            }
            plan.tried.push((pool.name.clone(), tried));
        }
        plan
    }

    /// Loads, swaps or clears each pool's shadow version. A shadow never
    /// holds back a document: its refusal shows in the pool's shadow
    /// status and the log, and the live version serves on regardless.
    fn apply_shadows(&mut self, snapshot: &EtcdSnapshot, config: &Config, registry: &Registry) {
        for pool in registry.pools() {
            let key = format!("{}#shadow", pool.name);
            let slot = pool.shadow.slot.clone();
            let binding = config
                .pools
                .iter()
                .find(|p| p.name == pool.name)
                .and_then(|p| p.policy.as_ref())
                .and_then(PolicyBinding::shadow_binding);
            let Some(binding) = binding else {
                if slot.current().is_some() {
                    slot.clear();
                }
                self.tried.remove(&key);
                continue;
            };
            let wanted = binding.version.clone().unwrap_or_default();
            let mut tried = Try {
                slot: Arc::as_ptr(&slot) as usize,
                plugin: binding.plugin.clone(),
                version: wanted.clone(),
                sha256: String::new(),
                config: String::new(),
            };
            let artifact = match self.artifact(snapshot, &binding) {
                Ok(artifact) => artifact,
                Err(error) => {
                    tried.config = error.to_string();
                    if self.tried.get(&key) != Some(&tried) {
                        slot.refuse(&binding.plugin, &wanted, None, &error);
                        self.tried.insert(key, tried);
                    }
                    continue;
                }
            };
            let init_config = binding.config_json();
            (tried.sha256, tried.config) = (sha256_hex(&artifact.bytes), init_config.clone());
            let retry_due = self
                .transient
                .get(&key)
                .is_some_and(|at| at.elapsed() >= RETRY_TRANSIENT);
            if self.tried.get(&key) == Some(&tried) && !retry_due {
                continue;
            }
            let loaded = self.engine().and_then(|engine| {
                let (plugin, version) = (&binding.plugin, &artifact.version);
                slot.try_load(&engine, plugin, version, &artifact.bytes, &init_config)
            });
            match loaded {
                Err(error) if is_transient(&error) => {
                    self.transient.insert(key.clone(), Instant::now());
                }
                _ => {
                    self.transient.remove(&key);
                }
            }
            self.tried.insert(key, tried);
        }
    }

    /// Swaps in what `plan` prepared, and remembers what it tried.
    fn commit_plugins(&mut self, snapshot: &EtcdSnapshot, plan: Plan) {
        if let Some(engine) = &self.engine {
            for (slot, prepared) in plan.ready {
                slot.commit(engine, prepared);
                slot.set_config_source("binding".to_string());
            }
        }
        let live = self.live.load();
        for pool in &plan.clear {
            if let Some(p) = live.registry.pools().iter().find(|p| &p.name == pool) {
                p.policy.clear();
            }
            self.tried.remove(pool);
        }
        for (pool, tried) in plan.tried {
            self.transient.remove(&pool);
            self.tried.insert(pool, tried);
        }
        for pool in plan.transient {
            self.transient.insert(pool, Instant::now());
        }
        for failure in plan.failures {
            self.control.refuse(snapshot.revision, failure);
        }
    }

    fn engine(&mut self) -> Result<PluginEngine, PluginError> {
        if self.engine.is_none() {
            self.engine = Some(PluginEngine::new(&self.base.plugins)?);
        }
        Ok(self.engine.clone().expect("just made"))
    }

    /// The bytes `binding` selects: from etcd, else from the plugin
    /// directory when one is configured.
    fn artifact(
        &self,
        snapshot: &EtcdSnapshot,
        binding: &PolicyBinding,
    ) -> Result<Artifact, PluginError> {
        if let Some(artifact) = artifact::in_etcd(&self.keys, &snapshot.kvs, binding)? {
            return Ok(artifact);
        }
        let Some(dir) = &self.base.plugins.dir else {
            return Err(artifact::missing(binding));
        };
        let selected = select_in_dir(dir, binding)?;
        let bytes = std::fs::read(&selected.path).map_err(|source| PluginError::Io {
            path: selected.path.clone(),
            source,
        })?;
        Ok(Artifact {
            version: selected.version,
            bytes: bytes.into(),
        })
    }
}

/// The zones shifted away: by `config` and by unexpired shifts in etcd.
fn shifts(keys: &Keys, snapshot: &EtcdSnapshot, config: &Config) -> HashSet<String> {
    let prefix = keys.shifts();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let in_etcd = snapshot
        .kvs
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(key, (value, _))| {
            let Some(Key::Shift { zone }) = keys.parse(key) else {
                return None;
            };
            // The lease removes it when it ends; the value says so too,
            // in case a snapshot saved on disk outlived it.
            let until = serde_json::from_slice::<serde_json::Value>(value)
                .ok()
                .and_then(|v| v["until_ms"].as_u64());
            until.is_none_or(|until| until > now_ms).then_some(zone)
        });
    config
        .routing
        .shifted_zones
        .iter()
        .cloned()
        .chain(in_etcd)
        .collect()
}

/// The workers cordoned, as (pool, id).
fn cordons(keys: &Keys, snapshot: &EtcdSnapshot) -> HashSet<(String, String)> {
    let prefix = keys.cordons();
    snapshot
        .kvs
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(key, _)| match keys.parse(key) {
            Some(Key::Cordon { pool, id }) => Some((pool, id)),
            _ => None,
        })
        .collect()
}

/// The registrations to route to, and why the others are ignored.
fn registrations(
    keys: &Keys,
    snapshot: &EtcdSnapshot,
    config: &Config,
) -> (Vec<Registration>, Vec<String>) {
    let (mut routed, mut ignored) = (Vec::new(), Vec::new());
    for (key, (value, _)) in snapshot.kvs.range(keys.workers()..) {
        if !key.starts_with(&keys.workers()) {
            break;
        }
        let Some(Key::Worker { pool, id }) = keys.parse(key) else {
            ignored.push(format!("{key}: not a worker key"));
            continue;
        };
        let registration = match serde_json::from_slice::<Registration>(value) {
            Ok(r) => r,
            Err(e) => {
                ignored.push(format!("{key}: {e}"));
                continue;
            }
        };
        let problem = if registration.pool != pool || registration.id != id {
            Some("its pool or id differs from its key".to_string())
        } else if let Err(reason) = worker_url(&registration.url)
            .and_then(|url| registered_engine(&registration, &url).map(|_| ()))
        {
            Some(reason)
        } else {
            match config.pools.iter().find(|p| p.name == pool) {
                None => Some(format!("no pool `{pool}` in the config")),
                Some(p) if !p.models.contains(&registration.model) => Some(format!(
                    "pool `{pool}` does not serve model `{}`",
                    registration.model
                )),
                // The pool's prefix index hashes prompts in its own block
                // size: another one would never match the worker's cache.
                Some(p) if p.block_size != registration.block_size => Some(format!(
                    "block size {} differs from pool `{pool}`'s {}",
                    registration.block_size, p.block_size
                )),
                Some(p) if p.workers.iter().any(|w| w.id == *id) => {
                    Some(format!("pool `{pool}` has a static worker `{id}`"))
                }
                Some(_) => None,
            }
        };
        match problem {
            Some(problem) => ignored.push(format!("{key}: {problem}")),
            None => routed.push(registration),
        }
    }
    (routed, ignored)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn snapshot(keys: &Keys, registrations: &[Registration]) -> EtcdSnapshot {
        let kvs = registrations
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let value = Bytes::from(serde_json::to_vec(r).unwrap());
                (keys.worker(&r.pool, &r.id), (value, i as i64 + 1))
            })
            .collect();
        EtcdSnapshot {
            revision: 9,
            kvs,
            from_disk: false,
        }
    }

    fn registration(id: &str, block_size: usize) -> Registration {
        Registration {
            id: id.to_string(),
            pool: "p".to_string(),
            url: "http://h:2".to_string(),
            zone: "a".to_string(),
            labels: BTreeMap::new(),
            model: "m".to_string(),
            block_size,
            engine: "sim/sim".to_string(),
            started_at_ms: 0,
            engine_kind: None,
            metrics_url: None,
            kv_events: None,
            kv_replay: None,
        }
    }

    #[test]
    fn registrations_that_cannot_route_are_listed_with_why() {
        let config = Config::from_toml(
            "[[pools]]\nname = \"p\"\nmodels = [\"m\"]\nblock_size = 16\n[[pools.workers]]\nid = \"s\"\nurl = \"http://h:1\"\n",
        )
        .unwrap();
        let keys = Keys::new("/t");
        let snapshot = snapshot(
            &keys,
            &[
                registration("ok", 16),
                registration("big", 32),
                registration("s", 16),
            ],
        );
        let (routed, ignored) = registrations(&keys, &snapshot, &config);
        let ids: Vec<_> = routed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["ok"]);
        assert_eq!(
            ignored,
            [
                "/t/workers/p/big: block size 32 differs from pool `p`'s 16",
                "/t/workers/p/s: pool `p` has a static worker `s`",
            ]
        );
    }

    #[test]
    fn any_change_under_plugins_makes_a_pending_document_due() {
        let keys = Keys::new("/t");
        let mut snapshot = snapshot(&keys, &[registration("w", 16)]);
        let (wasm, sha) = (
            keys.plugin_wasm("x", "1.0.0"),
            keys.plugin_sha256("x", "1.0.0"),
        );
        snapshot.kvs.insert(wasm.clone(), (Bytes::new(), 10));
        let before = PluginKeys::of(&keys, &snapshot);
        let pending = Pending {
            plugins: before,
            at: Instant::now(),
            on_tick: true,
            reason: "missing".to_string(),
        };
        assert!(
            !pending.due(before),
            "nothing changed, and the tick is not due"
        );
        snapshot
            .kvs
            .insert(keys.worker("p", "w2"), (Bytes::new(), 11));
        assert!(
            !pending.due(PluginKeys::of(&keys, &snapshot)),
            "a worker's key is not a plugin's"
        );
        snapshot.kvs.insert(sha, (Bytes::new(), 12));
        assert!(pending.due(PluginKeys::of(&keys, &snapshot)), "a put");
        snapshot.kvs.remove(&wasm);
        assert!(
            pending.due(PluginKeys::of(&keys, &snapshot)),
            "a put then a delete"
        );
        snapshot.kvs.insert(wasm, (Bytes::new(), 10));
        let mut earlier = snapshot.clone();
        earlier.kvs.retain(|key, _| !key.ends_with("sha256"));
        assert_eq!(PluginKeys::of(&keys, &earlier), before);
    }
}
