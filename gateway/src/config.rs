//! Gateway config: a raw serde shape read from TOML (`deny_unknown_fields`),
//! checked whole into `Config`, every problem reported at once with its key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use crate::plugin::{PluginsConfig, PolicyBinding};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The whole gateway config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's own zone; workers in it are preferred. Default `"default"`.
    #[serde(default = "default_zone")]
    pub zone: String,
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

/// The control plane: workers register in etcd, and the routing config
/// ([`RoutingDoc`]) and plugins may live there, replacing this file's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd endpoints, e.g. `["http://127.0.0.1:2379"]`. Default none: the
    /// workers, config and plugins of this file only.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Key prefix of the fleet. Default `/llmgw`.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
}

/// The routing config as it lives in etcd under `{prefix}/config` (TOML):
/// the sections that may change while serving. Listeners, TLS, health,
/// retries, the bus and the plugin host stay in each gateway's own file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingDoc {
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

impl RoutingDoc {
    /// Parses and checks a document as a gateway with a control plane would.
    pub fn from_toml(text: &str) -> Result<RoutingDoc, ConfigError> {
        let doc: RoutingDoc = toml::from_str(text)?;
        let base = Config {
            etcd: EtcdConfig {
                endpoints: vec!["http://etcd".to_string()],
                ..EtcdConfig::default()
            },
            ..Config::default()
        };
        base.with_doc(doc.clone())?;
        Ok(doc)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a routing document serializes")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// The OpenAI API. Default `127.0.0.1:8080`.
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// Metrics, probes and status; a separate socket so it can stay private. Default `127.0.0.1:9090`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// TLS on the API listener; plain HTTP (HTTP/1.1 and h2c) when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Close a client connection idle this long; keep above the load balancer's idle timeout. Default 75000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413. Default 4 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests served at once; more are shed with 503. Default 4096.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Time allowed to in-flight requests after SIGTERM. Default 30000.
    #[serde(default = "default_drain_grace_ms")]
    pub drain_grace_ms: u64,
    /// Add `x-worker-id` to responses, naming the worker that served them. Default true.
    #[serde(default = "default_true")]
    pub worker_id_header: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Active probes of each worker's `/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Default 1000.
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: u64,
    /// A probe slower than this fails. Default 1000.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed probes that mark a worker unhealthy. Default 2.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that mark it healthy again. Default 2.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
}

/// Passive ejection: a circuit breaker per worker fed by real requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject a worker. Default 3.
    #[serde(default = "default_three")]
    pub failure_threshold: u32,
    /// First ejection; each further one in a row doubles it. Default 1000.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// Longest ejection. Default 30000.
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Workers tried per request, the first included. Default 3.
    #[serde(default = "default_three")]
    pub max_attempts: u32,
    /// Time one attempt has to produce response headers (for streams: the first event). Default 30000.
    #[serde(default = "default_per_try_timeout_ms")]
    pub per_try_timeout_ms: u64,
    /// Time all attempts together have to produce a response. Default 60000.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
}

/// How the built-in policy orders candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// KV-cache overlap from workers' events (falling back to `approx` for a
    /// worker whose events are missing), weighed against load.
    Kv,
    /// Overlap guessed from this gateway's own past decisions, for engines that publish no events.
    Approx,
    /// Least in-flight by power of two choices; ignores the cache.
    LeastLoad,
    /// Each candidate in turn; a baseline for benchmarks.
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Default `kv`.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// A worker with this many requests in flight counts as saturated, and
    /// traffic spills to other zones. Default 32.
    #[serde(default = "default_spill_in_flight")]
    pub spill_in_flight: u32,
    /// Cost of each prompt block a worker would have to prefill. Default 1.0.
    #[serde(default = "default_one")]
    pub prefill_weight: f64,
    /// Cost of each request a worker is already serving. Default 1.0.
    #[serde(default = "default_one")]
    pub decode_weight: f64,
    /// Cost of leaving the gateway's zone, in prefill blocks. Default 2.0.
    #[serde(default = "default_remote_zone_cost")]
    pub remote_zone_cost: f64,
    /// Hot-spot guard: when the busiest candidate serves this many more
    /// requests than the idlest... Default 16.
    #[serde(default = "default_balance_abs")]
    pub balance_abs_threshold: u32,
    /// ...and this many times as many, route by load alone. Default 2.0.
    #[serde(default = "default_balance_rel")]
    pub balance_rel_threshold: f64,
    /// How long the approximate index remembers a routed prompt. Default 120000.
    #[serde(default = "default_approx_ttl_ms")]
    pub approx_ttl_ms: u64,
    /// Bound on the approximate index's (block, worker) entries per pool. Default 1000000.
    #[serde(default = "default_approx_max_entries")]
    pub approx_max_entries: usize,
    /// Bound on blocks the exact index keeps per worker; a worker past it is resynced. Default 1000000.
    #[serde(default = "default_max_blocks_per_worker")]
    pub max_blocks_per_worker: usize,
}

/// The bus carrying workers' KV events and load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// A NATS server, e.g. `nats://127.0.0.1:4222`. Default none: routing
    /// uses the approximate index and the gateway's own load figures.
    #[serde(default)]
    pub nats_url: Option<String>,
    /// First token of every subject. Default `llmgw`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// A load report older than this is unknown, not idle. Default 3000.
    #[serde(default = "default_load_stale_ms")]
    pub load_stale_ms: u64,
    /// Time a worker has to answer a snapshot request. Default 2000.
    #[serde(default = "default_snapshot_timeout_ms")]
    pub snapshot_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra PEM CA certificates trusted for `https://` workers, besides the system's.
    #[serde(default)]
    pub ca_path: Option<PathBuf>,
    /// Time to open a connection to a worker. Default 2000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Close pooled worker connections idle this long. Default 90000.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Model names this pool serves, as clients send them.
    pub models: Vec<String>,
    /// Tokens per KV block, as the pool's workers hash them. Default 16.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// `builtin` (the sim's tokenizer), the workers' `.gguf` model file or
    /// Hugging Face directory, or their `tokenizer.json`. Default `builtin`.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// A WASM routing policy for this pool; default none: the built-in one.
    #[serde(default)]
    pub policy: Option<PolicyBinding>,
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub id: String,
    /// `http://` or `https://` base URL.
    pub url: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Free-form labels (version, colour, …) for policies.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// This config with `doc`'s sections in place of its own, checked whole.
    pub fn with_doc(&self, doc: RoutingDoc) -> Result<Config, ConfigError> {
        let config = Config {
            routing: doc.routing,
            pools: doc.pools,
            ..self.clone()
        };
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        };
        positive("listeners.idle_timeout_ms", self.listeners.idle_timeout_ms);
        positive(
            "listeners.max_body_bytes",
            self.listeners.max_body_bytes as u64,
        );
        positive(
            "listeners.max_concurrent_requests",
            self.listeners.max_concurrent_requests as u64,
        );
        positive("health.interval_ms", self.health.interval_ms);
        positive("health.timeout_ms", self.health.timeout_ms);
        positive(
            "health.unhealthy_threshold",
            self.health.unhealthy_threshold.into(),
        );
        positive(
            "health.healthy_threshold",
            self.health.healthy_threshold.into(),
        );
        positive(
            "breaker.failure_threshold",
            self.breaker.failure_threshold.into(),
        );
        positive("breaker.base_ejection_ms", self.breaker.base_ejection_ms);
        positive("retry.max_attempts", self.retry.max_attempts.into());
        positive("retry.per_try_timeout_ms", self.retry.per_try_timeout_ms);
        positive("retry.total_timeout_ms", self.retry.total_timeout_ms);
        positive(
            "routing.spill_in_flight",
            self.routing.spill_in_flight.into(),
        );
        positive(
            "upstream.connect_timeout_ms",
            self.upstream.connect_timeout_ms,
        );
        positive("routing.approx_ttl_ms", self.routing.approx_ttl_ms);
        positive(
            "routing.approx_max_entries",
            self.routing.approx_max_entries as u64,
        );
        positive(
            "routing.max_blocks_per_worker",
            self.routing.max_blocks_per_worker as u64,
        );
        positive("bus.load_stale_ms", self.bus.load_stale_ms);
        positive("bus.snapshot_timeout_ms", self.bus.snapshot_timeout_ms);
        for (key, value) in [
            ("routing.prefill_weight", self.routing.prefill_weight),
            ("routing.decode_weight", self.routing.decode_weight),
            ("routing.remote_zone_cost", self.routing.remote_zone_cost),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                errors.push(format!("{key}: must be a finite number >= 0"));
            }
        }
        if self.routing.balance_rel_threshold.is_nan() || self.routing.balance_rel_threshold < 1.0 {
            errors.push("routing.balance_rel_threshold: must be at least 1".to_string());
        }
        if !protocol::bus::valid_token(&self.bus.subject_prefix) {
            errors.push(
                "bus.subject_prefix: only letters, digits, '-' and '_' are allowed".to_string(),
            );
        }
        self.plugins.validate("plugins", &mut errors);
        let etcd = !self.etcd.endpoints.is_empty();
        if !etcd && self.plugins.dir.is_none() && self.pools.iter().any(|p| p.policy.is_some()) {
            errors.push(
                "plugins.dir: required when a pool binds a policy and no etcd holds plugins"
                    .to_string(),
            );
        }
        if !self.etcd.prefix.starts_with('/') {
            errors.push("etcd.prefix: must start with '/'".to_string());
        }
        if self.breaker.max_ejection_ms < self.breaker.base_ejection_ms {
            errors.push(
                "breaker.max_ejection_ms: must be at least breaker.base_ejection_ms".to_string(),
            );
        }
        if self.listeners.api == self.listeners.admin && self.listeners.api.port() != 0 {
            errors.push("listeners.admin: must differ from listeners.api".to_string());
        }
        if self.pools.is_empty() && !etcd {
            errors.push("pools: at least one pool is required (or etcd to hold them)".to_string());
        }
        let (mut pool_names, mut models, mut worker_ids) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        for (p, pool) in self.pools.iter().enumerate() {
            let key = format!("pools[{p}]");
            if !protocol::bus::valid_token(&pool.name) {
                errors.push(format!(
                    "{key}.name: must be non-empty letters, digits, '-' and '_'"
                ));
            } else if !pool_names.insert(&pool.name) {
                errors.push(format!("{key}.name: duplicate pool `{}`", pool.name));
            }
            if let Some(policy) = &pool.policy {
                policy.validate(&format!("{key}.policy"), &mut errors);
            }
            if pool.block_size == 0 {
                errors.push(format!("{key}.block_size: must be greater than 0"));
            }
            if pool.tokenizer != "builtin" && !Path::new(&pool.tokenizer).exists() {
                errors.push(format!(
                    "{key}.tokenizer: `{}` is neither `builtin` nor a file or directory",
                    pool.tokenizer
                ));
            }
            if pool.models.is_empty() {
                errors.push(format!("{key}.models: at least one model is required"));
            }
            for model in &pool.models {
                if !models.insert(model) {
                    errors.push(format!(
                        "{key}.models: model `{model}` is served by another pool too"
                    ));
                }
            }
            for (w, worker) in pool.workers.iter().enumerate() {
                let key = format!("{key}.workers[{w}]");
                if !protocol::bus::valid_token(&worker.id) {
                    errors.push(format!(
                        "{key}.id: must be non-empty letters, digits, '-' and '_'"
                    ));
                } else if !worker_ids.insert(&worker.id) {
                    errors.push(format!("{key}.id: duplicate worker id `{}`", worker.id));
                }
                if let Err(reason) = check_worker_url(&worker.url) {
                    errors.push(format!("{key}.url: {reason}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

pub(crate) fn check_worker_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!("`{url}` must be a base URL without a path"));
    }
    Ok(())
}

impl Listeners {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            api: default_api(),
            admin: default_admin(),
            tls: None,
            idle_timeout_ms: default_idle_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
            drain_grace_ms: default_drain_grace_ms(),
            worker_id_header: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            zone: default_zone(),
            listeners: Listeners::default(),
            health: HealthConfig::default(),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            routing: RoutingConfig::default(),
            upstream: UpstreamConfig::default(),
            bus: BusConfig::default(),
            plugins: PluginsConfig::default(),
            etcd: EtcdConfig::default(),
            pools: Vec::new(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: protocol::control::DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_probe_interval_ms(),
            timeout_ms: default_probe_timeout_ms(),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            per_try_timeout_ms: default_per_try_timeout_ms(),
            total_timeout_ms: default_total_timeout_ms(),
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: default_strategy(),
            spill_in_flight: default_spill_in_flight(),
            prefill_weight: 1.0,
            decode_weight: 1.0,
            remote_zone_cost: default_remote_zone_cost(),
            balance_abs_threshold: default_balance_abs(),
            balance_rel_threshold: default_balance_rel(),
            approx_ttl_ms: default_approx_ttl_ms(),
            approx_max_entries: default_approx_max_entries(),
            max_blocks_per_worker: default_max_blocks_per_worker(),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            nats_url: None,
            subject_prefix: default_subject_prefix(),
            load_stale_ms: default_load_stale_ms(),
            snapshot_timeout_ms: default_snapshot_timeout_ms(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            ca_path: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            pool_idle_timeout_ms: default_pool_idle_timeout_ms(),
        }
    }
}

fn default_zone() -> String {
    "default".to_string()
}
fn default_api() -> SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}
fn default_admin() -> SocketAddr {
    ([127, 0, 0, 1], 9090).into()
}
fn default_true() -> bool {
    true
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}
fn default_idle_timeout_ms() -> u64 {
    75_000
}
fn default_max_body_bytes() -> usize {
    4 << 20
}
fn default_max_concurrent_requests() -> usize {
    4096
}
fn default_drain_grace_ms() -> u64 {
    30_000
}
fn default_probe_interval_ms() -> u64 {
    1000
}
fn default_probe_timeout_ms() -> u64 {
    1000
}
fn default_base_ejection_ms() -> u64 {
    1000
}
fn default_max_ejection_ms() -> u64 {
    30_000
}
fn default_per_try_timeout_ms() -> u64 {
    30_000
}
fn default_total_timeout_ms() -> u64 {
    60_000
}
fn default_spill_in_flight() -> u32 {
    32
}
fn default_strategy() -> Strategy {
    Strategy::Kv
}
fn default_one() -> f64 {
    1.0
}
fn default_remote_zone_cost() -> f64 {
    2.0
}
fn default_balance_abs() -> u32 {
    16
}
fn default_balance_rel() -> f64 {
    2.0
}
fn default_approx_ttl_ms() -> u64 {
    120_000
}
fn default_approx_max_entries() -> usize {
    1_000_000
}
fn default_max_blocks_per_worker() -> usize {
    1_000_000
}
fn default_etcd_prefix() -> String {
    protocol::control::DEFAULT_PREFIX.to_string()
}
fn default_subject_prefix() -> String {
    "llmgw".to_string()
}
fn default_load_stale_ms() -> u64 {
    3000
}
fn default_snapshot_timeout_ms() -> u64 {
    2000
}
fn default_block_size() -> usize {
    16
}
fn default_tokenizer() -> String {
    "builtin".to_string()
}
fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_pool_idle_timeout_ms() -> u64 {
    90_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[pools]]
        name = "p"
        models = ["m"]
        [[pools.workers]]
        id = "w1"
        url = "http://127.0.0.1:8001"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.listeners.api.port(), 8080);
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.pools[0].workers[0].zone, "default");
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        Config::from_file(&path).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml(&format!("{MINIMAL}\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
            [retry]
            max_attempts = 0
            [[pools]]
            name = "p"
            models = ["m"]
            [[pools.workers]]
            id = "w"
            url = "ftp://x"
            [[pools.workers]]
            id = "w"
            url = "http://h:1/v1"
        "#;
        let err = Config::from_toml(text).unwrap_err().to_string();
        for needle in [
            "retry.max_attempts",
            "pools[0].workers[0].url",
            "pools[0].workers[1].id",
            "pools[0].workers[1].url",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn routing_doc_round_trips_and_replaces_the_files_sections() {
        let text = r#"
            [routing]
            strategy = "round_robin"
            [[pools]]
            name = "q"
            models = ["m2"]
            policy = { plugin = "blue-green", config = { active = "blue" } }
        "#;
        let doc = RoutingDoc::from_toml(text).unwrap();
        assert_eq!(RoutingDoc::from_toml(&doc.to_toml()).unwrap(), doc);
        let file = Config::from_toml(&format!(
            "{MINIMAL}\n[etcd]\nendpoints = [\"http://e:2379\"]"
        ))
        .unwrap();
        let merged = file.with_doc(doc).unwrap();
        assert_eq!(merged.routing.strategy, Strategy::RoundRobin);
        assert_eq!(merged.pools[0].name, "q");
        assert_eq!(merged.etcd.endpoints, ["http://e:2379"]);
        // Checked whole, like a file.
        assert!(RoutingDoc::from_toml("[routing]\nprefill_weight = -1").is_err());
        assert!(RoutingDoc::from_toml("[listeners]\napi = \"0.0.0.0:1\"").is_err());
    }

    #[test]
    fn with_etcd_pools_and_plugin_dir_may_come_later() {
        let text = "[etcd]\nendpoints = [\"http://e:2379\"]";
        assert!(Config::from_toml(text).unwrap().pools.is_empty());
        assert!(Config::from_toml("").is_err());
    }
}
