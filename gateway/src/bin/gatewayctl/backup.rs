//! `gatewayctl backup FILE` and `gatewayctl restore FILE`: what a fleet
//! cannot rebuild by itself (the routing document, and every plugin version
//! with its sha256), out of etcd and into an empty one, say another
//! region's. Registrations and leases are left out: workers register again
//! wherever they are pointed. A restore goes through the checks of any
//! write (each plugin compiled and checked, the document checked against
//! the plugins it binds).

use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine as _;
use etcd_client::Client;
use gateway::config::RoutingDoc;
use gateway::plugin::sha256_hex;
use protocol::control::{Key, Keys};
use serde::{Deserialize, Serialize};

use super::{current_doc, get_prefix, put_doc, put_plugin_bytes};

/// The file's format, checked on restore.
const FORMAT: &str = "llmgw-backup/1";

#[derive(Serialize, Deserialize)]
struct Backup {
    format: String,
    /// The key prefix it was taken under, and etcd's revision then.
    prefix: String,
    revision: i64,
    /// Milliseconds since the Unix epoch.
    taken_at_ms: u64,
    /// The routing document as written, comments and all.
    config: Option<String>,
    plugins: Vec<Plugin>,
}

#[derive(Serialize, Deserialize)]
struct Plugin {
    name: String,
    version: String,
    sha256: String,
    /// The component's bytes, base64.
    wasm: String,
}

pub async fn backup(
    client: &mut Client,
    keys: &Keys,
    prefix: &str,
    file: &Path,
) -> anyhow::Result<()> {
    let config = client.get(keys.config(), None).await?;
    let revision = config.header().map_or(0, |h| h.revision());
    let text = config
        .kvs()
        .first()
        .map(|kv| String::from_utf8(kv.value().to_vec()))
        .transpose()
        .context("the routing document in etcd is not UTF-8")?;
    let kvs = get_prefix(client, &keys.plugins()).await?;
    let mut plugins = Vec::new();
    for (key, (bytes, _)) in &kvs {
        let Some(Key::PluginWasm { name, version }) = keys.parse(key) else {
            continue;
        };
        let sha256 = sha256_hex(bytes);
        let published = kvs
            .get(&keys.plugin_sha256(&name, &version))
            .map(|(sha, _)| String::from_utf8_lossy(sha).trim().to_string());
        if published.as_deref() != Some(sha256.as_str()) {
            bail!("plugin {name} {version} in etcd does not match its sha256 key; fix it before backing up");
        }
        plugins.push(Plugin {
            name,
            version,
            sha256,
            wasm: base64::engine::general_purpose::STANDARD.encode(bytes),
        });
    }
    let backup = Backup {
        format: FORMAT.to_string(),
        prefix: prefix.to_string(),
        revision,
        taken_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        config: text,
        plugins,
    };
    let written = serde_json::to_vec_pretty(&backup)?;
    std::fs::write(file, &written).with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "backed up etcd revision {revision}: {} plugin version(s), {} routing document, {} bytes to {}",
        backup.plugins.len(),
        if backup.config.is_some() { "the" } else { "no" },
        written.len(),
        file.display()
    );
    Ok(())
}

/// Restores `file` into etcd, which must hold no routing document and no
/// plugin under this prefix (`force`: whatever it holds is kept unless the
/// backup replaces it).
pub async fn restore(
    client: &mut Client,
    keys: &Keys,
    file: &Path,
    force: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let backup: Backup = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a gatewayctl backup", file.display()))?;
    if backup.format != FORMAT {
        bail!(
            "{} is a backup of format {:?}; this gatewayctl reads {FORMAT:?}",
            file.display(),
            backup.format
        );
    }
    let current = current_doc(client, keys).await?;
    let has_plugins = !get_prefix(client, &keys.plugins()).await?.is_empty();
    if (current.is_some() || has_plugins) && !force {
        bail!("etcd already holds a routing document or plugins under this prefix; restore into an empty one (or pass --force)");
    }
    // Plugins first: the document binds them, and is checked against them.
    for plugin in &backup.plugins {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&plugin.wasm)
            .with_context(|| {
                format!(
                    "plugin {} {}: its bytes are not base64",
                    plugin.name, plugin.version
                )
            })?;
        if sha256_hex(&bytes) != plugin.sha256 {
            bail!(
                "plugin {} {} in the backup does not match its sha256; nothing more restored",
                plugin.name,
                plugin.version
            );
        }
        let origin = format!(
            "plugin {} {} of {}",
            plugin.name,
            plugin.version,
            file.display()
        );
        put_plugin_bytes(
            client,
            keys,
            &plugin.name,
            &plugin.version,
            bytes,
            &origin,
            force,
        )
        .await?;
    }
    if let Some(text) = backup.config {
        let doc = RoutingDoc::from_toml(&text).context("the backup's routing document")?;
        let current = current_doc(client, keys).await?;
        put_doc(client, keys, current, &doc, text, force).await?;
    }
    println!(
        "restored the backup of revision {} (prefix {}) from {}",
        backup.revision,
        backup.prefix,
        file.display()
    );
    Ok(())
}
