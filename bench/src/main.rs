//! `bench`: measurements reported as ratios against a baseline taken in the
//! same run. Each subcommand prints a Markdown table and writes JSON and a PNG
//! chart into `--out`.

mod canned;
mod chaos;
mod control;
mod engine;
mod fairness;
mod index;
mod load;
mod memory;
mod overhead;
mod policy;
mod report;
mod routing;
mod tokenize;
mod wrk;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Counts live heap bytes, for `bench index`'s memory figures.
#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

#[derive(Parser)]
#[command(about = "Gateway benchmarks")]
struct Cli {
    /// Where JSON and PNG results go.
    #[arg(long, global = true, default_value = "out/bench")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Faults under load (worker, etcd, NATS, zone, gateway): what clients lose.
    Chaos(chaos::Args),
    /// A quiet and a high-priority tenant under a noisy one's flood: TTFT, shedding only against the fair queue.
    Fairness(fairness::Args),
    /// The etcd control plane: config put to routed, worker SIGKILL to removal.
    Control(control::Args),
    /// The llama engine on the real model: decode, prefill and cached-prefix TTFT against memory bandwidth.
    Engine(engine::Args),
    /// Small requests straight to a worker and through the gateway, interleaved.
    Overhead(overhead::Args),
    /// Prefix index: KV events applied per second and lookup latency, exact and approximate.
    Index(index::Args),
    /// WASM routing policy: decision cost against the built-in policy, and hot-swap latency.
    Policy(policy::Args),
    /// Routing strategies compared on a prefix-sharing workload over a sim cluster.
    Routing(routing::Args),
    /// What tokenizing and hashing a prompt costs the gateway, by prompt length.
    Tokenize(tokenize::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    match cli.command {
        Command::Chaos(args) => chaos::run(args, &cli.out).await,
        Command::Control(args) => control::run(args, &cli.out).await,
        Command::Fairness(args) => fairness::run(args, &cli.out).await,
        Command::Engine(args) => engine::run(args, &cli.out),
        Command::Overhead(args) => overhead::run(args, &cli.out).await,
        Command::Index(args) => index::run(args, &cli.out),
        Command::Policy(args) => policy::run(args, &cli.out),
        Command::Routing(args) => routing::run(args, &cli.out).await,
        Command::Tokenize(args) => tokenize::run(args, &cli.out),
    }
}
