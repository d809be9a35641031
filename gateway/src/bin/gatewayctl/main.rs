//! `gatewayctl`: the operator's CLI for the etcd control plane. Every write
//! is checked first as a gateway would check it (the routing document whole;
//! bound plugins compiled, initialised with their config and sampled), is
//! written in a transaction that compares what was read, so it is refused
//! when another writer got there first, and prints what changed.

mod backup;
mod edit;
mod in_force;
mod keys;
mod new;
mod preview;
mod replay;
mod workers;
mod zones;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use gateway::config::RoutingDoc;
use gateway::control::artifact;
use gateway::plugin::{
    check_component, sha256_hex, version_problem, LoadedPolicy, PluginEngine, PluginsConfig, Tier,
};
use preview::Fleet;
use protocol::control::{Key, Keys, DEFAULT_PREFIX};
use serde_json::{json, Value};
use workers::Rotation;

#[derive(Parser)]
#[command(version, about = "Operate a gateway fleet through etcd")]
struct Cli {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    etcd: Vec<String>,
    /// Key prefix of the fleet.
    #[arg(long, default_value = DEFAULT_PREFIX, global = true)]
    prefix: String,
    /// JSON output, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// How its warnings are logged: `text` or `json` (one object per line).
    #[arg(long, global = true, default_value = "text")]
    log_format: protocol::logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The routing config: `[routing]` and `[[pools]]`, as in the gateway's file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Policy components, per name and version.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Points a blue-green pool at COLOUR: new requests move at once,
    /// requests in flight finish where they are.
    Flip {
        pool: String,
        colour: String,
        /// Write it even if it would take the pool down.
        #[arg(long)]
        force: bool,
    },
    /// Sets a canary pool's share of traffic, 0 to 100.
    Canary {
        pool: String,
        percent: f64,
        /// Write it even if it would take the pool down.
        #[arg(long)]
        force: bool,
    },
    /// Registered workers with their health, load and rotation.
    Workers,
    /// Writes the routing document and every plugin version to FILE: what a
    /// fleet cannot rebuild by itself.
    Backup { file: PathBuf },
    /// Loads a backup into an etcd holding no routing document or plugin,
    /// through the checks of any write.
    Restore {
        file: PathBuf,
        /// Restore into an etcd that already holds some.
        #[arg(long)]
        force: bool,
    },
    /// Shifts new requests away from a zone for a while, or ends a shift.
    Zone {
        #[command(subcommand)]
        command: ZoneCommand,
    },
    /// API keys: create, list, revoke, rotate (in etcd, or in `--file`).
    Key {
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
    /// Limits shared by all keys of a tenant.
    Tenant {
        #[command(subcommand)]
        command: keys::TenantCommand,
    },
    /// Sums a gateway's usage log (`usage.log`) per tenant and model.
    Usage {
        log: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        /// From when: a duration ago (24h, 7d) or an instant (2027-01-31T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
    },
    /// Takes a worker out of rotation (`cordon`, or `drain`: cordon and wait
    /// until it runs nothing) or puts it back (`uncordon`).
    Worker {
        #[command(subcommand)]
        command: WorkerCommand,
    },
}

#[derive(Subcommand)]
enum ZoneCommand {
    /// New requests avoid ZONE while any worker elsewhere can take them;
    /// those in flight finish. Ends by itself.
    Shift {
        zone: String,
        /// How long: 30s, 15m, 2h.
        #[arg(long = "for", value_parser = zones::duration)]
        lasting: Duration,
    },
    /// Ends a shift of ZONE now.
    Unshift { zone: String },
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// No new request goes to worker ID; those in flight finish.
    Cordon(RotationArgs),
    /// Worker ID takes new requests again.
    Uncordon(RotationArgs),
    /// Cordons worker ID and waits until it runs nothing.
    Drain {
        #[command(flatten)]
        worker: RotationArgs,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
}

#[derive(clap::Args)]
struct RotationArgs {
    id: String,
    /// Its pool: needed for a static worker, or an id registered in several pools.
    #[arg(long)]
    pool: Option<String>,
    /// Cordon even a pool's last worker in rotation.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Checks a routing config file without writing it.
    Validate { file: PathBuf },
    /// Checks a routing config file (and what it would route to), then writes it.
    Put {
        file: PathBuf,
        /// Write it even if it would take a pool down.
        #[arg(long)]
        force: bool,
    },
    /// Prints the routing config in force on the gateways (and says, apart,
    /// which newer one they refused or hold back, and why).
    Get {
        /// The latest written instead, in force or not.
        #[arg(long)]
        latest: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Publishes a component as NAME VERSION, with its sha256.
    Put {
        name: String,
        version: String,
        file: PathBuf,
        /// Replace a version already published with other bytes.
        #[arg(long)]
        force: bool,
    },
    /// Lists published plugins.
    List,
    /// Has version VERSION of POOL's plugin decide too, for a sample of
    /// requests, without acting on it; `/status` shows how often it agrees.
    Shadow {
        pool: String,
        version: String,
        /// The share of requests it decides, in (0, 1].
        #[arg(long, default_value_t = 0.1)]
        sample: f64,
    },
    /// Stops POOL's shadow.
    Unshadow { pool: String },
    /// Writes a buildable policy NAME of one's own, with a test.
    New {
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: new::Lang,
        /// Where; default ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The policy SDK a Rust policy builds against; default the one this
        /// gatewayctl was built with.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Runs the component WASM over a decision log (`plugins.decision_log`)
    /// and prints where its decisions differ from the logged ones.
    Replay {
        wasm: PathBuf,
        log: PathBuf,
        /// The JSON its `init` gets.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Makes POOL's shadow version the live one, through the checks of any change.
    Promote {
        pool: String,
        /// Write it even if it would take the pool down.
        #[arg(long)]
        force: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Its own work is a few etcd calls: nothing to trace.
    let tracing = protocol::traces::TracingConfig::default();
    let _ = protocol::logs::init("warn", cli.log_format, &tracing, "gatewayctl");
    // One sentence an operator can act on, never a backtrace.
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let keys = Keys::new(&cli.prefix);
    if let Command::Config {
        command: ConfigCommand::Validate { file },
    } = &cli.command
    {
        let text = read_text(file)?;
        RoutingDoc::from_toml(&text)?;
        println!("{}: ok", file.display());
        return Ok(());
    }
    // Keys in a file and usage logs need no etcd.
    let command = match cli.command {
        Command::Plugin {
            command: PluginCommand::Replay { wasm, log, config },
        } => return replay::replay(&wasm, &config, &log, cli.json),
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    lang,
                    dir,
                    sdk,
                },
        } => return new::new(&name, lang, dir.as_deref(), sdk.as_deref()),
        Command::Usage { log, tenant, since } => {
            return keys::usage(&log, tenant.as_deref(), since.as_deref(), cli.json);
        }
        Command::Key { command } => match command.file() {
            Some(file) => return keys::key(keys::Store::File(&file), command, cli.json).await,
            None => Command::Key { command },
        },
        Command::Tenant { command } => match command.file() {
            Some(file) => return keys::tenant(keys::Store::File(&file), command).await,
            None => Command::Tenant { command },
        },
        other => other,
    };
    let mut client = connect(&cli.etcd).await?;
    match command {
        Command::Key { command } => {
            keys::key(keys::Store::Etcd(&mut client, &keys), command, cli.json).await
        }
        Command::Tenant { command } => {
            keys::tenant(keys::Store::Etcd(&mut client, &keys), command).await
        }
        Command::Usage { .. } => unreachable!("handled without etcd"),
        Command::Config { command } => match command {
            ConfigCommand::Validate { .. } => unreachable!("handled without etcd"),
            ConfigCommand::Put { file, force } => {
                let text = read_text(&file)?;
                let doc = RoutingDoc::from_toml(&text)?;
                let current = current_doc(&mut client, &keys).await?;
                put_doc(&mut client, &keys, current, &doc, text, force).await
            }
            ConfigCommand::Get { latest } => in_force::print(&mut client, &keys, latest).await,
        },
        Command::Plugin { command } => match command {
            PluginCommand::Put {
                name,
                version,
                file,
                force,
            } => put_plugin(&mut client, &keys, &name, &version, &file, force).await,
            PluginCommand::List => list_plugins(&mut client, &keys, cli.json).await,
            PluginCommand::Replay { .. } | PluginCommand::New { .. } => {
                unreachable!("handled without etcd")
            }
            PluginCommand::Shadow {
                pool,
                version,
                sample,
            } => {
                if !(sample > 0.0 && sample <= 1.0) {
                    bail!("--sample must be above 0 and at most 1, got {sample}");
                }
                let edit = |text: &str| edit::set_shadow(text, &pool, Some((&version, sample)));
                edit_doc(&mut client, &keys, &pool, edit, false).await
            }
            PluginCommand::Unshadow { pool } => {
                let edit = |text: &str| edit::set_shadow(text, &pool, None);
                edit_doc(&mut client, &keys, &pool, edit, false).await
            }
            PluginCommand::Promote { pool, force } => {
                let edit = |text: &str| edit::promote(text, &pool);
                edit_doc(&mut client, &keys, &pool, edit, force).await
            }
        },
        Command::Flip {
            pool,
            colour,
            force,
        } => edit_binding(&mut client, &keys, &pool, "active", json!(colour), force).await,
        Command::Canary {
            pool,
            percent,
            force,
        } => {
            if !(0.0..=100.0).contains(&percent) {
                bail!("percent must be between 0 and 100, got {percent}");
            }
            let percent = if percent.fract() == 0.0 {
                json!(percent as u64)
            } else {
                json!(percent)
            };
            edit_binding(&mut client, &keys, &pool, "canary_percent", percent, force).await
        }
        Command::Workers => workers::list(&mut client, &keys, cli.json).await,
        Command::Zone { command } => match command {
            ZoneCommand::Shift { zone, lasting } => {
                zones::shift(&mut client, &keys, &zone, lasting).await
            }
            ZoneCommand::Unshift { zone } => zones::unshift(&mut client, &keys, &zone).await,
        },
        Command::Backup { file } => backup::backup(&mut client, &keys, &cli.prefix, &file).await,
        Command::Restore { file, force } => backup::restore(&mut client, &keys, &file, force).await,
        Command::Worker { command } => {
            let (args, rotation, timeout_s) = match command {
                WorkerCommand::Cordon(args) => (args, Rotation::Cordon, 0),
                WorkerCommand::Uncordon(args) => (args, Rotation::Uncordon, 0),
                WorkerCommand::Drain { worker, timeout_s } => (worker, Rotation::Drain, timeout_s),
            };
            let timeout = Duration::from_secs(timeout_s);
            let pool = args.pool.as_deref();
            workers::rotate(
                &mut client,
                &keys,
                &args.id,
                pool,
                rotation,
                args.force,
                timeout,
            )
            .await
        }
    }
}

/// A client of `endpoints` that has answered once: connecting is lazy, and
/// a first request's failure would read as a transport error.
async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    let unreachable = |e: &etcd_client::Error| {
        // The innermost cause names what happened ("Connection refused"),
        // not the gRPC layers wrapped around it.
        let outer: &dyn std::error::Error = match e {
            etcd_client::Error::GRpcStatus(status) => status,
            other => other,
        };
        let cause = std::iter::successors(Some(outer), |e| e.source())
            .last()
            .map_or_else(String::new, |e| e.to_string());
        anyhow::anyhow!("cannot reach etcd at {}: {cause}", endpoints.join(","))
    };
    let mut client = Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| unreachable(&e))?;
    client.status().await.map_err(|e| unreachable(&e))?;
    Ok(client)
}

fn read_text(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The routing document in etcd and its revision; an unparsable one reads as empty.
async fn current_doc(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<Option<(RoutingDoc, i64)>> {
    let got = client.get(keys.config(), None).await?;
    Ok(got.kvs().first().map(|kv| {
        let doc = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|text| toml::from_str(text).ok())
            .unwrap_or_default();
        (doc, kv.mod_revision())
    }))
}

/// Checks every bound plugin against what etcd holds and the document
/// against the live fleet (see `preview`; `force` writes it all the same),
/// then writes `text` unless the document changed since `current` was read.
async fn put_doc(
    client: &mut Client,
    keys: &Keys,
    current: Option<(RoutingDoc, i64)>,
    doc: &RoutingDoc,
    text: String,
    force: bool,
) -> anyhow::Result<()> {
    let policies = check_bindings(client, keys, doc).await?;
    let fleet = Fleet {
        registrations: workers::registrations(client, keys).await?,
        cordoned: workers::cordoned(client, keys).await?,
    };
    let (old, revision) = current.map_or((None, 0), |(doc, rev)| (Some(doc), rev));
    let after = preview::preview(doc, old.as_ref(), &fleet, &policies);
    for warning in &after.warnings {
        eprintln!("warning: {warning}");
    }
    if !after.refusals.is_empty() {
        let refusals = after.refusals.join("\n  ");
        if !force {
            bail!("refused, nothing written (--force writes it anyway):\n  {refusals}");
        }
        eprintln!("forced past:\n  {refusals}");
    }
    let changes = diff(old.as_ref(), doc);
    if changes.is_empty() {
        println!("unchanged");
        return Ok(());
    }
    // Revision 0 compares as "absent": the first writer wins there too.
    let txn = Txn::new()
        .when([Compare::mod_revision(
            keys.config(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::put(keys.config(), text, None)]);
    let done = client.txn(txn).await?;
    if !done.succeeded() {
        bail!("the routing config changed while this command ran; nothing written, try again");
    }
    let written = done.header().map_or(0, |h| h.revision());
    for change in changes {
        println!("{change}");
    }
    for line in after.lines {
        println!("after this, {line}");
    }
    println!("written at revision {written}");
    Ok(())
}

/// Loads each bound plugin as a gateway would: compile, `init` with the
/// pool's config, sample decisions.
async fn check_bindings(
    client: &mut Client,
    keys: &Keys,
    doc: &RoutingDoc,
) -> anyhow::Result<HashMap<String, LoadedPolicy>> {
    let bound: Vec<_> = doc
        .pools
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.policy.clone()?)))
        .collect();
    let mut loaded = HashMap::new();
    if bound.is_empty() {
        return Ok(loaded);
    }
    let engine = PluginEngine::new(&PluginsConfig::default())?;
    // A shadow is loaded as a gateway would, but not previewed: it routes nothing.
    let shadows = bound
        .iter()
        .filter_map(|(pool, b)| Some((format!("{pool}:shadow"), b.shadow_binding()?)))
        .collect::<Vec<_>>();
    for (pool, binding) in bound.into_iter().chain(shadows) {
        let kvs = get_prefix(client, &format!("{}{}/", keys.plugins(), binding.plugin)).await?;
        let artifact = artifact::in_etcd(keys, &kvs, &binding)?
            .ok_or_else(|| artifact::missing(&binding))
            .with_context(|| {
                format!("pool {pool}: publish it with `gatewayctl plugin put` first")
            })?;
        let engine = engine.clone();
        let (plugin, config) = (binding.plugin.clone(), binding.config_json());
        let name = pool.clone();
        let policy = tokio::task::spawn_blocking(move || {
            LoadedPolicy::load(
                &engine,
                Tier::Baseline,
                &plugin,
                &artifact.version,
                &artifact.bytes,
                &config,
            )
            .with_context(|| format!("pool {name}: plugin {plugin} {}", artifact.version))
        })
        .await??;
        if !pool.ends_with(":shadow") {
            loaded.insert(pool, policy);
        }
    }
    Ok(loaded)
}

/// Sets `field` of `pool`'s policy config and writes the document back,
/// the rest of it as it was written, comments included.
async fn edit_binding(
    client: &mut Client,
    keys: &Keys,
    pool: &str,
    field: &str,
    value: Value,
    force: bool,
) -> anyhow::Result<()> {
    let (old_text, revision, old) = stored_doc(client, keys).await?;
    let plugin = match old.pools.iter().find(|p| p.name == pool) {
        None => bail!("no pool `{pool}` in the routing config"),
        Some(p) => match &p.policy {
            None => bail!(
                "pool `{pool}` has no policy to set `{field}` for: bind one first, e.g. \
                 policy = {{ plugin = \"canary\", version = \"0.1.0\", config = {{ label = \"version\", stable = \"v1\", canary = \"v2\", canary_percent = 0 }} }}"
            ),
            Some(binding) => binding.plugin.clone(),
        },
    };
    let text = edit::set_policy_field(&old_text, pool, field, &value)?;
    // The edited document goes through the same checks as a file.
    let doc = RoutingDoc::from_toml(&text)?;
    put_doc(client, keys, Some((old, revision)), &doc, text, force)
        .await
        .with_context(|| format!("setting `{field}` of pool `{pool}`'s plugin {plugin}"))
}

/// The routing document in etcd: its text, revision and parse; an error
/// when there is none or it does not parse.
async fn stored_doc(client: &mut Client, keys: &Keys) -> anyhow::Result<(String, i64, RoutingDoc)> {
    let got = client.get(keys.config(), None).await?;
    let Some(kv) = got.kvs().first() else {
        bail!("no routing config in etcd; put one with `gatewayctl config put` first");
    };
    let text = String::from_utf8_lossy(kv.value()).into_owned();
    let doc = RoutingDoc::from_toml(&text).context("the routing config in etcd")?;
    Ok((text, kv.mod_revision(), doc))
}

/// Writes back the routing document as `edit` changes its text, through
/// the checks of any write.
async fn edit_doc(
    client: &mut Client,
    keys: &Keys,
    pool: &str,
    edit: impl FnOnce(&str) -> anyhow::Result<String>,
    force: bool,
) -> anyhow::Result<()> {
    let (old_text, revision, old) = stored_doc(client, keys).await?;
    let text = edit(&old_text)?;
    let doc = RoutingDoc::from_toml(&text)?;
    put_doc(client, keys, Some((old, revision)), &doc, text, force)
        .await
        .with_context(|| format!("changing pool `{pool}`'s policy"))
}

async fn put_plugin(
    client: &mut Client,
    keys: &Keys,
    name: &str,
    version: &str,
    file: &PathBuf,
    force: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let origin = file.display().to_string();
    put_plugin_bytes(client, keys, name, version, bytes, &origin, force).await
}

/// Publishes `bytes` (read from `origin`) as plugin `name` `version`, once
/// they passed a gateway's checks.
async fn put_plugin_bytes(
    client: &mut Client,
    keys: &Keys,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
    origin: &str,
    force: bool,
) -> anyhow::Result<()> {
    if let Some(problem) = version_problem(version) {
        bail!("{problem}");
    }
    let engine = PluginEngine::new(&PluginsConfig::default())?;
    let checked = bytes.clone();
    tokio::task::spawn_blocking(move || check_component(&engine, &checked))
        .await?
        .with_context(|| format!("{origin} is not a policy component"))?;
    let sha = sha256_hex(&bytes);
    let (wasm_key, sha_key) = (
        keys.plugin_wasm(name, version),
        keys.plugin_sha256(name, version),
    );
    let existing = get_prefix(client, &format!("{}{name}/{version}/", keys.plugins())).await?;
    let revision_of = |key: &str| existing.get(key).map_or(0, |(_, revision)| *revision);
    let published = existing
        .get(&sha_key)
        .map(|(value, _)| String::from_utf8_lossy(value).trim().to_string());
    if published.as_deref() == Some(sha.as_str()) && existing.contains_key(&wasm_key) {
        println!("unchanged: {name} {version} (sha256 {sha})");
        return Ok(());
    }
    if !existing.is_empty() && !force {
        let what = published.map_or_else(
            || "partly published (no sha256 next to its bytes)".to_string(),
            |sha| format!("already published with sha256 {sha}"),
        );
        bail!(
            "{name} {version} is {what}; versions are immutable: \
             publish a new version (or pass --force)"
        );
    }
    let size = bytes.len();
    // Compared on what was read (revision 0: absent), so two publishers of
    // one version cannot both win, and --force replaces only what it saw.
    let txn = Txn::new()
        .when([
            Compare::mod_revision(wasm_key.as_str(), CompareOp::Equal, revision_of(&wasm_key)),
            Compare::mod_revision(sha_key.as_str(), CompareOp::Equal, revision_of(&sha_key)),
        ])
        .and_then([
            TxnOp::put(wasm_key.as_str(), bytes, None),
            TxnOp::put(sha_key.as_str(), sha.clone(), None),
        ]);
    let done = client.txn(txn).await?;
    if !done.succeeded() {
        bail!("{name} {version} was published while this command ran; nothing written, try again");
    }
    let revision = done.header().map_or(0, |h| h.revision());
    println!("+ plugin {name} {version}: {size} bytes, sha256 {sha}");
    println!("written at revision {revision}");
    Ok(())
}

async fn list_plugins(client: &mut Client, keys: &Keys, as_json: bool) -> anyhow::Result<()> {
    let kvs = get_prefix(client, &keys.plugins()).await?;
    let mut rows = Vec::new();
    for (key, (bytes, revision)) in &kvs {
        let Some(Key::PluginWasm { name, version }) = keys.parse(key) else {
            continue;
        };
        let published = kvs
            .get(&keys.plugin_sha256(&name, &version))
            .map(|(sha, _)| String::from_utf8_lossy(sha).trim().to_string());
        let sha = sha256_hex(bytes);
        rows.push(json!({
            "name": name,
            "version": version,
            "bytes": bytes.len(),
            "sha256": sha,
            "sha256_ok": published.as_deref() == Some(sha.as_str()),
            "revision": revision,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<12} {:>9} {:<8} SHA256",
        "NAME", "VERSION", "BYTES", "CHECKED"
    );
    for row in rows {
        println!(
            "{:<20} {:<12} {:>9} {:<8} {}",
            row["name"].as_str().unwrap_or_default(),
            row["version"].as_str().unwrap_or_default(),
            row["bytes"],
            if row["sha256_ok"] == true {
                "ok"
            } else {
                "MISMATCH"
            },
            row["sha256"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

async fn get_prefix(
    client: &mut Client,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, (Bytes, i64)>> {
    let got = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            (key, (Bytes::copy_from_slice(kv.value()), kv.mod_revision()))
        })
        .collect())
}

/// One line per changed leaf: `~ path: old -> new`, `+ path: new`, `- path: old`.
fn diff(old: Option<&RoutingDoc>, new: &RoutingDoc) -> Vec<String> {
    let flat = |doc: Option<&RoutingDoc>| {
        let mut leaves = BTreeMap::new();
        if let Some(doc) = doc {
            flatten(
                "",
                &serde_json::to_value(doc).expect("serializes"),
                &mut leaves,
            );
        }
        leaves
    };
    let (old, new) = (flat(old), flat(Some(new)));
    let mut lines = Vec::new();
    for (path, value) in &new {
        match old.get(path) {
            None => lines.push(format!("+ {path}: {value}")),
            Some(before) if before != value => lines.push(format!("~ {path}: {before} -> {value}")),
            Some(_) => {}
        }
    }
    for (path, value) in &old {
        if !new.contains_key(path) {
            lines.push(format!("- {path}: {value}"));
        }
    }
    lines
}

/// Leaves of `value` by path; array items that have a `name` are keyed by it.
fn flatten(path: &str, value: &Value, leaves: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(&path, value, leaves);
            }
        }
        Value::Array(items)
            if items.iter().all(|i| i.get("name").is_some()) && !items.is_empty() =>
        {
            for item in items {
                let name = item["name"].as_str().unwrap_or_default();
                flatten(&format!("{path}[{name}]"), item, leaves);
            }
        }
        Value::Null => {}
        leaf => {
            leaves.insert(path.to_string(), leaf.to_string());
        }
    }
}
