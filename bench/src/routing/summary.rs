//! Figures per strategy, and the report: Markdown tables with ratios against
//! round-robin and the oracle, the goals checked, JSON and a chart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::drive::Outcome;
use crate::report;

#[derive(serde::Serialize)]
pub struct Summary {
    pub strategy: &'static str,
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub ttft_p50_ms: f64,
    pub ttft_p90_ms: f64,
    pub ttft_mean_ms: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Cached prompt tokens over all prompt tokens, from the workers' usage.
    pub kv_hit_rate: f64,
    pub requests_per_worker: BTreeMap<String, usize>,
}

impl Summary {
    pub fn of(strategy: &'static str, outcomes: &[Outcome], workers: &[String]) -> Summary {
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
        let mut ttfts: Vec<Duration> = ok.iter().filter_map(|o| o.ttft).collect();
        ttfts.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| {
            ttfts
                .get(((ttfts.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(f64::NAN, |d| ms(*d))
        };
        let elapsed = outcomes
            .iter()
            .map(|o| o.finished)
            .max()
            .unwrap_or_default()
            .as_secs_f64();
        let sum = |f: fn(&Outcome) -> u64| ok.iter().map(|o| f(o)).sum::<u64>() as f64;
        let mut requests_per_worker: BTreeMap<String, usize> =
            workers.iter().map(|w| (w.clone(), 0)).collect();
        for o in &ok {
            if let Some(w) = &o.worker {
                *requests_per_worker.entry(w.clone()).or_default() += 1;
            }
        }
        Summary {
            strategy,
            requests: outcomes.len(),
            errors: outcomes.len() - ok.len(),
            first_error: outcomes.iter().find_map(|o| o.error.clone()),
            ttft_p50_ms: pct(0.5),
            ttft_p90_ms: pct(0.9),
            ttft_mean_ms: ttfts.iter().map(|d| ms(*d)).sum::<f64>() / ttfts.len().max(1) as f64,
            requests_per_s: ok.len() as f64 / elapsed,
            output_tokens_per_s: sum(|o| o.completion_tokens) / elapsed,
            kv_hit_rate: sum(|o| o.cached_tokens) / sum(|o| o.prompt_tokens).max(1.0),
            requests_per_worker,
        }
    }

    fn share(&self) -> String {
        let counts = self.requests_per_worker.values();
        let (max, min) = (counts.clone().max(), counts.min());
        format!("{} / {}", max.unwrap_or(&0), min.unwrap_or(&0))
    }
}

/// `base / x` as "N.Nx lower", or "N.Nx higher" when x is the larger.
fn lower(x: f64, base: f64) -> String {
    if x <= base {
        format!("{:.1}x lower", base / x)
    } else {
        format!("{:.2}x higher", x / base)
    }
}

/// Prints the tables and writes `routing.json` and `routing.png` into `out`.
pub fn report(
    summaries: &[Summary],
    setup: Value,
    heading: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let find = |name: &str| summaries.iter().find(|s| s.strategy == name);
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.strategy.to_string(),
                format!("{:.0} ms", s.ttft_p50_ms),
                format!("{:.0} ms", s.ttft_p90_ms),
                format!("{:.0} ms", s.ttft_mean_ms),
                format!("{:.1}", s.requests_per_s),
                format!("{:.0}", s.output_tokens_per_s),
                format!("{:.1}%", 100.0 * s.kv_hit_rate),
                s.share(),
                s.errors.to_string(),
            ]
        })
        .collect();
    println!(
        "## bench routing\n\n{heading}\n\n{}",
        report::table(
            &[
                "strategy",
                "TTFT p50",
                "TTFT p90",
                "TTFT mean",
                "req/s",
                "output tok/s",
                "KV hit rate",
                "requests per worker (max / min)",
                "errors",
            ],
            &rows
        )
    );
    if let (Some(rr), Some(oracle)) = (find("round_robin"), find("oracle")) {
        let rows: Vec<Vec<String>> = summaries
            .iter()
            .map(|s| {
                vec![
                    s.strategy.to_string(),
                    lower(s.ttft_p90_ms, rr.ttft_p90_ms),
                    lower(s.ttft_p50_ms, rr.ttft_p50_ms),
                    lower(s.ttft_mean_ms, rr.ttft_mean_ms),
                    format!("{:.2}x oracle", s.ttft_p90_ms / oracle.ttft_p90_ms),
                ]
            })
            .collect();
        println!(
            "{}",
            report::table(
                &[
                    "strategy",
                    "p90 TTFT vs RR",
                    "p50 TTFT vs RR",
                    "mean TTFT vs RR",
                    "p90 TTFT vs oracle"
                ],
                &rows
            )
        );
    }
    if let (Some(kv), Some(rr), Some(approx), Some(oracle)) = (
        find("kv"),
        find("round_robin"),
        find("approx"),
        find("oracle"),
    ) {
        let goal = |name: &str, met: bool, figure: String| {
            println!(
                "- {name}: {figure} — {}",
                if met { "met" } else { "**missed**" }
            );
        };
        println!("Goals (p90 TTFT):");
        let vs_rr = rr.ttft_p90_ms / kv.ttft_p90_ms;
        goal(
            "kv ≥10x lower than round_robin",
            vs_rr >= 10.0,
            format!("{vs_rr:.1}x"),
        );
        let vs_approx = approx.ttft_p90_ms / kv.ttft_p90_ms;
        goal(
            "kv ≥2x lower than approx",
            vs_approx >= 2.0,
            format!("{vs_approx:.2}x"),
        );
        let vs_oracle = kv.ttft_p90_ms / oracle.ttft_p90_ms;
        goal(
            "kv within 1.2x of the oracle",
            vs_oracle <= 1.2,
            format!("{vs_oracle:.2}x"),
        );
        println!();
    }
    for s in summaries.iter().filter(|s| s.errors > 0) {
        println!(
            "{}: {} errors, first: {}",
            s.strategy,
            s.errors,
            s.first_error.as_deref().unwrap_or("?")
        );
    }
    report::write_json(
        &out.join("routing.json"),
        &json!({"setup": setup, "strategies": summaries}),
    )?;
    report::bar_chart(
        &out.join("routing.png"),
        "Time to first token by routing strategy",
        "TTFT (ms)",
        &summaries.iter().map(|s| s.strategy).collect::<Vec<_>>(),
        &[
            ("p50", summaries.iter().map(|s| s.ttft_p50_ms).collect()),
            ("p90", summaries.iter().map(|s| s.ttft_p90_ms).collect()),
        ],
    )?;
    println!(
        "wrote {} and {}",
        out.join("routing.json").display(),
        out.join("routing.png").display()
    );
    Ok(())
}
