//! `bench chaos`: the chaos suite (`e2e::chaos`) at length. A whole fleet
//! under steady streaming and non-streaming load while one fault at a time
//! strikes and is repaired; per scenario, the requests, those that failed
//! before their first byte, broke mid-stream or differ from the unbroken
//! greedy answer, the streams continued on another worker, and p99 TTFT
//! during the fault against the fault-free baseline run first.

use std::path::Path;
use std::time::Duration;

use e2e::chaos::{Fault, Fleet, Tally, Timing};
use serde_json::json;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent clients, half of them streaming.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load before each fault.
    #[arg(long, default_value_t = 2.0)]
    warm_s: f64,
    /// Seconds each fault lasts before its repair.
    #[arg(long, default_value_t = 6.0)]
    during_s: f64,
    /// Seconds of load after each repair.
    #[arg(long, default_value_t = 2.0)]
    settle_s: f64,
}

pub async fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let timing = Timing {
        warm: Duration::from_secs_f64(args.warm_s),
        during: Duration::from_secs_f64(args.during_s),
        settle: Duration::from_secs_f64(args.settle_s),
    };
    let mut fleet = Fleet::start().await;
    let mut tallies: Vec<Tally> = Vec::new();
    for fault in Fault::ALL {
        let tally = fleet.scenario(fault, args.clients, timing).await;
        eprintln!(
            "{}: {} requests, {} lost",
            fault.name(),
            tally.requests,
            tally.lost()
        );
        for example in &tally.examples {
            eprintln!("  {example}");
        }
        tallies.push(tally);
    }
    let baseline = tallies[0].p99_ttft_ms.max(1e-9);
    let rows: Vec<Vec<String>> = tallies
        .iter()
        .map(|t| {
            vec![
                t.fault.name().to_string(),
                t.requests.to_string(),
                t.failed_before_first_byte.to_string(),
                t.broken_mid_stream.to_string(),
                t.differs.to_string(),
                t.continued.to_string(),
                format!("{:.0}", t.p99_ttft_ms),
                format!("{:.2}x", t.p99_ttft_ms / baseline),
            ]
        })
        .collect();
    println!(
        "{} clients ({} streaming), {:.0} s of fault per scenario\n",
        args.clients,
        args.clients.div_ceil(2),
        args.during_s
    );
    println!(
        "{}",
        report::table(
            &[
                "scenario",
                "requests",
                "failed before first byte",
                "broken mid-stream",
                "differ from unbroken",
                "streams continued",
                "p99 TTFT during fault (ms)",
                "vs none",
            ],
            &rows,
        )
    );
    if let Some(killed) = tallies.iter().find(|t| t.fault == Fault::GatewayKill) {
        println!(
            "a gateway killed: {} lost, of {} streams in flight at the kill (both gateways); {} of requests sent after it",
            killed.lost(),
            killed.streams_at_fault,
            killed.failed_after_fault
        );
    }
    let json: Vec<_> = tallies
        .iter()
        .map(|t| {
            json!({
                "scenario": t.fault.name(),
                "requests": t.requests,
                "failed_before_first_byte": t.failed_before_first_byte,
                "broken_mid_stream": t.broken_mid_stream,
                "differs": t.differs,
                "failed_after_fault": t.failed_after_fault,
                "streams_continued": t.continued,
                "p99_ttft_ms": t.p99_ttft_ms,
            })
        })
        .collect();
    report::write_json(
        &out.join("chaos.json"),
        &json!({"clients": args.clients, "scenarios": json}),
    )?;
    let names: Vec<&str> = tallies.iter().map(|t| t.fault.name()).collect();
    report::bar_chart(
        &out.join("chaos.png"),
        "p99 TTFT during each fault",
        "ms",
        &names,
        &[("p99 TTFT", tallies.iter().map(|t| t.p99_ttft_ms).collect())],
    )?;
    Ok(())
}
