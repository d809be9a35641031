//! The `[auth]`, `[limits]`, `[admission]` and `[usage]` sections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who may use the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request presents a key: from `auth.keys_file`, else from etcd.
    Keys,
    /// Anyone who reaches the port; said explicitly for a non-loopback address.
    None,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Default: `keys` when `keys_file` is set; else `none` on a loopback
    /// address, and a refusal to start on any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// Keys and tenants in TOML, as `gatewayctl key` writes them; watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The mode in force, or why the gateway must not start.
    pub fn resolve(&self, api: SocketAddr, etcd: bool) -> Result<AuthMode, String> {
        match (self.mode, &self.keys_file) {
            (Some(AuthMode::None), Some(_)) => {
                Err("auth.keys_file: set, but auth.mode is \"none\"".to_string())
            }
            (Some(AuthMode::Keys), None) if !etcd => Err(
                "auth.mode: \"keys\" needs auth.keys_file, or etcd.endpoints to hold the keys"
                    .to_string(),
            ),
            (Some(mode), _) => Ok(mode),
            (None, Some(_)) => Ok(AuthMode::Keys),
            (None, None) if api.ip().is_loopback() => Ok(AuthMode::None),
            (None, None) => Err(format!(
                "auth: the API listens on {api}, beyond this host, and no API keys are configured; \
                 set auth.keys_file, auth.mode = \"keys\" (keys in etcd), or auth.mode = \"none\" \
                 to let anyone in"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// How often replicas tell each other what they admitted, over NATS.
    /// Bounds the overshoot of a shared budget. Default 100.
    #[serde(rename = "exchange_ms", with = "crate::config::millis")]
    pub exchange: Duration,
    /// Replicas sharing each budget when they cannot exchange (no NATS):
    /// each enforces this share of it. Default 1.
    pub replicas: u32,
    /// Completion tokens a request without `max_tokens` reserves against a
    /// token limit (trued up to what it used when it ends). Default 256.
    pub reserve_completion_tokens: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            exchange: Duration::from_millis(100),
            replicas: 1,
            reserve_completion_tokens: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests this gateway sends to one worker at a time; past it a
    /// request waits in its pool's queue. Default 0: no queue, a saturated
    /// pool's requests go to the workers' own queues.
    pub max_in_flight_per_worker: u32,
    /// Longest a request waits in a queue before a 503. Default 10000.
    #[serde(rename = "max_queue_wait_ms", with = "crate::config::millis")]
    pub max_queue_wait: Duration,
    /// Requests waiting per pool beyond which new ones get a 503. Default 1024.
    pub max_queue_length: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight_per_worker: 0,
            max_queue_wait: Duration::from_secs(10),
            max_queue_length: 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// A JSON line per finished request, appended here, for billing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_without_keys_is_refused_unless_said() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let none = AuthConfig::default();
        assert_eq!(none.resolve(local, false), Ok(AuthMode::None));
        assert!(none
            .resolve(public, false)
            .unwrap_err()
            .contains("auth.mode"));
        let open = AuthConfig {
            mode: Some(AuthMode::None),
            keys_file: None,
        };
        assert_eq!(open.resolve(public, false), Ok(AuthMode::None));
        let file = AuthConfig {
            mode: None,
            keys_file: Some("k.toml".into()),
        };
        assert_eq!(file.resolve(public, false), Ok(AuthMode::Keys));
        let etcd = AuthConfig {
            mode: Some(AuthMode::Keys),
            keys_file: None,
        };
        assert!(etcd.resolve(public, false).is_err());
        assert_eq!(etcd.resolve(public, true), Ok(AuthMode::Keys));
    }
}
