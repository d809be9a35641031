//! `bench routing`: what routing by KV-cache overlap buys. One prefix-sharing
//! workload (`workload`) is replayed, request for request and at the same
//! times, against a fresh cluster of sim workers (`cluster`) for each
//! strategy: the gateway's `round_robin`, `least_load`, `approx` and `kv`,
//! `kv_zmq` (`kv` with the workers' events in vLLM's format over ZeroMQ,
//! `zmq`), and an `oracle` in the bench that knows every cache exactly
//! (`oracle`). `drive` sends and times the requests, `summary` reports.

mod cluster;
mod drive;
mod oracle;
mod summary;
mod workload;
pub(crate) mod zmq;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::{RoutingConfig, Strategy};
use prompt::Tokenizer;
use protocol::Bus;
use serde_json::json;

use cluster::{Cluster, Sizing};
use drive::Target;
use oracle::{Caches, Oracle};
use summary::Summary;
use workload::Request;

#[derive(clap::Args)]
pub struct Args {
    /// Strategies to run, in order.
    #[arg(long, value_delimiter = ',', default_values = ["round_robin", "least_load", "approx", "kv", "kv_zmq", "oracle"])]
    strategies: Vec<Router>,
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Workers in the zone other than the gateway's.
    #[arg(long, default_value_t = 2)]
    remote_workers: usize,
    #[arg(long, default_value_t = 32)]
    customers: usize,
    /// Chat sessions per customer.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Requests per session, each appending to the conversation.
    #[arg(long, default_value_t = 5)]
    turns: usize,
    /// Sessions under way at once.
    #[arg(long, default_value_t = 16)]
    active_sessions: usize,
    /// Mean arrival rate, requests per second (Poisson). The default keeps round-robin,
    /// which mostly misses the cache, near the cluster's prefill capacity.
    #[arg(long, default_value_t = 120.0)]
    rate: f64,
    #[arg(long, default_value_t = 1000)]
    system_tokens_min: usize,
    #[arg(long, default_value_t = 2000)]
    system_tokens_max: usize,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// KV cache blocks per worker.
    #[arg(long, default_value_t = 1024)]
    num_blocks: usize,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long, default_value_t = 32)]
    max_running: usize,
    #[arg(long, default_value_t = 512)]
    max_prefill_tokens_per_step: usize,
    #[arg(long, default_value_t = 40)]
    prefill_us_per_token: u64,
    #[arg(long, default_value_t = 3000)]
    decode_step_us: u64,
    #[arg(long, default_value_t = 50)]
    decode_us_per_seq: u64,
    /// Routing weights for `kv`, `approx` and the oracle alike; unset keeps the gateway's default.
    #[arg(long)]
    prefill_weight: Option<f64>,
    #[arg(long)]
    decode_weight: Option<f64>,
    #[arg(long)]
    remote_zone_cost: Option<f64>,
    #[arg(long)]
    balance_abs_threshold: Option<u32>,
    #[arg(long)]
    balance_rel_threshold: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Router {
    RoundRobin,
    LeastLoad,
    Approx,
    Kv,
    KvZmq,
    Oracle,
}

impl Router {
    fn name(self) -> &'static str {
        match self {
            Router::RoundRobin => "round_robin",
            Router::LeastLoad => "least_load",
            Router::Approx => "approx",
            Router::Kv => "kv",
            Router::KvZmq => "kv_zmq",
            Router::Oracle => "oracle",
        }
    }
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let sizing = Sizing {
        workers: args.workers,
        remote_workers: args.remote_workers.min(args.workers),
        block_size: args.block_size,
        num_blocks: args.num_blocks,
        max_running: args.max_running,
        max_prefill_tokens_per_step: args.max_prefill_tokens_per_step,
        max_model_len: 4096,
        prefill_us_per_token: args.prefill_us_per_token,
        decode_step_us: args.decode_step_us,
        decode_us_per_seq: args.decode_us_per_seq,
    };
    let routing = routing(&args);
    let shape = workload::Shape {
        customers: args.customers,
        sessions: args.sessions,
        turns: args.turns,
        active_sessions: args.active_sessions,
        rate: args.rate,
        system_tokens: (args.system_tokens_min, args.system_tokens_max),
        max_tokens: args.max_tokens,
        seed: args.seed,
    };
    let tokenizer = Tokenizer::builtin()?;
    let requests = Arc::new(workload::build(&shape, &tokenizer, sizing.block_size)?);
    let longest = requests.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    anyhow::ensure!(
        longest + args.max_tokens <= sizing.max_model_len,
        "the longest prompt has {longest} tokens; with {} to generate it exceeds max_model_len {}: fewer turns or shorter system prompts",
        args.max_tokens,
        sizing.max_model_len
    );
    let prompt_tokens: usize = requests.iter().map(|r| r.tokens.len()).sum();
    let span = requests.last().map_or(Duration::ZERO, |r| r.at);
    let heading = format!(
        "{} requests ({} customers x {} sessions x {} turns, {} sessions at once), Poisson at {} req/s over {:.1} s, \
         prompts {:.0} tokens on average (longest {longest}), {} completion tokens each. \
         {} sim workers ({} in the gateway's zone), {} KV blocks of {} tokens each, prefill {} µs/token, \
         decode step {} µs + {} µs/sequence. Weights: prefill {}, decode {}, remote zone {}, hot-spot guard {} / {}x.",
        requests.len(),
        args.customers,
        args.sessions,
        args.turns,
        args.active_sessions,
        args.rate,
        span.as_secs_f64(),
        prompt_tokens as f64 / requests.len() as f64,
        args.max_tokens,
        sizing.workers,
        sizing.workers - sizing.remote_workers,
        sizing.num_blocks,
        sizing.block_size,
        sizing.prefill_us_per_token,
        sizing.decode_step_us,
        sizing.decode_us_per_seq,
        routing.prefill_weight,
        routing.decode_weight,
        routing.remote_zone_cost,
        routing.balance_abs_threshold,
        routing.balance_rel_threshold,
    );
    eprintln!("{heading}");

    let block_tokens = args
        .strategies
        .contains(&Router::KvZmq)
        .then(|| Arc::new(zmq::block_tokens(&requests, sizing.block_size)));
    let mut summaries = Vec::new();
    for router in args.strategies.iter().copied() {
        let started = Instant::now();
        let summary = run_one(
            router,
            &sizing,
            &routing,
            &requests,
            args.seed,
            &block_tokens,
        )
        .await?;
        eprintln!(
            "{:<12} p50 {:>6.0} ms  p90 {:>6.0} ms  hit {:>5.1}%  errors {}  ({:.0} s)",
            summary.strategy,
            summary.ttft_p50_ms,
            summary.ttft_p90_ms,
            100.0 * summary.kv_hit_rate,
            summary.errors,
            started.elapsed().as_secs_f64()
        );
        summaries.push(summary);
    }
    let setup = json!({
        "requests": requests.len(),
        "customers": args.customers,
        "sessions": args.sessions,
        "turns": args.turns,
        "active_sessions": args.active_sessions,
        "rate": args.rate,
        "seed": args.seed,
        "mean_prompt_tokens": prompt_tokens as f64 / requests.len() as f64,
        "max_tokens": args.max_tokens,
        "sizing": sizing,
        "routing": routing,
    });
    summary::report(&summaries, setup, &heading, out)
}

/// The gateway's defaults, with whatever weights were given on the command line.
fn routing(args: &Args) -> RoutingConfig {
    let mut r = RoutingConfig::default();
    r.prefill_weight = args.prefill_weight.unwrap_or(r.prefill_weight);
    r.decode_weight = args.decode_weight.unwrap_or(r.decode_weight);
    r.remote_zone_cost = args.remote_zone_cost.unwrap_or(r.remote_zone_cost);
    r.balance_abs_threshold = args
        .balance_abs_threshold
        .unwrap_or(r.balance_abs_threshold);
    r.balance_rel_threshold = args
        .balance_rel_threshold
        .unwrap_or(r.balance_rel_threshold);
    r
}

/// One strategy on a cluster of its own.
async fn run_one(
    router: Router,
    sizing: &Sizing,
    routing: &RoutingConfig,
    requests: &Arc<Vec<Request>>,
    seed: u64,
    block_tokens: &Option<Arc<zmq::BlockTokens>>,
) -> anyhow::Result<Summary> {
    let bus = Bus::local();
    // The oracle and the ZeroMQ publishers listen before the workers start,
    // so they see each one's first event.
    let follow = match router {
        Router::Oracle => Some(Caches::follow(&bus).await?),
        _ => None,
    };
    let publishers = match (router, block_tokens) {
        (Router::KvZmq, Some(tokens)) => {
            let ids = Cluster::ids(sizing);
            Some(zmq::Publishers::start(&bus, &ids, tokens.clone(), sizing.block_size).await?)
        }
        _ => None,
    };
    let cluster = Cluster::start(sizing, &bus).await?;
    let (target, gateway) = match (router, &follow) {
        (Router::Oracle, Some((caches, _))) => (
            Target::Oracle(Oracle::new(
                caches.clone(),
                &cluster.members,
                routing,
                sizing.block_size,
                seed,
            )?),
            None,
        ),
        _ => {
            let strategy = match router {
                Router::RoundRobin => Strategy::RoundRobin,
                Router::LeastLoad => Strategy::LeastLoad,
                Router::Approx => Strategy::Approx,
                _ => Strategy::Kv,
            };
            let config = RoutingConfig {
                strategy,
                ..routing.clone()
            };
            let gw = cluster
                .gateway(sizing, &config, &bus, publishers.as_ref())
                .await?;
            (Target::Gateway(gw.api_addr().to_string()), Some(gw))
        }
    };
    let client = crate::load::client();
    let outcomes = drive::replay(&client, &target, requests).await?;
    if let Some(gw) = gateway {
        gw.shutdown().await;
    }
    let ids: Vec<String> = cluster.members.iter().map(|m| m.id.clone()).collect();
    cluster.shutdown().await;
    if let Some(publishers) = publishers {
        publishers.shutdown();
    }
    if let Some((caches, task)) = follow {
        task.abort();
        let gaps = caches.gaps.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(gaps == 0, "the oracle missed {gaps} KV event batches");
    }
    Ok(Summary::of(router.name(), &outcomes, &ids))
}
