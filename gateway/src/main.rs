//! `gateway`: run the gateway from a config file, or check a config.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::{Config, RawConfig};
use protocol::logs::LogFormat;
use protocol::traces::TracingConfig;

#[derive(Parser)]
#[command(version, about = "OpenAI-compatible inference gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Gateway config (TOML).
    #[arg(long, default_value = "config/gateway.toml", global = true)]
    config: PathBuf,
    /// Overrides `etcd.endpoints` (comma-separated): discover workers, and
    /// take routing config and plugins, from there.
    #[arg(long, value_delimiter = ',', global = true)]
    etcd: Vec<String>,
    /// Overrides `bus.nats_url`: follow workers' KV events and load there.
    #[arg(long, global = true)]
    nats: Option<String>,
    /// Overrides `logs.format`: `text` or `json` (one object per line).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit.
    Check,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => {
            let (config, _, _) = load(&cli)?;
            check_plugins(&config)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        None => {
            // Checked before any port is bound.
            let (config, log_format, tracing) = load(&cli)?;
            let _exporter = protocol::logs::init("info", log_format, &tracing, "llmgw-gateway")
                .map_err(anyhow::Error::msg)?;
            let handle = gateway::start(config)
                .await
                .context("starting the gateway")?;
            println!("api listening on http://{}", handle.api_addr());
            println!("admin listening on http://{}", handle.admin_addr());
            gateway::shutdown_signal().await;
            handle.shutdown().await;
            Ok(())
        }
    }
}

/// Loads each pool's bound plugin (and its shadow) from `plugins.dir` as
/// the gateway would; with etcd, `gatewayctl` checks them when written.
fn check_plugins(config: &Config) -> anyhow::Result<()> {
    let Some(dir) = config.plugins.dir.as_deref() else {
        return Ok(());
    };
    if !config.etcd.endpoints.is_empty() {
        return Ok(());
    }
    let engine = gateway::plugin::PluginEngine::new(&config.plugins)?;
    let mut problems = Vec::new();
    for pool in &config.pools {
        let Some(binding) = &pool.policy else {
            continue;
        };
        let shadow = binding.shadow_binding();
        for (role, binding) in [("policy", Some(binding)), ("shadow", shadow.as_ref())] {
            let Some(binding) = binding else { continue };
            match gateway::plugin::check_in_dir(&engine, dir, &pool.name, binding) {
                Ok(version) => println!(
                    "pool {}: {role} {} {version} loads",
                    pool.name, binding.plugin
                ),
                Err(e) => problems.push(format!(
                    "pool {}: {role} {}: {e}",
                    pool.name, binding.plugin
                )),
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// The config file with the command line's overrides, checked whole, and
/// how to log and trace.
fn load(cli: &Cli) -> anyhow::Result<(Config, LogFormat, TracingConfig)> {
    let mut raw = RawConfig::from_file(&cli.config)
        .with_context(|| format!("config {}", cli.config.display()))?;
    if !cli.etcd.is_empty() {
        raw.etcd.endpoints = cli.etcd.clone();
    }
    if let Some(nats) = &cli.nats {
        raw.bus.nats_url = Some(nats.clone());
    }
    let log_format = cli.log_format.unwrap_or(raw.logs.format);
    let tracing = raw.tracing.clone();
    let config = raw
        .check()
        .with_context(|| format!("config {}", cli.config.display()))?;
    Ok((config, log_format, tracing))
}
