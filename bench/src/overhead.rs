//! `bench overhead`: what the gateway adds. The same small chat request goes
//! straight to an upstream, through nginx's `proxy_pass` in front of it (the
//! baseline a proxy is measured against), and through an in-process gateway,
//! in interleaved rounds so drift on a shared machine hits every path alike.
//! The upstream is canned by default (the same answer at once, so the
//! proxies' own cost is all there is), or a sim worker (`--upstream sim`).
//! The client is wrk by default, outside this process; `--client in-process`
//! uses the bench's own hyper client, whose cost every path then shares.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::canned;
use crate::load::{self, Run};
use crate::report;
use crate::{memory, wrk};

#[derive(clap::Args)]
pub struct Args {
    /// What sends the requests: `wrk`, or `in-process` (the bench's client).
    #[arg(long, default_value = "wrk")]
    client: Client,
    /// With wrk: seconds per path and phase, split across the rounds.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// In process: requests per path sent one at a time, for latency (and,
    /// with either client, to count allocations).
    #[arg(long, default_value_t = 3000)]
    latency_requests: usize,
    /// In process: requests per path for throughput.
    #[arg(long, default_value_t = 20000)]
    throughput_requests: usize,
    /// Clients in flight during the throughput phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Interleaved rounds per phase.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// What answers: `canned` (a fixed answer at once) or `sim` (a sim worker).
    #[arg(long, default_value = "canned")]
    upstream: Upstream,
    /// The sim worker's decode step; 0 leaves only HTTP and scheduling.
    #[arg(long, default_value_t = 0)]
    decode_step_us: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Client {
    Wrk,
    InProcess,
}

/// One path's figures in one phase.
struct Measured {
    p50: Duration,
    p99: Duration,
    rps: f64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Upstream {
    Canned,
    Sim,
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let (mut worker, mut fixed) = (None, None);
    let port = match args.upstream {
        Upstream::Canned => {
            let upstream = canned::start().await?;
            let port = upstream.port;
            fixed = Some(upstream);
            port
        }
        Upstream::Sim => {
            let mut config = workers::WorkerConfig::sim(
                "bench-w1",
                ([127, 0, 0, 1], 0).into(),
                "sim-llama",
                "a",
            );
            config.engine.sim.prefill_us_per_token = 0;
            config.engine.sim.decode_step_us = args.decode_step_us;
            config.engine.sim.decode_us_per_seq = 0;
            let started = workers::start(config).await?;
            let port = started.local_addr().port();
            worker = Some(started);
            port
        }
    };
    let upstream = format!("http://127.0.0.1:{port}");
    let gateway = gateway::start(gateway::Config::from_toml(&format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [[pools]]\nname = \"bench\"\nmodels = [\"sim-llama\"]\n\
         [[pools.workers]]\nid = \"bench-w1\"\nurl = \"{upstream}\"\nzone = \"a\"\n"
    ))?)
    .await?;
    let direct = format!("{upstream}/v1/chat/completions");
    let nginx = e2e::nginx(&e2e::temp_dir(), &[port]).await;
    let proxied = format!("{}/v1/chat/completions", nginx.url);
    let via = format!("http://{}/v1/chat/completions", gateway.api_addr());
    let paths = [direct.as_str(), proxied.as_str(), via.as_str()];
    let body = Bytes::from(
        json!({"model": "sim-llama", "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 1})
            .to_string(),
    );
    let client = load::client();
    // Warm connections, caches and the allocator on every path.
    for url in paths {
        load::run(&client, url, &body, 500, 4).await?;
    }
    let (latency, throughput) = match args.client {
        Client::InProcess => {
            let latency = interleave(&client, paths, &body, args.latency_requests, 1, args.rounds);
            let latency = latency.await?.map(Measured::from);
            let throughput = interleave(
                &client,
                paths,
                &body,
                args.throughput_requests,
                args.concurrency,
                args.rounds,
            );
            (latency, throughput.await?.map(Measured::from))
        }
        Client::Wrk => {
            let dir = e2e::temp_dir();
            let text = std::str::from_utf8(&body)?;
            let each = (args.seconds / args.rounds).max(1);
            let latency = interleave_wrk(&dir, paths, text, 1, each, args.rounds).await?;
            let throughput =
                interleave_wrk(&dir, paths, text, args.concurrency, each, args.rounds).await?;
            (latency, throughput)
        }
    };
    let allocations = allocations_per_request(
        &client,
        [direct.as_str(), via.as_str()],
        &body,
        args.latency_requests,
    )
    .await?;
    gateway.shutdown().await;
    if let Some(worker) = worker {
        worker.shutdown(Duration::from_secs(1)).await;
    }
    drop((nginx, fixed));

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let names = ["direct to upstream", "through nginx", "through gateway"];
    let (ld, td) = (&latency[0], &throughput[0]);
    let (tn, ln) = (&throughput[1], &latency[1]);
    let rows: Vec<Vec<String>> = names
        .iter()
        .zip(latency.iter().zip(&throughput))
        .map(|(name, (l, t))| {
            vec![
                name.to_string(),
                format!("{:.0} µs", us(l.p50)),
                format!("{:.0} µs", us(l.p99)),
                format!("{:.0}", t.rps),
                format!(
                    "{:+.0} / {:+.0} µs",
                    us(l.p50) - us(ld.p50),
                    us(l.p99) - us(ld.p99)
                ),
                format!("{:.2}x", t.rps / tn.rps),
            ]
        })
        .collect();
    let (lg, tg) = (&latency[2], &throughput[2]);
    let volume = match args.client {
        Client::Wrk => format!(
            "wrk, {} s per path and phase (each round's percentiles averaged)",
            (args.seconds / args.rounds).max(1) * args.rounds
        ),
        Client::InProcess => format!(
            "the bench's own client, {} latency requests per path (one at a time), {} throughput requests per path",
            args.latency_requests, args.throughput_requests
        ),
    };
    println!(
        "## bench overhead\n\n{} upstream; {volume}; latency at one connection, throughput at \
         {} connections; {} interleaved rounds, sim decode step {} µs\n\n{}\n\
         the gateway adds {:+.0} µs at p50 to nginx's {:+.0} (at most 2x nginx's + 20 µs: {:.0}) and serves {:.2}x \
         nginx's throughput (at least 0.5x); it allocates {:.1} times per request (its path's allocations less the \
         direct path's, {:.1} − {:.1}, one request at a time)",
        args.upstream.name(),
        args.concurrency,
        args.rounds,
        args.decode_step_us,
        report::table(
            &["path", "p50", "p99", "throughput (req/s)", "added p50 / p99", "throughput vs nginx"],
            &rows
        ),
        us(lg.p50) - us(ld.p50),
        us(ln.p50) - us(ld.p50),
        2.0 * (us(ln.p50) - us(ld.p50)) + 20.0,
        tg.rps / tn.rps,
        allocations[1] - allocations[0],
        allocations[1],
        allocations[0],
    );
    let figures = |l: &Measured, t: &Measured| {
        json!({"p50_us": us(l.p50), "p99_us": us(l.p99), "rps": t.rps,
            "added_p50_us": us(l.p50) - us(ld.p50), "added_p99_us": us(l.p99) - us(ld.p99)})
    };
    let json = json!({
        "client": match args.client { Client::Wrk => "wrk", Client::InProcess => "in-process" },
        "upstream": args.upstream.name(),
        "seconds": matches!(args.client, Client::Wrk).then_some(args.seconds),
        "latency_requests": args.latency_requests,
        "throughput_requests": matches!(args.client, Client::InProcess).then_some(args.throughput_requests),
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "decode_step_us": args.decode_step_us,
        "direct": figures(ld, td),
        "nginx": figures(ln, tn),
        "gateway": figures(lg, tg),
        "gateway_throughput_vs_nginx": tg.rps / tn.rps,
        "gateway_added_p50_bound_us": 2.0 * (us(ln.p50) - us(ld.p50)) + 20.0,
        "gateway_allocations_per_request": allocations[1] - allocations[0],
    });
    report::write_json(&out.join("overhead.json"), &json)?;
    report::bar_chart(
        &out.join("overhead.png"),
        "Latency of one small request, by path",
        "latency (µs)",
        &["p50", "p99"],
        &names
            .iter()
            .zip(&latency)
            .map(|(name, l)| (*name, vec![us(l.p50), us(l.p99)]))
            .collect::<Vec<_>>(),
    )?;
    println!(
        "wrote {} and {}",
        out.join("overhead.json").display(),
        out.join("overhead.png").display()
    );
    Ok(())
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Canned => "canned",
            Upstream::Sim => "sim worker",
        }
    }
}

impl From<Run> for Measured {
    fn from(run: Run) -> Measured {
        Measured {
            p50: run.percentile(0.5),
            p99: run.percentile(0.99),
            rps: run.throughput(),
        }
    }
}

/// Heap allocations per request on each path, one request at a time. The
/// client and the upstream run in this process on every path, so what a proxy
/// in this process adds is its path's count less the direct path's.
async fn allocations_per_request<const N: usize>(
    client: &load::HttpClient,
    urls: [&str; N],
    body: &Bytes,
    count: usize,
) -> anyhow::Result<[f64; N]> {
    let mut per_request = [0.0; N];
    for (slot, url) in per_request.iter_mut().zip(urls) {
        let before = memory::allocations();
        load::run(client, url, body, count, 1).await?;
        *slot = (memory::allocations() - before) as f64 / count as f64;
    }
    Ok(per_request)
}

/// wrk on each URL for `seconds` a round, alternating between them in
/// `rounds`: requests over time for throughput, each round's percentiles
/// averaged.
async fn interleave_wrk<const N: usize>(
    dir: &Path,
    urls: [&str; N],
    body: &str,
    connections: usize,
    seconds: u64,
    rounds: u64,
) -> anyhow::Result<[Measured; N]> {
    let mut runs: [Vec<wrk::Summary>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..rounds {
        for (run, url) in runs.iter_mut().zip(urls) {
            run.push(wrk::run(dir, url, body, connections, seconds).await?);
        }
    }
    Ok(runs.map(|summaries| {
        let mean = |f: fn(&wrk::Summary) -> u64| {
            Duration::from_micros(summaries.iter().map(f).sum::<u64>() / summaries.len() as u64)
        };
        let elapsed: Duration = summaries.iter().map(wrk::Summary::duration).sum();
        Measured {
            p50: mean(|s| s.p50_us),
            p99: mean(|s| s.p99_us),
            rps: summaries.iter().map(|s| s.requests).sum::<u64>() as f64 / elapsed.as_secs_f64(),
        }
    }))
}

/// Runs each URL `count` times in total, alternating between them in `rounds`.
async fn interleave<const N: usize>(
    client: &load::HttpClient,
    urls: [&str; N],
    body: &Bytes,
    count: usize,
    concurrency: usize,
    rounds: u64,
) -> anyhow::Result<[Run; N]> {
    let mut runs: [Run; N] = std::array::from_fn(|_| Run::default());
    for _ in 0..rounds {
        for (run, url) in runs.iter_mut().zip(urls) {
            let r = load::run(client, url, body, count / rounds as usize, concurrency).await?;
            run.latencies.extend(r.latencies);
            run.elapsed += r.elapsed;
        }
    }
    Ok(runs)
}
