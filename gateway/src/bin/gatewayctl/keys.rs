//! `gatewayctl key`, `tenant` and `usage`: API keys and tenants' limits, in
//! a keys file (`--file`, what `auth.keys_file` names) or in etcd, and a
//! summary of a usage log. A secret is printed once, when made; only its
//! hash is stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use etcd_client::{Client, GetOptions};
use gateway::tenancy::keys::{unix_now, KeyRecord, KeysFile, Priority, TenantRecord};
use gateway::tenancy::usage::{Record, Totals};
use protocol::control::Keys;
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Makes a key and prints its secret, once.
    Create {
        #[arg(long)]
        tenant: String,
        /// Models it may use, comma-separated; default every model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens (prompt and completion) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// high, normal or low: who goes first when a pool is saturated.
        #[arg(long, default_value = "normal")]
        priority: Priority,
        /// When it stops working: a duration from now (30d, 12h) or an
        /// instant (2027-01-31T00:00:00Z).
        #[arg(long, value_parser = expiry)]
        expires: Option<u64>,
        /// May read the admin listener and see which worker served an answer.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Lists keys (never their secrets) and tenants' limits.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Deletes key ID: it stops working on every gateway.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Gives key ID a new secret, printed once; the old one stops working.
    Rotate {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum TenantCommand {
    /// Sets the limits every key of tenant NAME shares; none given removes them.
    Set {
        name: String,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The keys file a gateway's `auth.keys_file` names, instead of etcd.
    #[arg(long)]
    file: Option<PathBuf>,
}

impl KeyCommand {
    /// The keys file it works on; `None`: etcd.
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            KeyCommand::Create { store, .. }
            | KeyCommand::List { store }
            | KeyCommand::Revoke { store, .. }
            | KeyCommand::Rotate { store, .. } => store.file.clone(),
        }
    }
}

impl TenantCommand {
    pub fn file(&self) -> Option<PathBuf> {
        let TenantCommand::Set { store, .. } = self;
        store.file.clone()
    }
}

/// Where keys live: a file, or etcd.
pub enum Store<'a> {
    File(&'a Path),
    Etcd(&'a mut Client, &'a Keys),
}

impl Store<'_> {
    async fn load(&mut self) -> anyhow::Result<KeysFile> {
        match self {
            Store::File(path) => KeysFile::read(path).map_err(anyhow::Error::msg),
            Store::Etcd(client, keys) => {
                let mut file = KeysFile::default();
                let prefix = GetOptions::new().with_prefix();
                for kv in client
                    .get(keys.api_keys(), Some(prefix.clone()))
                    .await?
                    .kvs()
                {
                    let record: KeyRecord =
                        serde_json::from_slice(kv.value()).with_context(|| {
                            format!("{} does not parse", kv.key_str().unwrap_or("?"))
                        })?;
                    file.keys.push(record);
                }
                for kv in client.get(keys.tenants(), Some(prefix)).await?.kvs() {
                    let name = kv
                        .key_str()?
                        .trim_start_matches(&keys.tenants())
                        .to_string();
                    file.tenants
                        .insert(name, serde_json::from_slice(kv.value())?);
                }
                Ok(file)
            }
        }
    }

    /// Writes `key`, or deletes key `id` when `key` is `None`.
    async fn put_key(&mut self, id: &str, key: Option<&KeyRecord>) -> anyhow::Result<()> {
        match self {
            Store::File(path) => {
                let mut file = KeysFile::read(path).map_err(anyhow::Error::msg)?;
                file.keys.retain(|k| k.id != id);
                file.keys.extend(key.cloned());
                write(path, &file)
            }
            Store::Etcd(client, keys) => {
                match key {
                    Some(key) => {
                        client
                            .put(keys.api_key(id), serde_json::to_vec(key)?, None)
                            .await?;
                    }
                    None => {
                        client.delete(keys.api_key(id), None).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn put_tenant(
        &mut self,
        name: &str,
        limits: Option<&TenantRecord>,
    ) -> anyhow::Result<()> {
        match self {
            Store::File(path) => {
                let mut file = KeysFile::read(path).map_err(anyhow::Error::msg)?;
                file.tenants.remove(name);
                if let Some(limits) = limits {
                    file.tenants.insert(name.to_string(), limits.clone());
                }
                write(path, &file)
            }
            Store::Etcd(client, keys) => {
                match limits {
                    Some(limits) => {
                        client
                            .put(keys.tenant(name), serde_json::to_vec(limits)?, None)
                            .await?;
                    }
                    None => {
                        client.delete(keys.tenant(name), None).await?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn write(path: &Path, file: &KeysFile) -> anyhow::Result<()> {
    file.write(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub async fn key(mut store: Store<'_>, command: KeyCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            tenant,
            models,
            rpm,
            tpm,
            priority,
            expires,
            admin,
            ..
        } => {
            let (mut record, secret) = KeyRecord::generate(&tenant);
            record.models = models;
            (record.rpm, record.tpm, record.priority) = (rpm, tpm, priority);
            (record.expires_at, record.admin) = (expires, admin);
            record.check().map_err(anyhow::Error::msg)?;
            store.put_key(&record.id.clone(), Some(&record)).await?;
            if as_json {
                println!("{}", json!({ "id": record.id, "secret": secret }));
            } else {
                println!(
                    "key {} for tenant {tenant}\nsecret (shown once): {secret}",
                    record.id
                );
            }
            Ok(())
        }
        KeyCommand::List { .. } => {
            let file = store.load().await?;
            if as_json {
                let keys: Vec<_> = file
                    .keys
                    .iter()
                    .map(|k| {
                        json!({
                            "id": k.id, "tenant": k.tenant, "models": k.models, "rpm": k.rpm,
                            "tpm": k.tpm, "priority": k.priority, "expires_at": k.expires_at,
                            "admin": k.admin, "created_at": k.created_at,
                        })
                    })
                    .collect();
                println!("{}", json!({ "keys": keys, "tenants": file.tenants }));
                return Ok(());
            }
            println!(
                "{:<18} {:<14} {:>8} {:>10} {:<8} {:<20} models",
                "key", "tenant", "rpm", "tpm", "priority", "expires"
            );
            for k in &file.keys {
                let limit = |l: Option<u64>| l.map_or("-".to_string(), |l| l.to_string());
                let expires = k.expires_at.map_or("never".to_string(), |at| {
                    let when =
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at));
                    if at <= unix_now() {
                        format!("{when} (expired)")
                    } else {
                        when.to_string()
                    }
                });
                let models = if k.models.is_empty() {
                    "all".to_string()
                } else {
                    k.models.join(",")
                };
                let admin = if k.admin { " admin" } else { "" };
                println!(
                    "{:<18} {:<14} {:>8} {:>10} {:<8} {:<20} {models}{admin}",
                    k.id,
                    k.tenant,
                    limit(k.rpm),
                    limit(k.tpm),
                    k.priority.as_str(),
                    expires
                );
            }
            for (name, t) in &file.tenants {
                println!("tenant {name}: rpm {:?}, tpm {:?}", t.rpm, t.tpm);
            }
            Ok(())
        }
        KeyCommand::Revoke { id, .. } => {
            let file = store.load().await?;
            if !file.keys.iter().any(|k| k.id == id) {
                bail!("no key `{id}`");
            }
            store.put_key(&id, None).await?;
            println!("revoked {id}");
            Ok(())
        }
        KeyCommand::Rotate { id, .. } => {
            let file = store.load().await?;
            let Some(mut record) = file.keys.into_iter().find(|k| k.id == id) else {
                bail!("no key `{id}`");
            };
            let secret = record.rotate();
            store.put_key(&id, Some(&record)).await?;
            if as_json {
                println!("{}", json!({ "id": id, "secret": secret }));
            } else {
                println!("key {id} rotated\nsecret (shown once): {secret}");
            }
            Ok(())
        }
    }
}

pub async fn tenant(mut store: Store<'_>, command: TenantCommand) -> anyhow::Result<()> {
    let TenantCommand::Set { name, rpm, tpm, .. } = command;
    if rpm == Some(0) || tpm == Some(0) {
        bail!("a limit of 0 allows nothing; revoke the tenant's keys instead");
    }
    let limits = (rpm.is_some() || tpm.is_some()).then_some(TenantRecord { rpm, tpm });
    store.put_tenant(&name, limits.as_ref()).await?;
    match limits {
        Some(_) => println!("tenant {name}: rpm {rpm:?}, tpm {tpm:?}"),
        None => println!("tenant {name}: no limits of its own"),
    }
    Ok(())
}

/// Unix seconds of `--expires`: a duration from now, or an instant.
fn expiry(text: &str) -> Result<u64, String> {
    instant(text, true)
}

/// A duration (from now, forward or back) or an RFC 3339 instant, in unix seconds.
fn instant(text: &str, forward: bool) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        let now = unix_now();
        return Ok(if forward {
            now + d.as_secs()
        } else {
            now.saturating_sub(d.as_secs())
        });
    }
    let at = humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z")))
        .map_err(|_| {
            format!(
                "`{text}` is neither a duration (30d, 12h) nor an instant (2027-01-31T00:00:00Z)"
            )
        })?;
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Totals of a usage log per tenant and model, from `since` on.
pub fn usage(
    log: &Path,
    tenant: Option<&str>,
    since: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let since_ms = since
        .map(|s| instant(s, false).map_err(anyhow::Error::msg))
        .transpose()?
        .map_or(0, |s| s * 1000);
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut totals: BTreeMap<(String, String), Totals> = BTreeMap::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(record) = serde_json::from_str::<Record>(line) else {
            skipped += 1;
            continue;
        };
        let who = record.tenant.clone().unwrap_or_default();
        if record.ts_ms < since_ms || tenant.is_some_and(|t| t != who) {
            continue;
        }
        totals
            .entry((who, record.model.clone()))
            .or_default()
            .add(&record);
    }
    if as_json {
        let rows: Vec<_> = totals
            .iter()
            .map(|((tenant, model), t)| {
                json!({
                    "tenant": tenant, "model": model, "requests": t.requests, "errors": t.errors,
                    "prompt_tokens": t.prompt_tokens, "cached_tokens": t.cached_tokens,
                    "completion_tokens": t.completion_tokens,
                })
            })
            .collect();
        println!("{}", json!({ "usage": rows, "unreadable_lines": skipped }));
        return Ok(());
    }
    println!(
        "{:<16} {:<24} {:>9} {:>7} {:>12} {:>12} {:>12}",
        "tenant", "model", "requests", "errors", "prompt", "cached", "completion"
    );
    for ((tenant, model), t) in &totals {
        let tenant = if tenant.is_empty() { "-" } else { tenant };
        println!(
            "{tenant:<16} {model:<24} {:>9} {:>7} {:>12} {:>12} {:>12}",
            t.requests, t.errors, t.prompt_tokens, t.cached_tokens, t.completion_tokens
        );
    }
    if skipped > 0 {
        eprintln!(
            "{skipped} lines of {} are not usage records; skipped",
            log.display()
        );
    }
    Ok(())
}
