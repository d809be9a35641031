//! The control plane's keys in etcd, and what a worker registers there.
//!
//! Everything lives under one prefix (default `/llmgw`), so one etcd serves
//! several fleets and `etcdctl get --prefix` shows a fleet whole:
//!
//! - `{prefix}/workers/{pool}/{id}`: a worker's [`Registration`] (JSON), on its lease;
//! - `{prefix}/config`: the routing config (TOML: `[routing]` and `[[pools]]`
//!   only; retries, listeners and the rest stay in each gateway's own file);
//! - `{prefix}/plugins/{name}/{version}/wasm`: a policy component's bytes;
//! - `{prefix}/plugins/{name}/{version}/sha256`: their hex sha256, checked before loading;
//! - `{prefix}/cordons/{pool}/{id}`: a worker taken out of rotation (its value
//!   says who and when); it gets no new request while the key exists;
//! - `{prefix}/shifts/{zone}`: a zonal shift (its value says until when), on
//!   a lease of the shift's length: new requests avoid the zone while any
//!   worker elsewhere can take them;
//! - `{prefix}/gateways/{id}`: a gateway's [`GatewayReport`] (JSON), on its
//!   lease: the routing document it serves, and the last one it refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "/llmgw";

/// Lease TTL of a worker's registration when none is configured, in seconds.
pub const DEFAULT_LEASE_TTL_S: i64 = 10;

/// What a worker puts in etcd so gateways can route to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    pub pool: String,
    /// Base URL gateways reach it at.
    pub url: String,
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub model: String,
    pub block_size: usize,
    /// The engine and the backend it computes on, e.g. `sim/sim` or `llama/cuda`.
    pub engine: String,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The kind of server, for one that is not this project's worker:
    /// `vllm`, `sglang`, `llamacpp` or `openai` (registered for it by an
    /// operator's sidecar, say). Absent: `llmgw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_kind: Option<String>,
    /// Where its Prometheus metrics are, when not `{url}/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// Where a vLLM or SGLang server publishes KV events over ZeroMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<String>,
    /// That publisher's replay socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_replay: Option<String>,
}

/// What a gateway tells the fleet of its control plane, so `gatewayctl`
/// can show which routing document is in force and why a newer one is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayReport {
    pub id: String,
    /// The `mod_revision` of the routing document it serves; `None`: its
    /// own file's.
    pub config_revision: Option<i64>,
    /// A newer document it holds back for a reason that may pass.
    pub pending_config_revision: Option<i64>,
    /// The last document refused (its revision and why), until one applies.
    pub refused: Option<(i64, String)>,
    /// Registrations it does not route to, and why (`{key}: {reason}`: a
    /// static worker of its file has the id, another block size, …).
    #[serde(default)]
    pub ignored: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Worker { pool: String, id: String },
    Config,
    PluginWasm { name: String, version: String },
    PluginSha256 { name: String, version: String },
    Cordon { pool: String, id: String },
    Shift { zone: String },
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Every key of the fleet starts with this.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}/workers/", self.prefix)
    }

    pub fn worker(&self, pool: &str, id: &str) -> String {
        format!("{}/workers/{pool}/{id}", self.prefix)
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn plugins(&self) -> String {
        format!("{}/plugins/", self.prefix)
    }

    pub fn plugin_wasm(&self, name: &str, version: &str) -> String {
        format!("{}/plugins/{name}/{version}/wasm", self.prefix)
    }

    pub fn plugin_sha256(&self, name: &str, version: &str) -> String {
        format!("{}/plugins/{name}/{version}/sha256", self.prefix)
    }

    pub fn gateways(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    pub fn gateway(&self, id: &str) -> String {
        format!("{}/gateways/{id}", self.prefix)
    }

    /// API keys, each as JSON under its id (only the secret's hash).
    pub fn api_keys(&self) -> String {
        format!("{}/keys/", self.prefix)
    }

    pub fn api_key(&self, id: &str) -> String {
        format!("{}/keys/{id}", self.prefix)
    }

    /// Tenants' shared limits, each as JSON under its name.
    pub fn tenants(&self) -> String {
        format!("{}/tenants/", self.prefix)
    }

    pub fn tenant(&self, name: &str) -> String {
        format!("{}/tenants/{name}", self.prefix)
    }

    pub fn shifts(&self) -> String {
        format!("{}/shifts/", self.prefix)
    }

    pub fn shift(&self, zone: &str) -> String {
        format!("{}/shifts/{zone}", self.prefix)
    }

    pub fn cordons(&self) -> String {
        format!("{}/cordons/", self.prefix)
    }

    pub fn cordon(&self, pool: &str, id: &str) -> String {
        format!("{}/cordons/{pool}/{id}", self.prefix)
    }

    /// What `key` names; `None` for keys this layout does not use.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.root())?;
        let parts: Vec<&str> = rest.split('/').collect();
        let own = |s: &&str| !s.is_empty();
        match parts.as_slice() {
            ["config"] => Some(Key::Config),
            ["workers", pool, id] if own(pool) && own(id) => Some(Key::Worker {
                pool: pool.to_string(),
                id: id.to_string(),
            }),
            ["shifts", zone] if own(zone) => Some(Key::Shift {
                zone: zone.to_string(),
            }),
            ["cordons", pool, id] if own(pool) && own(id) => Some(Key::Cordon {
                pool: pool.to_string(),
                id: id.to_string(),
            }),
            ["plugins", name, version, file] if own(name) && own(version) => {
                let (name, version) = (name.to_string(), version.to_string());
                match *file {
                    "wasm" => Some(Key::PluginWasm { name, version }),
                    "sha256" => Some(Key::PluginSha256 { name, version }),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("/fleet/");
        assert_eq!(keys.worker("p", "w1"), "/fleet/workers/p/w1");
        assert_eq!(
            keys.parse(&keys.worker("p", "w1")),
            Some(Key::Worker {
                pool: "p".into(),
                id: "w1".into()
            })
        );
        assert_eq!(keys.parse(&keys.config()), Some(Key::Config));
        assert_eq!(
            keys.parse(&keys.plugin_sha256("canary", "0.2.0")),
            Some(Key::PluginSha256 {
                name: "canary".into(),
                version: "0.2.0".into()
            })
        );
        assert_eq!(
            keys.parse(&keys.cordon("p", "w1")),
            Some(Key::Cordon {
                pool: "p".into(),
                id: "w1".into()
            })
        );
        assert_eq!(keys.parse("/fleet/workers/p"), None);
        assert_eq!(keys.parse("/fleetx/config"), None);
        assert_eq!(keys.parse("/other/config"), None);
    }
}
