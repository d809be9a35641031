//! `gatewayctl plugin replay`: a policy component run over a decision log
//! (`plugins.decision_log`), each record's inputs as the gateway logged
//! them; prints where its decisions differ from the logged ones.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use gateway::plugin::record::{Logged, Outcome};
use gateway::plugin::{LoadedPolicy, PluginEngine, PluginsConfig, Tier};
use serde_json::json;

/// How a replayed decision compares with the logged one.
fn compare(logged: &Logged, now: &Outcome) -> &'static str {
    let zone = |id: &str| {
        logged
            .candidates
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.zone.as_str())
    };
    match (&logged.decision, now) {
        (_, Outcome::Error(_)) => "error",
        (Outcome::Error(_), _) => "logged_error",
        (Outcome::Reject { .. }, Outcome::Reject { .. }) => "agree",
        (Outcome::Route(_), Outcome::Reject { .. }) => "now_rejects",
        (Outcome::Reject { .. }, Outcome::Route(_)) => "now_routes",
        (Outcome::Route(was), Outcome::Route(is)) if was.first() == is.first() => "agree",
        (Outcome::Route(was), Outcome::Route(is)) => {
            match (
                was.first().and_then(|w| zone(w)),
                is.first().and_then(|w| zone(w)),
            ) {
                (a, b) if a == b => "other_worker",
                _ => "other_zone",
            }
        }
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Route(ids) => format!("route {}", ids.join(",")),
        Outcome::Reject { status, message } => format!("reject {status} ({message})"),
        Outcome::Error(kind) => format!("fail ({kind})"),
    }
}

pub fn replay(wasm: &Path, config: &str, log: &Path, as_json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let engine = PluginEngine::new(&PluginsConfig::default())?;
    let name = wasm
        .file_stem()
        .map_or("policy".into(), |s| s.to_string_lossy().into_owned());
    let policy = LoadedPolicy::load(&engine, Tier::Optimized, &name, "0.0.0", &bytes, config)
        .with_context(|| format!("{} does not load", wasm.display()))?;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut rows = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line_no = n + 1;
        let logged: Logged = serde_json::from_str(line)
            .with_context(|| format!("{}:{line_no} is not a decision record", log.display()))?;
        let inputs = logged
            .inputs()
            .map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", log.display()))?;
        let decision = policy.route(
            &inputs.request,
            &inputs.table,
            &inputs.candidates,
            &inputs.caller,
        );
        let now = logged.outcome_of(&decision);
        let verdict = compare(&logged, &now);
        *counts.entry(verdict).or_default() += 1;
        if as_json {
            rows.push(
                json!({"line": line_no, "logged": logged.decision, "now": now, "verdict": verdict}),
            );
        } else if verdict != "agree" {
            println!(
                "line {line_no}: {verdict}: logged {}, now {}",
                describe(&logged.decision),
                describe(&now)
            );
        }
    }
    let total: u64 = counts.values().sum();
    if as_json {
        println!(
            "{}",
            json!({"decisions": rows, "counts": counts, "total": total})
        );
        return Ok(());
    }
    let agree = counts.get("agree").copied().unwrap_or(0);
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{total} decisions replayed: {agree} agree ({:.1}%); {}",
        100.0 * agree as f64 / total.max(1) as f64,
        summary.join(", ")
    );
    Ok(())
}
