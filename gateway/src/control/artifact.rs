//! Which plugin bytes a pool's binding selects in etcd: the pinned version,
//! else the highest published, checked against the sha256 published with
//! them. Shared by gateways and `gatewayctl`, so both pick the same bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use protocol::control::{Key, Keys};

use crate::plugin::{highest, sha256_hex, PluginError, PolicyBinding};

/// A plugin version's bytes.
pub struct Artifact {
    pub version: String,
    pub bytes: Bytes,
}

/// The artifact `binding` selects among `kvs` (keys under the prefix →
/// value and revision); `None` when etcd holds no such version.
pub fn in_etcd(
    keys: &Keys,
    kvs: &BTreeMap<String, (Bytes, i64)>,
    binding: &PolicyBinding,
) -> Result<Option<Artifact>, PluginError> {
    let version = match &binding.version {
        Some(pinned) => Some(pinned.clone()),
        None => highest(
            kvs.keys()
                .filter_map(|key| match keys.parse(key) {
                    Some(Key::PluginWasm { name, version }) if name == binding.plugin => {
                        Some(version)
                    }
                    _ => None,
                })
                .collect(),
        ),
    };
    let Some(version) = version else {
        return Ok(None);
    };
    let Some((bytes, _)) = kvs.get(&keys.plugin_wasm(&binding.plugin, &version)) else {
        return Ok(None);
    };
    let published = kvs
        .get(&keys.plugin_sha256(&binding.plugin, &version))
        .map(|(sha, _)| String::from_utf8_lossy(sha).trim().to_ascii_lowercase());
    let actual = sha256_hex(bytes);
    match published {
        Some(sha) if sha == actual => Ok(Some(Artifact {
            version,
            bytes: bytes.clone(),
        })),
        Some(sha) => Err(PluginError::Checksum(format!(
            "{} {version} is published as {sha} but its bytes hash to {actual}",
            binding.plugin
        ))),
        None => Err(PluginError::Checksum(format!(
            "{} {version} has no sha256 key next to its bytes",
            binding.plugin
        ))),
    }
}

/// The error for a binding whose plugin is nowhere to be found.
pub fn missing(binding: &PolicyBinding) -> PluginError {
    PluginError::Missing(format!(
        "{} {} is not in etcd",
        binding.plugin,
        binding.version.as_deref().unwrap_or("(any version)")
    ))
}
