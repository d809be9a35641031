//! The `worker` binary: configuration from a file and flags, then serve until
//! SIGTERM or SIGINT, then drain.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use workers::WorkerConfig;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => WorkerConfig::load(path)?,
        None => WorkerConfig::default(),
    };
    config.id = args.id.unwrap_or(config.id);
    config.listen = args.listen.unwrap_or(config.listen);
    config.model = args.model.unwrap_or(config.model);
    config.zone = args.zone.unwrap_or(config.zone);
    config.pool = args.pool.unwrap_or(config.pool);
    config.bus.nats_url = args.nats.or(config.bus.nats_url);
    config.validate()?;
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
