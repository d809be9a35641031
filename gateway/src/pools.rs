//! The worker registry: pools by model, each with its workers, tokenizer,
//! prefix index and policy, rebuilt whole when config or registrations
//! change and carrying over the state of what did not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prompt::{Tokenizer, TokenizerError};
use protocol::control::Registration;

use crate::config::{registered_engine, worker_url, Config};
use crate::metrics::PoolMetrics;
use crate::plugin::PolicySlot;
use crate::plugin_table::PluginTable;
use crate::prefix::PrefixState;
use crate::shadow::Shadow;
use crate::tokenize;
use crate::worker::Worker;
use protocol::WorkerId;

pub struct Registry {
    pools: Vec<Arc<Pool>>,
    by_model: HashMap<String, Arc<Pool>>,
}

pub struct Pool {
    pub name: String,
    pub models: Vec<String>,
    pub workers: Vec<Arc<Worker>>,
    pub block_size: usize,
    /// The config's `tokenizer`, to tell whether a new config changed it.
    tokenizer_spec: String,
    pub tokenizer: Arc<Tokenizer>,
    pub prefix: Arc<PrefixState>,
    /// The WASM policy in force; empty means the built-in policy.
    pub policy: Arc<PolicySlot>,
    /// The workers as that policy sees them, rebuilt when they change.
    pub plugin_table: Arc<PluginTable>,
    /// Requests routed so far: the round-robin strategy's turn.
    turn: AtomicUsize,
    /// What its engines require as `Authorization`, if anything.
    pub credential: Option<http::HeaderValue>,
    /// The version its binding tries in shadow, and the share of requests
    /// it decides too (0: none).
    pub shadow: Arc<Shadow>,
    pub shadow_sample: f64,
    pub metrics: PoolMetrics,
}

impl Pool {
    pub fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn worker(&self, id: &str) -> Option<&Arc<Worker>> {
        self.workers.iter().find(|w| w.id == id)
    }
}

impl Registry {
    /// The pools of `config` with their static workers; what a gateway
    /// without a control plane routes on.
    pub fn from_config(config: &Config) -> Result<Registry, TokenizerError> {
        let registry = Registry::build(config, &[], None)?;
        let shifted = config.routing.shifted_zones.iter().cloned().collect();
        registry.mark_rotation(&HashSet::new(), &shifted);
        Ok(registry)
    }

    /// The pools of `config` with their static workers plus the `discovered`
    /// ones registered for them. State carries over from `previous` where
    /// nothing it depends on changed: a pool's tokenizer, prefix index and
    /// policy slot (same name, block size and tokenizer), and each worker's
    /// counters, health and breaker (same pool, id, URL, zone and labels).
    pub fn build(
        config: &Config,
        discovered: &[Registration],
        previous: Option<&Registry>,
    ) -> Result<Registry, TokenizerError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let kept = previous
                .and_then(|r| r.pools.iter().find(|old| old.name == p.name))
                .filter(|old| old.block_size == p.block_size && old.tokenizer_spec == p.tokenizer);
            let (tokenizer, prefix, policy, plugin_table, shadow) = match kept {
                // The plugin table checks itself against the workers it is asked about.
                Some(old) => (
                    old.tokenizer.clone(),
                    old.prefix.clone(),
                    old.policy.clone(),
                    old.plugin_table.clone(),
                    old.shadow.clone(),
                ),
                None => (
                    tokenize::load(&p.tokenizer)?,
                    Arc::new(PrefixState::new(p.block_size, &config.routing)),
                    Arc::new(PolicySlot::new(p.name.clone())),
                    Arc::default(),
                    Shadow::new(&p.name),
                ),
            };
            let shadow_sample = p
                .policy
                .as_ref()
                .and_then(|b| b.shadow.as_ref())
                .map_or(0.0, |s| s.sample);
            let statics = p.workers.iter().map(|w| {
                (
                    w.id.as_str(),
                    w.url.clone(),
                    w.zone.as_str(),
                    &w.labels,
                    w.engine.clone(),
                )
            });
            // A registration never shadows a static worker of the same id
            // (the control plane lists it among the ignored ones), and the
            // control plane ignores registrations with a bad URL or engine.
            let registered = discovered
                .iter()
                .filter(|r| r.pool == p.name && !p.workers.iter().any(|w| w.id == *r.id))
                .filter_map(|r| {
                    let url = worker_url(&r.url).ok()?;
                    let engine = registered_engine(r, &url).ok()?;
                    Some((r.id.as_str(), url, r.zone.as_str(), &r.labels, engine))
                });
            let workers: Vec<Arc<Worker>> = statics
                .chain(registered)
                .map(|(id, url, zone, labels, engine)| {
                    let same = kept.and_then(|old| old.worker(id)).filter(|w| {
                        w.url == url && w.zone == zone && &w.labels == labels && w.engine == engine
                    });
                    match same {
                        Some(w) => w.clone(),
                        None => Arc::new(
                            Worker::new(
                                WorkerId::from(id),
                                p.name.clone(),
                                url,
                                zone.to_string(),
                                labels.clone(),
                                &config.breaker,
                            )
                            .with_engine(engine),
                        ),
                    }
                })
                .collect();
            pools.push(Arc::new(Pool {
                name: p.name.clone(),
                models: p.models.clone(),
                block_size: p.block_size,
                tokenizer_spec: p.tokenizer.clone(),
                tokenizer,
                prefix,
                policy,
                plugin_table,
                turn: AtomicUsize::new(0),
                credential: p.credential.clone(),
                shadow,
                shadow_sample,
                metrics: PoolMetrics::new(&p.name, &p.models),
                workers,
            }));
        }
        let by_model = pools
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| (m.clone(), p.clone())))
            .collect();
        Ok(Registry { pools, by_model })
    }

    /// Forgets, in each prefix index carried over from `previous`, the
    /// workers this registry no longer has or has replaced: their caches went
    /// with them. Called once this registry serves, not from `build`: the
    /// indexes are shared with `previous`, and a registry built for a
    /// document that is then refused must change nothing.
    pub fn forget_departed(&self, previous: &Registry) {
        for pool in &self.pools {
            let Some(old) = previous
                .pools
                .iter()
                .find(|old| Arc::ptr_eq(&old.prefix, &pool.prefix))
            else {
                continue;
            };
            for w in &old.workers {
                if !pool.workers.iter().any(|n| Arc::ptr_eq(n, w)) {
                    pool.prefix.remove_worker(&w.id);
                }
            }
        }
    }

    pub fn pool_for(&self, model: &str) -> Option<&Arc<Pool>> {
        self.by_model.get(model)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Cordons exactly the workers `cordoned` names, as (pool, id), and
    /// shifts exactly the zones `shifted` names.
    pub fn mark_rotation(&self, cordoned: &HashSet<(String, String)>, shifted: &HashSet<String>) {
        for pool in &self.pools {
            for w in &pool.workers {
                let key = (pool.name.clone(), w.id.to_string());
                let on = cordoned.contains(&key);
                if w.cordoned.swap(on, Ordering::Relaxed) != on {
                    tracing::info!(pool = %pool.name, worker = %w.id, cordoned = on, "worker {}", if on { "cordoned" } else { "uncordoned" });
                }
                w.zone_shifted
                    .store(shifted.contains(&w.zone), Ordering::Relaxed);
            }
        }
    }

    pub fn workers(&self) -> impl Iterator<Item = &Arc<Worker>> {
        self.pools.iter().flat_map(|p| p.workers.iter())
    }

    /// Model ids served, in config order.
    pub fn models(&self) -> Vec<String> {
        self.pools
            .iter()
            .flat_map(|p| p.models.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;
    use protocol::blocks::BlockHash;
    use std::collections::BTreeMap;
    use std::time::Instant;

    fn registration(id: &str, url: &str) -> Registration {
        Registration {
            id: id.to_string(),
            pool: "p".to_string(),
            url: url.to_string(),
            zone: "a".to_string(),
            labels: BTreeMap::new(),
            model: "m".to_string(),
            block_size: 16,
            engine: "sim".to_string(),
            started_at_ms: 0,
            engine_kind: None,
            metrics_url: None,
            kv_events: None,
            kv_replay: None,
        }
    }

    #[test]
    fn a_rebuild_keeps_the_state_of_what_did_not_change() {
        let config = Config::from_toml(
            "[[pools]]\nname = \"p\"\nmodels = [\"m\"]\n[[pools.workers]]\nid = \"s\"\nurl = \"http://h:1\"\n",
        )
        .unwrap();
        let first = Registry::build(
            &config,
            &[
                registration("a", "http://h:2"),
                registration("b", "http://h:3"),
            ],
            None,
        )
        .unwrap();
        let pool = &first.pools()[0];
        let ids: Vec<_> = pool.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["s", "a", "b"]);
        let _busy = pool.worker("a").unwrap().start_request();
        pool.prefix
            .learn(Strategy::Kv, "b", &[BlockHash(7)], Instant::now());

        // `a` unchanged, `b` moved to another URL, `s` static: only `b` is new.
        let second = Registry::build(
            &config,
            &[
                registration("a", "http://h:2"),
                registration("b", "http://h:9"),
            ],
            Some(&first),
        )
        .unwrap();
        let again = &second.pools()[0];
        assert!(Arc::ptr_eq(&pool.policy, &again.policy));
        assert!(Arc::ptr_eq(&pool.prefix, &again.prefix));
        assert_eq!(again.worker("a").unwrap().in_flight(), 1);
        assert!(Arc::ptr_eq(
            pool.worker("s").unwrap(),
            again.worker("s").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            pool.worker("b").unwrap(),
            again.worker("b").unwrap()
        ));
        // The replaced `b`'s cache is forgotten once the new registry serves, not before.
        assert_eq!(again.prefix.sizes().1, 1);
        second.forget_departed(&first);
        assert_eq!(again.prefix.sizes().1, 0);

        // A registration never shadows a static worker of the same id.
        let third =
            Registry::build(&config, &[registration("s", "http://h:7")], Some(&second)).unwrap();
        assert_eq!(third.pools()[0].workers.len(), 1);
        assert_eq!(third.pools()[0].workers[0].url, "http://h:1/");
    }
}
