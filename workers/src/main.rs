//! The `worker` binary: configuration from a file and flags, then serve until
//! SIGTERM or SIGINT, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use workers::{Backend, EngineKind, WorkerConfig};

/// An OpenAI-compatible inference worker.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML config file; without one, defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `id`.
    #[arg(long)]
    id: Option<String>,
    /// Overrides `listen`, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `model`.
    #[arg(long)]
    model: Option<String>,
    /// Overrides `zone`.
    #[arg(long)]
    zone: Option<String>,
    /// Overrides `pool`.
    #[arg(long)]
    pool: Option<String>,
    /// Overrides `bus.nats_url`: publish KV events and load to this NATS server.
    #[arg(long)]
    nats: Option<String>,
    /// Overrides `etcd.endpoints` (comma-separated): register there.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Adds a label, `KEY=VALUE`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Overrides `advertise_url`: the URL registered for gateways.
    #[arg(long)]
    advertise: Option<String>,
    /// Overrides `engine.kind`.
    #[arg(long, value_parser = ["sim", "llama"])]
    engine: Option<String>,
    /// Overrides `engine.model_path`: the model the llama engine loads.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Overrides `logs.format`: `text` or `json` (one object per line).
    #[arg(long)]
    log_format: Option<protocol::logs::LogFormat>,
    /// Overrides `engine.backend`: where the llama engine computes.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    backend: Option<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => WorkerConfig::load(path)?,
        None => WorkerConfig::default(),
    };
    let format = args.log_format.unwrap_or(config.logs.format);
    let _exporter = protocol::logs::init("info", format, &config.tracing, "llmgw-worker")
        .map_err(anyhow::Error::msg)?;
    config.id = args.id.unwrap_or(config.id);
    config.listen = args.listen.unwrap_or(config.listen);
    config.model = args.model.unwrap_or(config.model);
    config.zone = args.zone.unwrap_or(config.zone);
    config.pool = args.pool.unwrap_or(config.pool);
    config.bus.nats_url = args.nats.or(config.bus.nats_url);
    if !args.etcd.is_empty() {
        config.etcd.endpoints = args.etcd;
    }
    config.labels.extend(args.labels);
    config.advertise_url = args.advertise.or(config.advertise_url);
    match args.engine.as_deref() {
        Some("llama") => config.engine.kind = EngineKind::Llama,
        Some(_) => config.engine.kind = EngineKind::Sim,
        None => {}
    }
    config.engine.model_path = args.model_path.or(config.engine.model_path);
    match args.backend.as_deref() {
        Some("cuda") => config.engine.backend = Backend::Cuda,
        Some(_) => config.engine.backend = Backend::Cpu,
        None => {}
    }
    config.validate()?;
    if !config.labels.is_empty() && config.etcd.endpoints.is_empty() {
        // Labels reach gateways only in an etcd registration; without one,
        // each gateway's file says what labels a static worker has.
        tracing::warn!(labels = ?config.labels, "labels set without etcd: gateways will not see them; give them to this worker in the gateways' [[pools.workers]] instead");
    }
    let grace = Duration::from_millis(config.drain_grace_ms);

    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let worker = workers::start(config).await?;
    // Tests and scripts read this line to find the port; keep its form.
    println!("listening on {}", worker.url());
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    worker.shutdown(grace).await;
    Ok(())
}
