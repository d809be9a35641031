//! `bench overhead`: what the gateway adds. The same small chat request goes
//! straight to a sim worker and through an in-process gateway in front of it,
//! in interleaved rounds so drift on a shared machine hits both paths alike.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::load::{self, Run};
use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Requests per path sent one at a time, for latency.
    #[arg(long, default_value_t = 3000)]
    latency_requests: usize,
    /// Requests per path for throughput.
    #[arg(long, default_value_t = 20000)]
    throughput_requests: usize,
    /// Clients in flight during the throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Interleaved rounds per phase.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// The sim worker's decode step; 0 leaves only HTTP and scheduling, so the gateway's cost shows in full.
    #[arg(long, default_value_t = 0)]
    decode_step_us: u64,
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let mut worker_config =
        workers::WorkerConfig::sim("bench-w1", ([127, 0, 0, 1], 0).into(), "sim-llama", "a");
    worker_config.engine.sim.prefill_us_per_token = 0;
    worker_config.engine.sim.decode_step_us = args.decode_step_us;
    worker_config.engine.sim.decode_us_per_seq = 0;
    let worker = workers::start(worker_config).await?;
    let gateway = gateway::start(gateway::Config::from_toml(&format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [[pools]]\nname = \"bench\"\nmodels = [\"sim-llama\"]\n\
         [[pools.workers]]\nid = \"bench-w1\"\nurl = \"{}\"\nzone = \"a\"\n",
        worker.url()
    ))?)
    .await?;
    let direct = format!("{}/v1/chat/completions", worker.url());
    let via = format!("http://{}/v1/chat/completions", gateway.api_addr());
    let body = Bytes::from(
        json!({"model": "sim-llama", "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 1})
            .to_string(),
    );
    let client = load::client();
    // Warm connections, caches and the allocator on both paths.
    load::run(&client, &direct, &body, 500, 4).await?;
    load::run(&client, &via, &body, 500, 4).await?;

    let latency = interleave(
        &client,
        [&direct, &via],
        &body,
        args.latency_requests,
        1,
        args.rounds,
    )
    .await?;
    let throughput = interleave(
        &client,
        [&direct, &via],
        &body,
        args.throughput_requests,
        args.concurrency,
        args.rounds,
    )
    .await?;
    gateway.shutdown().await;
    worker.shutdown(Duration::from_secs(1)).await;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let [(ld, lg), (td, tg)] = [(&latency[0], &latency[1]), (&throughput[0], &throughput[1])];
    let rows = vec![
        row("direct to worker", ld, td),
        row("through gateway", lg, tg),
        vec![
            "**gateway adds**".into(),
            format!(
                "**{:+.0} µs**",
                us(lg.percentile(0.5)) - us(ld.percentile(0.5))
            ),
            format!(
                "**{:+.0} µs**",
                us(lg.percentile(0.99)) - us(ld.percentile(0.99))
            ),
            format!(
                "**{:.0}% of direct**",
                100.0 * tg.throughput() / td.throughput()
            ),
        ],
    ];
    println!(
        "## bench overhead\n\n{} latency requests per path (one at a time), {} throughput requests per path at concurrency {}, \
         {} interleaved rounds, sim decode step {} µs\n\n{}",
        args.latency_requests,
        args.throughput_requests,
        args.concurrency,
        args.rounds,
        args.decode_step_us,
        report::table(&["path", "p50", "p99", "throughput (req/s)"], &rows)
    );
    let figures = json!({
        "latency_requests": args.latency_requests,
        "throughput_requests": args.throughput_requests,
        "concurrency": args.concurrency,
        "decode_step_us": args.decode_step_us,
        "direct": {"p50_us": us(ld.percentile(0.5)), "p99_us": us(ld.percentile(0.99)), "rps": td.throughput()},
        "gateway": {"p50_us": us(lg.percentile(0.5)), "p99_us": us(lg.percentile(0.99)), "rps": tg.throughput()},
        "added_p50_us": us(lg.percentile(0.5)) - us(ld.percentile(0.5)),
        "added_p99_us": us(lg.percentile(0.99)) - us(ld.percentile(0.99)),
        "throughput_ratio": tg.throughput() / td.throughput(),
    });
    report::write_json(&out.join("overhead.json"), &figures)?;
    report::bar_chart(
        &out.join("overhead.png"),
        "Gateway overhead: latency of one small request",
        "latency (µs)",
        &["p50", "p99"],
        &[
            (
                "direct",
                vec![us(ld.percentile(0.5)), us(ld.percentile(0.99))],
            ),
            (
                "through gateway",
                vec![us(lg.percentile(0.5)), us(lg.percentile(0.99))],
            ),
        ],
    )?;
    println!(
        "wrote {} and {}",
        out.join("overhead.json").display(),
        out.join("overhead.png").display()
    );
    Ok(())
}

fn row(name: &str, latency: &Run, throughput: &Run) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{:.0} µs", latency.percentile(0.5).as_secs_f64() * 1e6),
        format!("{:.0} µs", latency.percentile(0.99).as_secs_f64() * 1e6),
        format!("{:.0}", throughput.throughput()),
    ]
}

/// Runs each URL `count` times in total, alternating between them in `rounds`.
async fn interleave(
    client: &load::HttpClient,
    urls: [&str; 2],
    body: &Bytes,
    count: usize,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<[Run; 2]> {
    let mut runs: [Run; 2] = Default::default();
    for _ in 0..rounds {
        for (run, url) in runs.iter_mut().zip(urls) {
            let r = load::run(client, url, body, count / rounds, concurrency).await?;
            run.latencies.extend(r.latencies);
            run.elapsed += r.elapsed;
        }
    }
    Ok(runs)
}
