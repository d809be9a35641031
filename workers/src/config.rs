//! The worker's configuration: a TOML file (or the same struct built in code),
//! checked as a whole before any port is bound.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything a worker needs to start. Missing fields take the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker's id within its pool, reported by `/health`. Default: `"worker"`.
    pub id: String,
    /// Address to serve HTTP on; port 0 picks a free port. Default: `127.0.0.1:8001`.
    pub listen: SocketAddr,
    /// The model name clients must ask for. Default: `"sim-llama"`.
    pub model: String,
    /// The failure domain this worker runs in. Default: `"default"`.
    pub zone: String,
    /// The pool this worker serves in, naming its bus subjects. Default: `"default"`.
    pub pool: String,
    /// Free-form labels (version, colour, …) registered for routing policies. Default: none.
    pub labels: BTreeMap<String, String>,
    /// The URL gateways reach this worker at, registered in etcd. Default:
    /// `http://` and the bound address (required when listening on 0.0.0.0).
    pub advertise_url: Option<String>,
    /// How long a drain waits for in-flight requests before cutting them off. Default: 30000.
    pub drain_grace_ms: u64,
    /// Largest request body accepted; bigger ones get 413. Default: 4 MiB.
    pub max_body_bytes: usize,
    pub engine: EngineConfig,
    pub bus: BusConfig,
    pub etcd: EtcdConfig,
    /// How the binary logs (`format`: `text` or `json`).
    pub logs: protocol::logs::LogsConfig,
    /// Where spans are exported (OTLP), if anywhere.
    pub tracing: protocol::traces::TracingConfig,
}

/// Where this worker registers, so gateways discover it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd endpoints, e.g. `["http://127.0.0.1:2379"]`. Default: none, so
    /// the worker does not register (gateways list it in their config).
    pub endpoints: Vec<String>,
    /// Key prefix of the fleet. Default: `"/llmgw"`.
    pub prefix: String,
    /// Seconds the registration outlives the worker's last keep-alive. Default: 10.
    pub lease_ttl_s: i64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: protocol::control::DEFAULT_PREFIX.to_string(),
            lease_ttl_s: protocol::control::DEFAULT_LEASE_TTL_S,
        }
    }
}

/// Where this worker publishes KV events and load for KV-aware gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// A NATS server, e.g. `nats://127.0.0.1:4222`. Default: none, so nothing is
    /// published (an in-process bus can still be handed to `start_on_bus`).
    pub nats_url: Option<String>,
    /// First token of every subject. Default: `"llmgw"`.
    pub subject_prefix: String,
    /// Load is published at most this often while it changes. Default: 50.
    pub load_debounce_ms: u64,
    /// Load is published at least this often, changed or not. Default: 1000.
    pub load_heartbeat_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            nats_url: None,
            subject_prefix: protocol::bus::DEFAULT_SUBJECT_PREFIX.to_string(),
            load_debounce_ms: 50,
            load_heartbeat_ms: 1000,
        }
    }
}

/// The inference engine: batching limits, KV cache geometry, and the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Which engine computes tokens. Default: `sim`.
    pub kind: EngineKind,
    /// Where the `llama` engine computes: `cpu`, or `cuda` (device 0; pick
    /// another with `CUDA_VISIBLE_DEVICES`) in a worker built with the `cuda`
    /// feature. Default: `cpu`.
    pub backend: Backend,
    /// Tokens per KV cache block (and per hashed prefix block). Default: 16.
    pub block_size: usize,
    /// KV cache capacity in blocks. Default: 8192.
    pub num_blocks: usize,
    /// Most sequences decoding at once. Default: 64.
    pub max_running: usize,
    /// Prompt tokens computed per engine step; longer prompts prefill in chunks. Default: 2048.
    pub max_prefill_tokens_per_step: usize,
    /// Longest sequence, prompt plus completion, in tokens. Default: 4096.
    pub max_model_len: usize,
    /// Completion length when a request sets none (capped to fit `max_model_len`). Default: 256.
    pub default_max_tokens: usize,
    /// A `tokenizer.json` to use. Default: none, meaning the built-in tokenizer
    /// (`sim`) or the model file's own (`llama`, which allows no other).
    pub tokenizer_path: Option<PathBuf>,
    /// The `llama` engine's model: a GGUF file (`scripts/fetch-model.sh` fetches
    /// SmolLM2-135M-Instruct) or a Hugging Face directory (`config.json`,
    /// `*.safetensors`, `tokenizer.json`, `tokenizer_config.json`). Its KV
    /// memory is `num_blocks * block_size` tokens of `layers * 2 * kv_heads *
    /// head_dim` f32s (46 KB per token for SmolLM2), committed as blocks are
    /// first used. Default: none; required by `llama`.
    pub model_path: Option<PathBuf>,
    /// Sampling for requests that leave it out, where the model does not say
    /// (see [`DefaultSampling`]). Default: none, so OpenAI's (temperature 1,
    /// top_p 1, no top_k).
    pub default_sampling: DefaultSampling,
    pub sim: SimConfig,
}

/// Sampling values a request may leave out. Each comes, in order, from the
/// request, the model (`generation_config.json` of a Hugging Face directory,
/// `general.sampling.*` of a GGUF file), this table, and OpenAI's defaults;
/// with `over_model`, this table comes before the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// These values win over the model's recommendation (as vLLM's
    /// `--override-generation-config`). Default: false.
    pub over_model: bool,
}

impl DefaultSampling {
    /// Each value of `self`, else `fallback`'s.
    pub fn or(self, fallback: DefaultSampling) -> DefaultSampling {
        DefaultSampling {
            temperature: self.temperature.or(fallback.temperature),
            top_p: self.top_p.or(fallback.top_p),
            top_k: self.top_k.or(fallback.top_k),
            over_model: self.over_model,
        }
    }

    /// What is out of OpenAI's ranges, each problem prefixed with `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(t) = self.temperature.filter(|t| !temperature_ok(*t)) {
            problems.push(format!("{at}.temperature: {t} is not between 0 and 2"));
        }
        if let Some(p) = self.top_p.filter(|p| !top_p_ok(*p)) {
            problems.push(format!("{at}.top_p: {p} is not in (0, 1]"));
        }
        problems
    }

    /// Without the values out of OpenAI's ranges.
    pub fn in_range(self) -> DefaultSampling {
        DefaultSampling {
            temperature: self.temperature.filter(|t| temperature_ok(*t)),
            top_p: self.top_p.filter(|p| top_p_ok(*p)),
            top_k: self.top_k,
            over_model: self.over_model,
        }
    }
}

fn temperature_ok(t: f32) -> bool {
    (0.0..=2.0).contains(&t)
}

fn top_p_ok(p: f32) -> bool {
    p > 0.0 && p <= 1.0
}

/// The engines a worker can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Real scheduling and KV cache, simulated compute: sleeps per a timing model.
    #[default]
    Sim,
    /// A Llama-family model from `model_path`, computed on the CPU.
    Llama,
}

/// The hardware a `llama` engine computes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Cpu,
    Cuda,
}

impl Backend {
    /// The name `/health` and the registry report.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// The sim engine's timing model: one step sleeps
/// `prefill_us_per_token * prefill tokens + decode_step_us + decode_us_per_seq * decoding sequences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Cost of each prompt token prefilled. Default: 50.
    pub prefill_us_per_token: u64,
    /// Fixed cost of every step. Default: 8000.
    pub decode_step_us: u64,
    /// Cost of each sequence decoded in a step. Default: 150.
    pub decode_us_per_seq: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: "worker".to_string(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8001)),
            model: "sim-llama".to_string(),
            zone: "default".to_string(),
            pool: "default".to_string(),
            drain_grace_ms: 30_000,
            max_body_bytes: 4 * 1024 * 1024,
            engine: EngineConfig::default(),
            bus: BusConfig::default(),
            labels: BTreeMap::new(),
            advertise_url: None,
            etcd: EtcdConfig::default(),
            logs: protocol::logs::LogsConfig::default(),
            tracing: protocol::traces::TracingConfig::default(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Sim,
            backend: Backend::Cpu,
            block_size: 16,
            num_blocks: 8192,
            max_running: 64,
            max_prefill_tokens_per_step: 2048,
            max_model_len: 4096,
            default_max_tokens: 256,
            tokenizer_path: None,
            model_path: None,
            default_sampling: DefaultSampling::default(),
            sim: SimConfig::default(),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefill_us_per_token: 50,
            decode_step_us: 8000,
            decode_us_per_seq: 150,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
}

impl WorkerConfig {
    /// A sim worker with default engine settings, for the embedded demo and tests.
    pub fn sim(id: &str, listen: SocketAddr, model: &str, zone: &str) -> Self {
        WorkerConfig {
            id: id.to_string(),
            listen,
            model: model.to_string(),
            zone: zone.to_string(),
            ..WorkerConfig::default()
        }
    }

    /// Reads a TOML file; the result still needs [`WorkerConfig::validate`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        WorkerConfig::parse(&text, path)
    }

    /// Parses TOML read from `path` (named in errors); the result still
    /// needs [`WorkerConfig::validate`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Checks every field, reporting all problems at once, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_string());
            }
        };
        check(!self.id.trim().is_empty(), "id: must not be empty");
        if let Some(problem) = self.tracing.problem() {
            check(false, &problem);
        }
        // Both name bus subjects, where dots and wildcards have meaning.
        check(
            self.id.trim().is_empty() || protocol::bus::valid_token(&self.id),
            "id: only letters, digits, '-' and '_' are allowed",
        );
        check(
            protocol::bus::valid_token(&self.pool),
            "pool: must be non-empty letters, digits, '-' and '_'",
        );
        check(
            protocol::bus::valid_token(&self.bus.subject_prefix),
            "bus.subject_prefix: must be non-empty letters, digits, '-' and '_'",
        );
        check(
            self.bus.load_heartbeat_ms > 0,
            "bus.load_heartbeat_ms: must be > 0",
        );
        check(!self.model.trim().is_empty(), "model: must not be empty");
        check(!self.zone.trim().is_empty(), "zone: must not be empty");
        check(self.max_body_bytes > 0, "max_body_bytes: must be > 0");
        check(
            self.etcd.lease_ttl_s >= 2,
            "etcd.lease_ttl_s: must be at least 2",
        );
        check(
            self.etcd.prefix.starts_with('/'),
            "etcd.prefix: must start with '/'",
        );
        check(
            self.etcd.endpoints.is_empty()
                || self.advertise_url.is_some()
                || !self.listen.ip().is_unspecified(),
            "advertise_url: required to register in etcd when listening on an unspecified address",
        );
        let e = &self.engine;
        check(e.block_size > 0, "engine.block_size: must be > 0");
        check(e.num_blocks > 0, "engine.num_blocks: must be > 0");
        // Block ids are 32-bit.
        check(
            u32::try_from(e.num_blocks).is_ok(),
            "engine.num_blocks: must be < 2^32",
        );
        check(e.max_running > 0, "engine.max_running: must be > 0");
        check(
            e.max_prefill_tokens_per_step > 0,
            "engine.max_prefill_tokens_per_step: must be > 0",
        );
        // One prompt token and one completion token at least.
        check(e.max_model_len >= 2, "engine.max_model_len: must be >= 2");
        check(
            e.default_max_tokens > 0,
            "engine.default_max_tokens: must be > 0",
        );
        for problem in e.default_sampling.problems("engine.default_sampling") {
            check(false, &problem);
        }
        // A sequence that can never fit would wait forever; refuse the config instead.
        if e.block_size > 0 && e.num_blocks.saturating_mul(e.block_size) < e.max_model_len {
            problems.push(format!(
                "engine.num_blocks: {} blocks of {} tokens cannot hold one sequence of \
                 engine.max_model_len = {} tokens",
                e.num_blocks, e.block_size, e.max_model_len
            ));
        }
        match (e.kind, &e.model_path) {
            (EngineKind::Llama, None) => {
                problems.push("engine.model_path: the llama engine needs a model file".into())
            }
            (EngineKind::Llama, Some(path)) if !path.is_file() && !path.is_dir() => {
                problems.push(format!(
                    "engine.model_path: {} is neither a GGUF file nor a model directory \
                     (scripts/fetch-model.sh fetches one)",
                    path.display()
                ))
            }
            (EngineKind::Sim, Some(_)) => {
                problems.push("engine.model_path: only the llama engine loads a model".into())
            }
            _ => {}
        }
        if e.backend == Backend::Cuda && e.kind != EngineKind::Llama {
            problems.push("engine.backend: only the llama engine runs on cuda".into());
        }
        if e.backend == Backend::Cuda && !cfg!(feature = "cuda") {
            problems
                .push("engine.backend: this worker was built without the `cuda` feature".into());
        }
        if e.kind == EngineKind::Llama && e.tokenizer_path.is_some() {
            problems.push(
                "engine.tokenizer_path: the llama engine uses its model file's tokenizer".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        WorkerConfig::default().validate().unwrap();
        let parsed: WorkerConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, WorkerConfig::default());
    }

    #[test]
    fn parses_nested_tables() {
        let c: WorkerConfig = toml::from_str(
            r#"
            id = "w1"
            listen = "0.0.0.0:9000"
            [engine]
            kind = "sim"
            block_size = 32
            [engine.sim]
            decode_step_us = 0
            "#,
        )
        .unwrap();
        assert_eq!(c.id, "w1");
        assert_eq!(c.engine.block_size, 32);
        assert_eq!(c.engine.sim.decode_step_us, 0);
        assert_eq!(c.engine.sim.prefill_us_per_token, 50);
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/worker.toml");
        WorkerConfig::load(&path).unwrap().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<WorkerConfig>("colour = \"blue\"").is_err());
        assert!(toml::from_str::<WorkerConfig>("[engine]\nblocks = 3").is_err());
        assert!(toml::from_str::<WorkerConfig>("[engine]\nkind = \"cuda\"").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut c = WorkerConfig::sim("", "127.0.0.1:0".parse().unwrap(), "m", "z");
        c.engine.block_size = 0;
        c.engine.max_running = 0;
        let ConfigError::Invalid { problems } = c.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(
            problems,
            [
                "id: must not be empty",
                "engine.block_size: must be > 0",
                "engine.max_running: must be > 0"
            ]
        );
    }

    #[test]
    fn llama_needs_a_model_file() {
        let mut c = WorkerConfig::default();
        c.engine.kind = EngineKind::Llama;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("engine.model_path: the llama engine needs"),
            "{err}"
        );
        c.engine.model_path = Some("/nonexistent/model.gguf".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("is neither a GGUF file"), "{err}");
        let parsed: WorkerConfig =
            toml::from_str("[engine]\nkind = \"llama\"\nmodel_path = \"m.gguf\"").unwrap();
        assert_eq!(parsed.engine.kind, EngineKind::Llama);
    }

    #[test]
    fn cuda_needs_the_llama_engine_and_the_feature() {
        let mut c = WorkerConfig::default();
        c.engine.backend = Backend::Cuda;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("only the llama engine runs on cuda"), "{err}");
        assert_eq!(
            err.contains("without the `cuda` feature"),
            !cfg!(feature = "cuda")
        );
        let parsed: WorkerConfig = toml::from_str("[engine]\nbackend = \"cuda\"").unwrap();
        assert_eq!(parsed.engine.backend, Backend::Cuda);
        assert!(toml::from_str::<WorkerConfig>("[engine]\nbackend = \"tpu\"").is_err());
    }

    #[test]
    fn cache_must_hold_one_sequence() {
        let mut c = WorkerConfig::default();
        c.engine.num_blocks = 2;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("engine.num_blocks"), "{err}");
    }
}
