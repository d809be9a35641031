//! Gateway config: the shape written in TOML, in the file or in etcd
//! (`RawConfig`, `deny_unknown_fields`), checked whole into `Config`, every
//! problem reported at once with its key. Keys carry their unit
//! (`timeout_ms`); the checked sections hold `Duration`s and parsed URLs.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineKind};
use crate::plugin::{PluginsConfig, PolicyBinding};
use crate::tenancy::config::{AdmissionConfig, AuthConfig, AuthMode, LimitsConfig, UsageConfig};
use protocol::control::Registration;
use protocol::WorkerId;

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

/// The whole gateway config as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
    pub pools: Vec<RawPool>,
    /// How the binary logs; read before the rest is checked.
    #[serde(default)]
    pub logs: protocol::logs::LogsConfig,
    /// Where spans are exported (OTLP), if anywhere.
    #[serde(default)]
    pub tracing: protocol::traces::TracingConfig,
    /// Who may use the API: keys, or anyone.
    #[serde(default)]
    pub auth: AuthConfig,
    /// How rate limits are shared between replicas.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Queueing when a pool's workers are all busy.
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Accounting of what each request used.
    #[serde(default)]
    pub usage: UsageConfig,
}

/// The whole gateway config, checked: what the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub zone: String,
    pub listeners: Listeners,
    pub health: HealthConfig,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
    pub routing: RoutingConfig,
    pub upstream: UpstreamConfig,
    pub bus: BusConfig,
    pub plugins: PluginsConfig,
    pub etcd: EtcdConfig,
    pub pools: Vec<PoolConfig>,
    pub auth: AuthConfig,
    /// `auth.mode` as resolved for this listener.
    pub auth_mode: AuthMode,
    pub limits: LimitsConfig,
    pub admission: AdmissionConfig,
    pub usage: UsageConfig,
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
    /// Where the last state applied from etcd is kept, so a gateway that
    /// starts while etcd is unreachable serves the fleet it last knew
    /// rather than this file's static workers. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
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
    pub pools: Vec<RawPool>,
}

impl RoutingDoc {
    /// Parses and checks a document as a gateway with a control plane would.
    pub fn from_toml(text: &str) -> Result<RoutingDoc, ConfigError> {
        let doc: RoutingDoc = toml::from_str(text)?;
        RawConfig {
            etcd: EtcdConfig {
                endpoints: vec!["http://etcd".to_string()],
                ..EtcdConfig::default()
            },
            routing: doc.routing.clone(),
            pools: doc.pools.clone(),
            ..RawConfig::default()
        }
        .check()?;
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
    #[serde(
        rename = "idle_timeout_ms",
        with = "millis",
        default = "default_idle_timeout"
    )]
    pub idle_timeout: Duration,
    /// A new connection must send its first request head within this, or
    /// it is closed: clients trickling header lines cannot hold every
    /// socket. (Later requests on a kept-alive connection have
    /// `idle_timeout_ms`.) Default 10000.
    #[serde(
        rename = "header_read_timeout_ms",
        with = "millis",
        default = "default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// Open client connections at most; one more is answered 503 and
    /// closed before any work is taken on. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request body accepted; larger ones get 413. Default 4 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests served at once; more are shed with 503. Default 4096.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Time allowed to in-flight requests after SIGTERM. Default 30000.
    #[serde(
        rename = "drain_grace_ms",
        with = "millis",
        default = "default_drain_grace"
    )]
    pub drain_grace: Duration,
    /// Add `x-worker-id` to every response, naming the worker that served
    /// it; without it, only admin keys' responses carry it. Default false.
    #[serde(default)]
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
    #[serde(
        rename = "interval_ms",
        with = "millis",
        default = "default_probe_interval"
    )]
    pub interval: Duration,
    /// A probe slower than this fails. Default 1000.
    #[serde(
        rename = "timeout_ms",
        with = "millis",
        default = "default_probe_timeout"
    )]
    pub timeout: Duration,
    /// Consecutive failed probes that mark a worker unhealthy. Default 2.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that mark it healthy again. Default 2.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Canary generations: a worker that answered no request for this long
    /// is sent a one-token generation, and its probes fail while that fails
    /// or outlasts `canary_timeout_ms`. Catches an engine whose HTTP thread
    /// answers `/health` while its engine loop hangs. Default 0: off.
    #[serde(rename = "canary_interval_ms", with = "millis", default)]
    pub canary_interval: Duration,
    /// Default 5000.
    #[serde(
        rename = "canary_timeout_ms",
        with = "millis",
        default = "default_canary_timeout"
    )]
    pub canary_timeout: Duration,
}

/// Passive ejection: a circuit breaker per worker fed by real requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject a worker. Default 3.
    #[serde(default = "default_three")]
    pub failure_threshold: u32,
    /// First ejection; each further one in a row doubles it. Default 1000.
    #[serde(
        rename = "base_ejection_ms",
        with = "millis",
        default = "default_base_ejection"
    )]
    pub base_ejection: Duration,
    /// Longest ejection. Default 30000.
    #[serde(
        rename = "max_ejection_ms",
        with = "millis",
        default = "default_max_ejection"
    )]
    pub max_ejection: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Workers tried per request, the first included. Default 3.
    #[serde(default = "default_three")]
    pub max_attempts: u32,
    /// Time one attempt has to answer: a stream its first event, another
    /// answer its whole body (read before the client gets it). Default 30000.
    #[serde(
        rename = "per_try_timeout_ms",
        with = "millis",
        default = "default_per_try_timeout"
    )]
    pub per_try_timeout: Duration,
    /// Once a response is on its way, the longest the worker may send
    /// nothing: a hung worker then costs its client this wait, not forever.
    /// The stream is then continued elsewhere, as after a break. Default 30000.
    #[serde(
        rename = "stream_stall_ms",
        with = "millis",
        default = "default_stream_stall"
    )]
    pub stream_stall: Duration,
    /// Time all attempts together have to produce a response. Default 60000.
    #[serde(
        rename = "total_timeout_ms",
        with = "millis",
        default = "default_total_timeout"
    )]
    pub total_timeout: Duration,
    /// Times one stream may be continued on another worker after its worker
    /// broke (reset, closed early, an error event, a stall) once the client
    /// had its first byte. 0 turns continuing off, and with it the reading of
    /// each event it needs: a broken stream then ends with an error event.
    /// Default 2.
    #[serde(default = "default_two")]
    pub max_migrations: u32,
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

impl Strategy {
    /// Whether this strategy weighs prefix overlap, and so whether the
    /// approximate index should learn from its decisions.
    pub fn uses_cache(self) -> bool {
        matches!(self, Strategy::Kv | Strategy::Approx)
    }
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
    /// Zones shifted away: new requests go to workers elsewhere while any
    /// can take them (as `gatewayctl zone shift` does through etcd, for a
    /// while). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shifted_zones: Vec<String>,
    /// Cost of each prompt block a worker would have to prefill. Default 1.0.
    #[serde(default = "default_one")]
    pub prefill_weight: f64,
    /// Cost of each request a worker is already serving. Default 1.0.
    #[serde(default = "default_one")]
    pub decode_weight: f64,
    /// Cost of leaving the gateway's zone, in prefill blocks. Default 2.0.
    #[serde(default = "default_remote_zone_cost")]
    pub remote_zone_cost: f64,
    /// Cost of the fullest cache among the candidates, in prefill blocks (an
    /// empty one costs 0, the rest in proportion), so that new prefixes
    /// spread over the pool's caches. Default 1.0.
    #[serde(default = "default_one")]
    pub cache_room_weight: f64,
    /// Hot-spot guard: when the busiest candidate serves this many more
    /// requests than the idlest... Default 16.
    #[serde(default = "default_balance_abs")]
    pub balance_abs_threshold: u32,
    /// ...and this many times as many, route by load alone. Default 2.0.
    #[serde(default = "default_balance_rel")]
    pub balance_rel_threshold: f64,
    /// How long the approximate index remembers a routed prompt. Default 120000.
    #[serde(
        rename = "approx_ttl_ms",
        with = "millis",
        default = "default_approx_ttl"
    )]
    pub approx_ttl: Duration,
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
    #[serde(
        rename = "load_stale_ms",
        with = "millis",
        default = "default_load_stale"
    )]
    pub load_stale: Duration,
    /// Time a worker has to answer a snapshot request. Default 2000.
    #[serde(
        rename = "snapshot_timeout_ms",
        with = "millis",
        default = "default_snapshot_timeout"
    )]
    pub snapshot_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra PEM CA certificates trusted for `https://` workers, besides the system's.
    #[serde(default)]
    pub ca_path: Option<PathBuf>,
    /// Time to open a connection to a worker. Default 2000.
    #[serde(
        rename = "connect_timeout_ms",
        with = "millis",
        default = "default_connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// Close pooled worker connections idle this long. Default 90000.
    #[serde(
        rename = "pool_idle_timeout_ms",
        with = "millis",
        default = "default_pool_idle_timeout"
    )]
    pub pool_idle_timeout: Duration,
}

/// A pool as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
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
    /// The engine its static workers run, unless one says otherwise:
    /// `llmgw` (this project's worker), `vllm`, `sglang`, `llamacpp` or
    /// `openai` (any OpenAI-compatible server). Default `llmgw`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub engine: EngineKind,
    /// The environment variable holding the API key its engines require
    /// (vLLM's `--api-key`, say), sent as `Authorization: Bearer` to them.
    /// Clients' own keys never reach a worker. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_key_env: Option<String>,
    #[serde(default)]
    pub workers: Vec<RawStaticWorker>,
}

/// A static worker as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticWorker {
    pub id: String,
    /// `http://` or `https://` base URL.
    pub url: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Free-form labels (version, colour, …) for policies.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Default: the pool's `engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    /// Where its Prometheus metrics are scraped for load (vLLM, SGLang,
    /// llama.cpp). Default `{url}/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// Where a vLLM or SGLang engine publishes its KV events over ZeroMQ,
    /// `tcp://host:port`; without it, routing guesses its cache (`approx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<String>,
    /// Its replay socket, `tcp://host:port`: missed events are asked there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_replay: Option<String>,
}

/// A pool, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub models: Vec<String>,
    pub block_size: usize,
    pub tokenizer: String,
    pub policy: Option<PolicyBinding>,
    /// `Bearer` and the key named by `upstream_key_env`.
    pub credential: Option<http::HeaderValue>,
    pub workers: Vec<StaticWorker>,
}

/// A static worker, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticWorker {
    pub id: WorkerId,
    /// The base URL, no path.
    pub url: Uri,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub engine: Engine,
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        RawConfig::from_file(path)?.check()
    }

    /// Parses and checks a config.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        RawConfig::from_toml(text)?.check()
    }

    /// This config with `doc`'s sections in place of its own, checked whole.
    pub fn with_doc(&self, doc: RoutingDoc) -> Result<Config, ConfigError> {
        RawConfig {
            zone: self.zone.clone(),
            listeners: self.listeners.clone(),
            health: self.health.clone(),
            breaker: self.breaker.clone(),
            retry: self.retry.clone(),
            routing: doc.routing,
            upstream: self.upstream.clone(),
            bus: self.bus.clone(),
            plugins: self.plugins.clone(),
            etcd: self.etcd.clone(),
            pools: doc.pools,
            logs: Default::default(),
            tracing: Default::default(),
            auth: self.auth.clone(),
            limits: self.limits.clone(),
            admission: self.admission.clone(),
            usage: self.usage.clone(),
        }
        .check()
    }
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RawConfig::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// The checked config, or every problem at once, each naming its key.
    pub fn check(self) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        self.check_sections(&mut errors);
        let pools = self.check_pools(&mut errors);
        let etcd = !self.etcd.endpoints.is_empty();
        let auth_mode = self
            .auth
            .resolve(self.listeners.api, etcd)
            .map_err(|e| errors.push(e));
        let Ok(auth_mode) = auth_mode else {
            return Err(ConfigError::Invalid(errors));
        };
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Config {
            zone: self.zone,
            listeners: self.listeners,
            health: self.health,
            breaker: self.breaker,
            retry: self.retry,
            routing: self.routing,
            upstream: self.upstream,
            bus: self.bus,
            plugins: self.plugins,
            etcd: self.etcd,
            pools,
            auth: self.auth,
            auth_mode,
            limits: self.limits,
            admission: self.admission,
            usage: self.usage,
        })
    }

    fn check_sections(&self, errors: &mut Vec<String>) {
        errors.extend(self.tracing.problem());
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        };
        let ms = |d: Duration| d.as_millis() as u64;
        positive("listeners.idle_timeout_ms", ms(self.listeners.idle_timeout));
        positive(
            "listeners.header_read_timeout_ms",
            ms(self.listeners.header_read_timeout),
        );
        positive(
            "listeners.max_connections",
            self.listeners.max_connections as u64,
        );
        positive(
            "listeners.max_body_bytes",
            self.listeners.max_body_bytes as u64,
        );
        positive(
            "listeners.max_concurrent_requests",
            self.listeners.max_concurrent_requests as u64,
        );
        positive("health.interval_ms", ms(self.health.interval));
        positive("health.timeout_ms", ms(self.health.timeout));
        positive("health.canary_timeout_ms", ms(self.health.canary_timeout));
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
        positive("breaker.base_ejection_ms", ms(self.breaker.base_ejection));
        positive("retry.max_attempts", self.retry.max_attempts.into());
        positive("retry.per_try_timeout_ms", ms(self.retry.per_try_timeout));
        positive("retry.stream_stall_ms", ms(self.retry.stream_stall));
        positive("retry.total_timeout_ms", ms(self.retry.total_timeout));
        positive(
            "routing.spill_in_flight",
            self.routing.spill_in_flight.into(),
        );
        positive(
            "upstream.connect_timeout_ms",
            ms(self.upstream.connect_timeout),
        );
        positive("routing.approx_ttl_ms", ms(self.routing.approx_ttl));
        positive(
            "routing.approx_max_entries",
            self.routing.approx_max_entries as u64,
        );
        positive(
            "routing.max_blocks_per_worker",
            self.routing.max_blocks_per_worker as u64,
        );
        positive("bus.load_stale_ms", ms(self.bus.load_stale));
        positive("bus.snapshot_timeout_ms", ms(self.bus.snapshot_timeout));
        positive("limits.exchange_ms", ms(self.limits.exchange));
        positive("limits.replicas", self.limits.replicas.into());
        positive(
            "admission.max_queue_wait_ms",
            ms(self.admission.max_queue_wait),
        );
        for (key, value) in [
            ("routing.prefill_weight", self.routing.prefill_weight),
            ("routing.decode_weight", self.routing.decode_weight),
            ("routing.remote_zone_cost", self.routing.remote_zone_cost),
            ("routing.cache_room_weight", self.routing.cache_room_weight),
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
        self.plugins.validate("plugins", errors);
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
        if self.breaker.max_ejection < self.breaker.base_ejection {
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
    }

    /// Each pool checked; problems go to `errors`.
    fn check_pools(&self, errors: &mut Vec<String>) -> Vec<PoolConfig> {
        let (mut pool_names, mut models, mut worker_ids) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        let mut pools = Vec::with_capacity(self.pools.len());
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
                policy.validate(&format!("{key}.policy"), errors);
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
            let mut workers = Vec::with_capacity(pool.workers.len());
            for (w, worker) in pool.workers.iter().enumerate() {
                let key = format!("{key}.workers[{w}]");
                if !protocol::bus::valid_token(&worker.id) {
                    errors.push(format!(
                        "{key}.id: must be non-empty letters, digits, '-' and '_'"
                    ));
                } else if !worker_ids.insert(&worker.id) {
                    errors.push(format!("{key}.id: duplicate worker id `{}`", worker.id));
                }
                let Ok(url) = worker_url(&worker.url)
                    .map_err(|reason| errors.push(format!("{key}.url: {reason}")))
                else {
                    continue;
                };
                match Engine::check(
                    &url,
                    worker.engine.unwrap_or(pool.engine),
                    worker.metrics_url.as_deref(),
                    worker.kv_events.as_deref(),
                    worker.kv_replay.as_deref(),
                ) {
                    Ok(engine) => workers.push(StaticWorker {
                        id: WorkerId::from(worker.id.as_str()),
                        url,
                        zone: worker.zone.clone(),
                        labels: worker.labels.clone(),
                        engine,
                    }),
                    Err((field, reason)) => errors.push(format!("{key}.{field}: {reason}")),
                }
            }
            let credential = pool.upstream_key_env.as_ref().and_then(|var| {
                let key = format!("{key}.upstream_key_env");
                let Ok(secret) = std::env::var(var) else {
                    errors.push(format!("{key}: the environment has no `{var}`"));
                    return None;
                };
                let mut value = http::HeaderValue::try_from(format!("Bearer {secret}"))
                    .map_err(|_| errors.push(format!("{key}: `{var}` is not a valid header value")))
                    .ok()?;
                value.set_sensitive(true);
                Some(value)
            });
            pools.push(PoolConfig {
                credential,
                name: pool.name.clone(),
                models: pool.models.clone(),
                block_size: pool.block_size,
                tokenizer: pool.tokenizer.clone(),
                policy: pool.policy.clone(),
                workers,
            });
        }
        pools
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The engine a registration at `url` says it runs.
pub(crate) fn registered_engine(r: &Registration, url: &Uri) -> Result<Engine, String> {
    let kind = match &r.engine_kind {
        None => EngineKind::Llmgw,
        Some(kind) => kind.parse().map_err(|e| format!("engine_kind: {e}"))?,
    };
    Engine::check(
        url,
        kind,
        r.metrics_url.as_deref(),
        r.kv_events.as_deref(),
        r.kv_replay.as_deref(),
    )
    .map_err(|(field, reason)| format!("{field}: {reason}"))
}

/// A worker's base URL, parsed: `http://` or `https://`, a host, no path.
pub(crate) fn worker_url(url: &str) -> Result<Uri, String> {
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
    Ok(uri)
}

/// A `Duration` written as whole milliseconds, under a key ending `_ms`.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            api: default_api(),
            admin: default_admin(),
            tls: None,
            idle_timeout: default_idle_timeout(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_body_bytes: default_max_body_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
            drain_grace: default_drain_grace(),
            worker_id_header: false,
        }
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
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
            logs: Default::default(),
            tracing: Default::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            admission: AdmissionConfig::default(),
            usage: UsageConfig::default(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: protocol::control::DEFAULT_PREFIX.to_string(),
            snapshot: None,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            canary_interval: Duration::ZERO,
            canary_timeout: default_canary_timeout(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            per_try_timeout: default_per_try_timeout(),
            stream_stall: default_stream_stall(),
            total_timeout: default_total_timeout(),
            max_migrations: default_two(),
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: default_strategy(),
            spill_in_flight: default_spill_in_flight(),
            shifted_zones: Vec::new(),
            prefill_weight: 1.0,
            decode_weight: 1.0,
            remote_zone_cost: default_remote_zone_cost(),
            cache_room_weight: 1.0,
            balance_abs_threshold: default_balance_abs(),
            balance_rel_threshold: default_balance_rel(),
            approx_ttl: default_approx_ttl(),
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
            load_stale: default_load_stale(),
            snapshot_timeout: default_snapshot_timeout(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            ca_path: None,
            connect_timeout: default_connect_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
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
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}
fn default_idle_timeout() -> Duration {
    Duration::from_millis(75_000)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_body_bytes() -> usize {
    4 << 20
}
fn default_max_concurrent_requests() -> usize {
    4096
}
fn default_drain_grace() -> Duration {
    Duration::from_millis(30_000)
}
fn default_probe_interval() -> Duration {
    Duration::from_millis(1000)
}
fn default_canary_timeout() -> Duration {
    Duration::from_millis(5000)
}
fn default_probe_timeout() -> Duration {
    Duration::from_millis(1000)
}
fn default_base_ejection() -> Duration {
    Duration::from_millis(1000)
}
fn default_max_ejection() -> Duration {
    Duration::from_millis(30_000)
}
fn default_per_try_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_stream_stall() -> Duration {
    Duration::from_millis(30_000)
}
fn default_total_timeout() -> Duration {
    Duration::from_millis(60_000)
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
fn default_approx_ttl() -> Duration {
    Duration::from_millis(120_000)
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
    protocol::bus::DEFAULT_SUBJECT_PREFIX.to_string()
}
fn default_load_stale() -> Duration {
    Duration::from_millis(3000)
}
fn default_snapshot_timeout() -> Duration {
    Duration::from_millis(2000)
}
fn default_block_size() -> usize {
    16
}
fn default_tokenizer() -> String {
    "builtin".to_string()
}
fn default_connect_timeout() -> Duration {
    Duration::from_millis(2000)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_millis(90_000)
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
    fn example_configs_are_valid() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for name in ["gateway.toml", "engines.toml", "fleet.toml"] {
            Config::from_file(&config.join(name)).unwrap();
        }
        for name in ["routing.toml", "routing-canary.toml"] {
            let text = std::fs::read_to_string(config.join(name)).unwrap();
            RoutingDoc::from_toml(&text).unwrap();
        }
    }

    #[test]
    fn kv_event_endpoints_are_checked() {
        let pool = |worker: &str| {
            format!("[[pools]]\nname = \"p\"\nmodels = [\"m\"]\n[[pools.workers]]\nid = \"a\"\nurl = \"http://h:1\"\n{worker}")
        };
        let ok = Config::from_toml(&pool(
            "engine = \"vllm\"\nkv_events = \"tcp://h:5557\"\nkv_replay = \"tcp://h:5558\"\n",
        ))
        .unwrap();
        let events = ok.pools[0].workers[0].engine.kv_events.clone().unwrap();
        assert_eq!(events.replay.as_deref(), Some("tcp://h:5558"));
        for (worker, message) in [
            (
                "engine = \"llamacpp\"\nkv_events = \"tcp://h:5557\"\n",
                "kv_events: engine `llamacpp` publishes no KV events",
            ),
            (
                "engine = \"vllm\"\nkv_replay = \"tcp://h:5558\"\n",
                "kv_replay: needs kv_events",
            ),
            (
                "engine = \"vllm\"\nkv_events = \"tcp://*:5557\"\n",
                "`tcp://*:5557` must be tcp://host:port",
            ),
            (
                "engine = \"sglang\"\nkv_events = \"http://h:5557\"\n",
                "must be tcp://host:port",
            ),
        ] {
            let err = Config::from_toml(&pool(worker)).unwrap_err().to_string();
            assert!(err.contains(message), "{worker}: {err}");
        }
    }

    #[test]
    fn engines_default_to_the_pools() {
        let c = Config::from_toml(
            r#"
            [[pools]]
            name = "p"
            models = ["m"]
            engine = "vllm"
            [[pools.workers]]
            id = "a"
            url = "http://h:1"
            [[pools.workers]]
            id = "b"
            url = "http://h:2"
            engine = "openai"
            [[pools.workers]]
            id = "c"
            url = "http://h:3"
            metrics_url = "http://h:9/prom"
            "#,
        )
        .unwrap();
        let w = &c.pools[0].workers;
        assert_eq!(
            (w[0].engine.kind, w[1].engine.kind),
            (EngineKind::Vllm, EngineKind::Openai)
        );
        let metrics = |i: usize| w[i].engine.metrics_url.as_ref().map(|u| u.to_string());
        assert_eq!(metrics(0).as_deref(), Some("http://h:1/metrics"));
        assert_eq!(metrics(1), None);
        assert_eq!(metrics(2).as_deref(), Some("http://h:9/prom"));
        let err = Config::from_toml(
            "[[pools]]\nname = \"p\"\nmodels = [\"m\"]\n[[pools.workers]]\nid = \"a\"\nurl = \"http://h:1\"\nmetrics_url = \"http://h:1/metrics\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pools[0].workers[0].metrics_url"), "{err}");
        assert!(
            Config::from_toml("[[pools]]\nname = \"p\"\nmodels = [\"m\"]\nengine = \"tgi\"\n")
                .is_err()
        );
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
