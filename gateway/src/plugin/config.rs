//! Plugin settings: the gateway-wide `[plugins]` section and a pool's policy binding.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The gateway-wide `[plugins]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Embedded mode: plugins are read from `{dir}/{plugin}/{version}.wasm`,
    /// and `{dir}/{plugin}/{pool}.json`, when present, overrides a pool's
    /// inline config. Default: none, so only the etcd source can load plugins.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often `dir` is checked for new versions and configs even when
    /// nothing was reported: a change the OS reports (inotify) is checked at
    /// once; one it does not (some network mounts), after at most this long.
    /// Default 50.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Deadline of one `route` call: the guest is interrupted once it has used
    /// this much CPU time past this much wall time (time the OS gives other
    /// threads is not held against it). Default 5.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Deadline of `init` (and instantiation) of one instance. Default 1000.
    #[serde(default = "default_init_timeout_ms")]
    pub init_timeout_ms: u64,
    /// Linear memory one instance may grow to. Default 16 MiB.
    #[serde(default = "default_memory_limit_bytes")]
    pub memory_limit_bytes: u64,
    /// Instances alive at once across every pool and loaded version: the size
    /// of the pooling allocator, which reserves address space for each up
    /// front. Default 256.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// What a request does when its policy fails (trap, timeout, out of
    /// memory, invalid decision). Default `fallback`.
    #[serde(default)]
    pub on_error: OnError,
    /// Request headers policies may read (e.g. `x-tenant`), matched without
    /// regard to case; no others reach a plugin. Default: none.
    #[serde(default)]
    pub headers: Vec<String>,
    /// A JSON-lines file of sampled routing decisions with their inputs
    /// (never prompt text), for `gatewayctl plugin replay`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<PathBuf>,
    /// The share of decisions logged there. Default 0.01.
    #[serde(default = "default_decision_log_sample")]
    pub decision_log_sample: f64,
    /// Limits of their own for some plugins, by name, in place of the ones
    /// above: a policy written in Python or JavaScript carries its
    /// interpreter and needs more memory and a longer `init` than one in
    /// Rust (`[plugins.limits.canary-py] memory_limit_bytes = 134217728`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, PluginLimits>,
}

/// One plugin's `[plugins.limits.NAME]`: each unset key keeps the gateway-wide value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    pub call_timeout_ms: Option<u64>,
    pub init_timeout_ms: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

/// What a request does when its policy fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Route with the built-in policy: availability over the plugin's intent.
    #[default]
    Fallback,
    /// Answer 503: for policies whose intent must hold (e.g. a blue-green
    /// cut-over that must never reach the old colour).
    FailClosed,
}

fn default_decision_log_sample() -> f64 {
    0.01
}
fn default_poll_interval_ms() -> u64 {
    50
}
fn default_call_timeout_ms() -> u64 {
    5
}
fn default_init_timeout_ms() -> u64 {
    1000
}
fn default_memory_limit_bytes() -> u64 {
    16 << 20
}
fn default_max_instances() -> u32 {
    256
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            poll_interval_ms: default_poll_interval_ms(),
            call_timeout_ms: default_call_timeout_ms(),
            init_timeout_ms: default_init_timeout_ms(),
            memory_limit_bytes: default_memory_limit_bytes(),
            max_instances: default_max_instances(),
            on_error: OnError::default(),
            headers: Vec::new(),
            decision_log: None,
            decision_log_sample: default_decision_log_sample(),
            limits: BTreeMap::new(),
        }
    }
}

/// A wasm page: memory grows in these, so a smaller limit could not even start.
const WASM_PAGE_BYTES: u64 = 64 << 10;

impl PluginsConfig {
    /// Pushes every problem onto `errors`, each naming its key under `prefix` (e.g. `plugins`).
    pub fn validate(&self, prefix: &str, errors: &mut Vec<String>) {
        for (key, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("call_timeout_ms", self.call_timeout_ms),
            ("init_timeout_ms", self.init_timeout_ms),
            ("max_instances", self.max_instances.into()),
        ] {
            if value == 0 {
                errors.push(format!("{prefix}.{key}: must be greater than 0"));
            }
        }
        for (i, name) in self.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(format!(
                    "{prefix}.headers[{i}]: `{name}` is not a header name"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.decision_log_sample) {
            errors.push(format!(
                "{prefix}.decision_log_sample: must be between 0 and 1, got {}",
                self.decision_log_sample
            ));
        }
        // Components address 32-bit memories: a limit above 4 GiB means none.
        let memory = |key: &str, bytes: u64, errors: &mut Vec<String>| {
            if !(WASM_PAGE_BYTES..=(4 << 30)).contains(&bytes) {
                errors.push(format!(
                    "{key}: must be between 65536 (one wasm page) and 4 GiB"
                ));
            }
        };
        memory(
            &format!("{prefix}.memory_limit_bytes"),
            self.memory_limit_bytes,
            errors,
        );
        for (plugin, limits) in &self.limits {
            let key = format!("{prefix}.limits.{plugin}");
            if let Some(bytes) = limits.memory_limit_bytes {
                memory(&format!("{key}.memory_limit_bytes"), bytes, errors);
            }
            for (name, value) in [
                ("call_timeout_ms", limits.call_timeout_ms),
                ("init_timeout_ms", limits.init_timeout_ms),
            ] {
                if value == Some(0) {
                    errors.push(format!("{key}.{name}: must be greater than 0"));
                }
            }
        }
    }
}

/// A pool's `policy = { plugin, version, config }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBinding {
    /// The plugin's name: its folder under `plugins.dir` (or its etcd key).
    pub plugin: String,
    /// A pinned version; default: the highest present, comparing dotted
    /// numeric parts (`1.10` after `1.9`), else lexically.
    #[serde(default)]
    pub version: Option<String>,
    /// The config handed to the plugin's `init`, as JSON (a TOML table is
    /// converted). Default: `{}`.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Another version of the plugin deciding too, for a sample of requests,
    /// off the request path: what it would do, never acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowBinding>,
}

/// A pool's `policy.shadow = { version, sample, config }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowBinding {
    /// The version tried in shadow.
    pub version: String,
    /// The share of requests it decides too, in (0, 1]. Default 0.1.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Its `init` config; default: the live version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

fn default_sample() -> f64 {
    0.1
}

impl PolicyBinding {
    /// The shadow version as a binding of its own, loaded like any.
    pub fn shadow_binding(&self) -> Option<PolicyBinding> {
        let shadow = self.shadow.as_ref()?;
        Some(PolicyBinding {
            plugin: self.plugin.clone(),
            version: Some(shadow.version.clone()),
            config: shadow.config.clone().or_else(|| self.config.clone()),
            shadow: None,
        })
    }

    /// The config text `init` receives.
    pub fn config_json(&self) -> String {
        match &self.config {
            Some(value) => value.to_string(),
            None => "{}".to_string(),
        }
    }

    /// Pushes every problem onto `errors`, each naming its key under `prefix`
    /// (e.g. `pools.chat.policy`).
    pub fn validate(&self, prefix: &str, errors: &mut Vec<String>) {
        // Both become path components under `plugins.dir`.
        if !is_path_component(&self.plugin) {
            errors.push(format!(
                "{prefix}.plugin: must be a non-empty name without `/`, `\\` or a leading `.`"
            ));
        }
        if let Some(problem) = self.version.as_deref().and_then(super::version_problem) {
            errors.push(format!("{prefix}.version: {problem}"));
        }
        if let Some(shadow) = &self.shadow {
            if let Some(problem) = super::version_problem(&shadow.version) {
                errors.push(format!("{prefix}.shadow.version: {problem}"));
            }
            if !(shadow.sample > 0.0 && shadow.sample <= 1.0) {
                errors.push(format!(
                    "{prefix}.shadow.sample: must be above 0 and at most 1, got {}",
                    shadow.sample
                ));
            }
        }
    }
}

fn is_path_component(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_fields_are_refused() {
        let config: PluginsConfig = toml::from_str("").unwrap();
        assert_eq!(config, PluginsConfig::default());
        let mut errors = Vec::new();
        config.validate("plugins", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(toml::from_str::<PluginsConfig>("colour = 1").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let config = PluginsConfig {
            call_timeout_ms: 0,
            max_instances: 0,
            memory_limit_bytes: 10,
            ..PluginsConfig::default()
        };
        let mut errors = Vec::new();
        config.validate("plugins", &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("plugins.call_timeout_ms"));
    }

    #[test]
    fn binding_config_from_toml_becomes_json() {
        let binding: PolicyBinding =
            toml::from_str("plugin = \"canary\"\nconfig = { stable = \"v1\", canary_percent = 5 }")
                .unwrap();
        assert_eq!(
            binding.config_json(),
            r#"{"canary_percent":5,"stable":"v1"}"#
        );
        let bare: PolicyBinding = toml::from_str("plugin = \"failover\"").unwrap();
        assert_eq!(bare.config_json(), "{}");
    }

    #[test]
    fn a_shadow_is_a_binding_of_its_own() {
        let binding: PolicyBinding = toml::from_str(
            "plugin = \"canary\"\nversion = \"1.0.0\"\nconfig = { a = 1 }\nshadow = { version = \"1.1.0\" }",
        )
        .unwrap();
        let shadow = binding.shadow_binding().unwrap();
        assert_eq!(shadow.version.as_deref(), Some("1.1.0"));
        assert_eq!(shadow.config_json(), r#"{"a":1}"#);
        assert_eq!(binding.shadow.as_ref().unwrap().sample, 0.1);
        let mut errors = Vec::new();
        let bad: PolicyBinding =
            toml::from_str("plugin = \"canary\"\nshadow = { version = \"x\", sample = 0 }")
                .unwrap();
        bad.validate("pools[0].policy", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn binding_names_stay_inside_the_plugin_dir() {
        for (plugin, version) in [("../etc", None), ("ok", Some("1/2")), ("", None)] {
            let binding = PolicyBinding {
                plugin: plugin.to_string(),
                version: version.map(str::to_string),
                config: None,
                shadow: None,
            };
            let mut errors = Vec::new();
            binding.validate("pools.p.policy", &mut errors);
            assert_eq!(errors.len(), 1, "{plugin:?} {version:?}");
        }
    }
}
