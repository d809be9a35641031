//! `bench policy`: what a routing decision by a WASM plugin costs next to the
//! built-in policy, and how long a new plugin file takes to serve (swap
//! latency: to the first call served by it, at the baseline tier) and to be
//! optimized, while another thread keeps calling the policy.
//!
//! A decision is timed as a request pays it: from the gateway's candidates
//! to the ordered workers, building the plugin's inputs (request, per-candidate
//! figures, the pool's worker table) included. Steady calls find the table
//! unchanged, as nearly every request does; one column times the call after
//! the pool's workers changed (a new table built and sent before `route`).
//! Decisions are timed on the optimized tier, the one that serves once a
//! version settled, and on the baseline tier for comparison, on a recycled
//! instance (the gateway's way) and on a fresh one per call.
//!
//! Needs the example components: `scripts/build-plugins.sh`.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::candidates::{self, Cached, Candidate};
use gateway::config::Config;
use gateway::decide::{self, Facts, PluginInputs};
use gateway::plugin::{
    Decision, LoadedPolicy, PluginEngine, PluginError, PluginLimits, PluginWatcher, PluginsConfig,
    PolicyBinding, PolicySlot, Tier,
};
use gateway::pools::{Pool, Registry};
use gateway::worker::Worker;
use protocol::LoadReport;
use serde_json::json;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Where the `policy_*.wasm` components are.
    #[arg(long, default_value = "target/wasm32-wasip2/plugin")]
    wasm_dir: PathBuf,
    /// Candidate counts to time a decision over.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 64, 256])]
    candidates: Vec<usize>,
    /// Timed calls per candidate count, built-in and pooled plugin.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Timed calls per candidate count with a fresh instance per call, and
    /// after a change of the pool's workers (slower).
    #[arg(long, default_value_t = 2_000)]
    fresh_calls: usize,
    /// New versions written into the watched directory, one after another.
    #[arg(long, default_value_t = 100)]
    swaps: usize,
    /// The watcher's poll interval (it also wakes on filesystem events);
    /// default: the gateway's default.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// Where `scripts/build-plugins.sh` put the Python and JavaScript ports.
    #[arg(long, default_value = "target/plugins")]
    ports_dir: PathBuf,
}

/// The memory limit the bench gives the Python and JavaScript builds.
const PORT_MEMORY_LIMIT: u64 = 256 << 20;

/// One language's build of the same policy.
struct Port {
    language: &'static str,
    size_kb: usize,
    baseline_load_ms: f64,
    load_ms: f64,
    memory_kb: usize,
    call: Timing,
}

/// The `zone-affinity` policy in Rust, Python and JavaScript: component
/// size, load time at each tier (median of 3), linear memory per
/// initialised instance, and the cost of a decision at 64 candidates.
fn ports(args: &Args, calls: usize) -> anyhow::Result<Vec<Port>> {
    let builds = [
        (
            "Rust",
            "zone-affinity",
            read_wasm(&args.wasm_dir, "zone_affinity")?,
        ),
        (
            "Python",
            "zone-affinity-py",
            read_port(&args.ports_dir, "zone-affinity-py")?,
        ),
        (
            "JavaScript",
            "zone-affinity-js",
            read_port(&args.ports_dir, "zone-affinity-js")?,
        ),
    ];
    // The interpreters' instances get room of their own (`[plugins.limits]`).
    let mut plugins = PluginsConfig::default();
    for port in ["zone-affinity-py", "zone-affinity-js"] {
        let own = PluginLimits {
            memory_limit_bytes: Some(PORT_MEMORY_LIMIT),
            ..PluginLimits::default()
        };
        plugins.limits.insert(port.to_string(), own);
    }
    let engine = &PluginEngine::with_seed(&plugins, 1)?;
    let (config, registry) = gateway(64)?;
    let pool = &registry.pools()[0];
    let candidates = gather(pool);
    let headers = headers();
    let facts = facts(&headers);
    let mut out = Vec::new();
    for (language, name, bytes) in builds {
        let load = |tier| -> anyhow::Result<(f64, LoadedPolicy)> {
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..3 {
                let start = Instant::now();
                last = Some(LoadedPolicy::load(
                    engine, tier, name, "1.0.0", &bytes, "{}",
                )?);
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok((percentile(&mut times, 0.5), last.expect("three loads")))
        };
        let (baseline_load_ms, _) = load(Tier::Baseline)?;
        let (load_ms, policy) = load(Tier::Optimized)?;
        let call = time(calls, || {
            black_box(plugin_decide(&config, pool, &policy, &candidates, &facts)?);
            Ok(())
        })?;
        out.push(Port {
            language,
            size_kb: bytes.len() / 1024,
            baseline_load_ms,
            load_ms,
            memory_kb: policy.instance_memory_bytes().unwrap_or(0) / 1024,
            call,
        });
    }
    Ok(out)
}

fn read_port(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name).join("0.1.0.wasm");
    std::fs::read(&path).map_err(|error| {
        anyhow::anyhow!(
            "reading {}: {error}; build the ports first: scripts/build-plugins.sh",
            path.display()
        )
    })
}

/// Tokens per KV block, as the workers' default.
const BLOCK_SIZE: usize = 16;
/// Prompt length of the timed request, in blocks.
const PROMPT_BLOCKS: usize = 32;
const ZONES: [&str; 3] = ["a", "b", "c"];
/// The pool the swaps are timed on has this many workers.
const SWAP_POOL: usize = 64;

struct Timing {
    p50_us: f64,
    p99_us: f64,
}

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let failover = read_wasm(&args.wasm_dir, "failover")?;
    let zone_affinity = read_wasm(&args.wasm_dir, "zone_affinity")?;
    let mut plugins = PluginsConfig::default();
    if let Some(ms) = args.poll_interval_ms {
        plugins.poll_interval_ms = ms;
    }
    let engine = PluginEngine::with_seed(&plugins, 1)?;
    // Compile + link + init + sample decisions, as a swap does, uncontended.
    let load_ms = |tier| -> anyhow::Result<f64> {
        let mut loads = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            LoadedPolicy::load(&engine, tier, "failover", "1", &failover, "{}")?;
            loads.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(percentile(&mut loads, 0.5))
    };
    let (baseline_load_ms, load_ms) = (load_ms(Tier::Baseline)?, load_ms(Tier::Optimized)?);
    let policy = LoadedPolicy::load(&engine, Tier::Optimized, "failover", "1", &failover, "{}")?;
    let baseline = LoadedPolicy::load(&engine, Tier::Baseline, "failover", "1", &failover, "{}")?;
    let headers = headers();

    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for &n in &args.candidates {
        let (config, registry) = gateway(n)?;
        let pool = &registry.pools()[0];
        let candidates = gather(pool);
        let facts = facts(&headers);
        // The built-in policy through the same stage a request goes
        // through: the pool has no plugin. It takes its candidates by
        // value, so the clone of n `Arc`s is part of its cost (and of the
        // plugin columns', which shuffle their own copy).
        let builtin = time(args.calls, || {
            let candidates = black_box(candidates.clone());
            let order = decide::decide(&config, pool, candidates, &facts, &mut rand::rng())?;
            black_box(order.len());
            Ok(())
        })?;
        let pooled = time(args.calls, || {
            black_box(plugin_decide(&config, pool, &policy, &candidates, &facts)?);
            Ok(())
        })?;
        let pooled_baseline = time(args.calls, || {
            black_box(plugin_decide(
                &config,
                pool,
                &baseline,
                &candidates,
                &facts,
            )?);
            Ok(())
        })?;
        // A gateway whose pool's workers all just changed, one per call: the
        // host builds a new table and sends it before `route`.
        let table_changed = time_prepared(
            args.fresh_calls,
            || {
                let (config, registry) = gateway(n)?;
                let candidates = gather(&registry.pools()[0]);
                Ok((config, registry, candidates))
            },
            |(config, registry, candidates)| {
                let pool = &registry.pools()[0];
                black_box(plugin_decide(config, pool, &policy, candidates, &facts)?);
                Ok(())
            },
        )?;
        let fresh = time(args.fresh_calls, || {
            let mut candidates = candidates.clone();
            let inputs =
                PluginInputs::new(&config, pool, &mut candidates, &facts, &mut rand::rng());
            let decision = policy.route_fresh(
                &inputs.request,
                inputs.table(),
                &inputs.candidates,
                &inputs.caller,
            );
            black_box(decision?);
            Ok(())
        })?;
        // What building the plugin's inputs costs the gateway per request,
        // included in the plugin columns.
        let inputs = time(args.calls, || {
            let mut candidates = black_box(candidates.clone());
            black_box(PluginInputs::new(
                &config,
                pool,
                &mut candidates,
                &facts,
                &mut rand::rng(),
            ));
            Ok(())
        })?;
        rows.push(vec![
            n.to_string(),
            us(&builtin),
            us(&pooled),
            us(&pooled_baseline),
            us(&table_changed),
            us(&fresh),
            format!("{:.2} µs", inputs.p50_us),
        ]);
        figures.push(json!({
            "candidates": n,
            "builtin_kv": {"p50_us": builtin.p50_us, "p99_us": builtin.p99_us},
            "plugin_pooled": {"p50_us": pooled.p50_us, "p99_us": pooled.p99_us},
            "plugin_pooled_baseline": {
                "p50_us": pooled_baseline.p50_us,
                "p99_us": pooled_baseline.p99_us,
            },
            "plugin_table_changed": {
                "p50_us": table_changed.p50_us,
                "p99_us": table_changed.p99_us,
            },
            "plugin_fresh": {"p50_us": fresh.p50_us, "p99_us": fresh.p99_us},
            "inputs_p50_us": inputs.p50_us,
        }));
    }

    let hostile = read_wasm(&args.wasm_dir, "hostile")?;
    let failover_kb = failover.len() / 1024;
    anyhow::ensure!(args.swaps > 0, "--swaps must be at least 1");
    let swap = swaps(&engine, &plugins, &args, [failover.clone(), zone_affinity])?;
    // After the swaps: the spinning shadow would slow them.
    let (live, shadowed, shadow_stats) = shadow_cost(&engine, args.calls, &failover, &hostile)?;
    let ports = ports(&args, args.fresh_calls)?;
    let port_rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.language.to_string(),
                format!("{:.1} MB", p.size_kb as f64 / 1024.0),
                format!("{:.0} ms", p.baseline_load_ms),
                format!("{:.0} ms", p.load_ms),
                format!("{:.1} MB", p.memory_kb as f64 / 1024.0),
                us(&p.call),
            ]
        })
        .collect();

    let pooled_64 = figures
        .iter()
        .find(|f| f["candidates"] == 64)
        .map(|f| f["plugin_pooled"]["p50_us"].as_f64().unwrap_or(f64::NAN));
    println!(
        "## bench policy\n\nLoading the `failover` component ({} KB: compile, link, `init`, sample \
         decisions), median of 5, uncontended: {:.1} ms at the baseline tier (Winch), {:.1} ms \
         at the optimized tier (cranelift).\n\nOne routing decision, single thread, per-call time \
         over {} calls ({} after a change of workers and with a fresh instance), from the \
         gateway's candidates to the ordered workers: the built-in policy (`kv` strategy) against \
         the `failover` example plugin on a recycled, initialised instance (the gateway's way; \
         optimized tier, and baseline tier for comparison), then on the first call after the \
         pool's workers changed (new table built and sent with `set-workers`, then `route`), and \
         on a fresh instance that runs `init` and `set-workers` first (optimized). The plugin \
         columns include building its inputs, shown alone in the last column.\n\n{}\n\
         Swaps: {} new versions written (write + rename) into the watched directory (woken by \
         filesystem events, polled every {} ms regardless), alternating two plugins so each is \
         compiled; latency from the write to the first call that ran on the new version (baseline \
         tier), and to its optimized build serving, while another thread calls the policy with {} \
         candidates in a loop. Each version is written once the previous one is optimized, as \
         deploys minutes apart would be.\n\n{}\n\
         Shadow: the live decision (`failover`, 64 candidates, {} calls in 4 interleaved rounds) \
         with no shadow, and with the `hostile` plugin in shadow for every request, spinning to \
         its deadline on the shadow thread: p50 / p99 {} without, {} with ({} samples compared, \
         {} timed out, {} skipped while the shadow thread was busy).\n\n\
         Languages: the `zone-affinity` policy built from Rust, Python (componentize-py) and \
         JavaScript (componentize-js): component size, load (compile, link, `init`, sample \
         decisions; median of 3) at each tier, linear memory of one initialised instance, and \
         a decision at 64 candidates ({} calls, optimized tier):\n\n{}\n\
         Goals: pooled p50 with 64 candidates under 20 µs: {}; swap p50 and p99 under 100 ms \
         ({:.1} / {:.1} ms): {}; no failed call: {}.\n",
        failover_kb,
        baseline_load_ms,
        load_ms,
        args.calls,
        args.fresh_calls,
        report::table(
            &[
                "candidates",
                "built-in kv p50 / p99",
                "plugin pooled p50 / p99",
                "baseline tier pooled p50 / p99",
                "workers changed p50 / p99",
                "plugin fresh p50 / p99",
                "plugin inputs p50",
            ],
            &rows
        ),
        swap.count,
        plugins.poll_interval_ms,
        SWAP_POOL,
        report::table(
            &[
                "swaps",
                "p50",
                "p99",
                "max",
                "optimized p50 / p99",
                "calls during swaps",
                "failed calls"
            ],
            &[vec![
                swap.count.to_string(),
                format!("{:.1} ms", swap.p50_ms),
                format!("{:.1} ms", swap.p99_ms),
                format!("{:.1} ms", swap.max_ms),
                format!(
                    "{:.1} / {:.1} ms",
                    swap.optimized_p50_ms, swap.optimized_p99_ms
                ),
                swap.calls.to_string(),
                if swap.failures.is_empty() {
                    "0".to_string()
                } else {
                    format!("{} ({:?})", swap.failed(), swap.failures)
                },
            ]]
        ),
        args.calls,
        us(&live),
        us(&shadowed),
        shadow_stats["compared"],
        shadow_stats["errors"]["timeout"].as_u64().unwrap_or(0),
        shadow_stats["skipped"],
        args.fresh_calls,
        report::table(
            &["language", "size", "load, baseline", "load, optimized", "memory per instance", "decision p50 / p99"],
            &port_rows
        ),
        verdict(pooled_64.map(|p50| p50 < 20.0)),
        swap.p50_ms,
        swap.p99_ms,
        verdict(Some(swap.p50_ms < 100.0 && swap.p99_ms < 100.0)),
        verdict(Some(swap.failed() == 0)),
    );

    report::write_json(
        &out.join("policy.json"),
        &json!({
            "load_ms_p50": load_ms,
            "baseline_load_ms_p50": baseline_load_ms,
            "decision": figures,
            "languages": ports.iter().map(|p| json!({
                "language": p.language, "size_kb": p.size_kb,
                "baseline_load_ms": p.baseline_load_ms, "load_ms": p.load_ms,
                "memory_kb": p.memory_kb,
                "call": {"p50_us": p.call.p50_us, "p99_us": p.call.p99_us},
            })).collect::<Vec<_>>(),
            "shadow": {
                "live_without": {"p50_us": live.p50_us, "p99_us": live.p99_us},
                "live_with_hostile_shadow": {"p50_us": shadowed.p50_us, "p99_us": shadowed.p99_us},
                "samples": shadow_stats,
            },
            "swap": {
                "swaps": swap.count,
                "poll_interval_ms": plugins.poll_interval_ms,
                "p50_ms": swap.p50_ms,
                "p99_ms": swap.p99_ms,
                "max_ms": swap.max_ms,
                "optimized_p50_ms": swap.optimized_p50_ms,
                "optimized_p99_ms": swap.optimized_p99_ms,
                "calls": swap.calls,
                "failed_calls": swap.failed(),
                "failures_by_kind": swap.failures,
            },
        }),
    )?;
    let categories: Vec<String> = args
        .candidates
        .iter()
        .map(|n| format!("{n} candidates"))
        .collect();
    let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
    let series = |key: &str| -> Vec<f64> {
        figures
            .iter()
            .map(|f| f[key]["p50_us"].as_f64().unwrap_or(0.0))
            .collect()
    };
    report::bar_chart(
        &out.join("policy.png"),
        "Routing decision p50: built-in vs WASM plugin",
        "µs per decision",
        &categories,
        &[
            ("built-in kv", series("builtin_kv")),
            ("plugin, pooled instance", series("plugin_pooled")),
            ("plugin, workers changed", series("plugin_table_changed")),
            ("plugin, fresh instance", series("plugin_fresh")),
        ],
    )?;
    Ok(())
}

/// The live decision's cost with a shadow version bound: `decide` with the
/// `failover` plugin live, against the same with the `hostile` plugin in
/// shadow for every request, spinning to its deadline on the shadow thread
/// (one core of the machine's); interleaved rounds. Also what became of the
/// samples.
fn shadow_cost(
    engine: &PluginEngine,
    calls: usize,
    failover: &[u8],
    hostile: &[u8],
) -> anyhow::Result<(Timing, Timing, serde_json::Value)> {
    const N: usize = 64;
    let binding =
        "policy = { plugin = \"failover\", shadow = { version = \"6.6.6\", sample = 1.0 } }";
    let (plain_config, plain) = gateway_with(N, "policy = { plugin = \"failover\" }")?;
    let (shadow_config, shadowed) = gateway_with(N, binding)?;
    for registry in [&plain, &shadowed] {
        registry.pools()[0]
            .policy
            .try_load(engine, "failover", "1.0.0", failover, "{}")?;
    }
    let spin = r#"{"mode": "loop", "on_model": "llama-3-8b"}"#;
    let pool = &shadowed.pools()[0];
    pool.shadow
        .slot
        .try_load(engine, "failover", "6.6.6", hostile, spin)?;
    let headers = headers();
    let facts = facts(&headers);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        for (config, registry, samples) in [
            (&plain_config, &plain, &mut without),
            (&shadow_config, &shadowed, &mut with),
        ] {
            let pool = &registry.pools()[0];
            let candidates = gather(pool);
            for _ in 0..calls / 4 {
                let candidates = candidates.clone();
                let start = Instant::now();
                let order = decide::decide(config, pool, candidates, &facts, &mut rand::rng())?;
                samples.push(start.elapsed().as_secs_f64() * 1e6);
                black_box(order.len());
            }
        }
    }
    let timing = |samples: &mut Vec<f64>| Timing {
        p50_us: percentile(samples, 0.5),
        p99_us: percentile(samples, 0.99),
    };
    // Wait out the shadow thread's backlog (a deadline per sample).
    let mut stats = pool.shadow.status(pool.shadow_sample)["stats"].clone();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = pool.shadow.status(pool.shadow_sample)["stats"].clone();
        if now == stats {
            break;
        }
        stats = now;
    }
    Ok((timing(&mut without), timing(&mut with), stats))
}

/// What `decide` does with a plugin in force, minus its fallback: inputs
/// built, the plugin asked, its positions turned into the workers to try.
fn plugin_decide(
    config: &Config,
    pool: &Pool,
    plugin: &LoadedPolicy,
    candidates: &[Candidate],
    facts: &Facts<'_>,
) -> Result<Vec<Arc<Worker>>, PluginError> {
    let mut candidates = candidates.to_vec();
    let inputs = PluginInputs::new(config, pool, &mut candidates, facts, &mut rand::rng());
    Ok(match inputs.ask(plugin)? {
        Decision::Route(order) => order
            .into_iter()
            .map(|i| candidates[i].worker.clone())
            .collect(),
        Decision::Reject { .. } => Vec::new(),
    })
}

fn read_wasm(dir: &Path, plugin: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("policy_{plugin}.wasm"));
    std::fs::read(&path).map_err(|error| {
        anyhow::anyhow!(
            "reading {}: {error}; build the examples first: scripts/build-plugins.sh",
            path.display()
        )
    })
}

/// Times each call on its own: a call takes microseconds, far above the
/// clock's ~25 ns, and per-call samples give honest tails.
fn time(calls: usize, mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Timing> {
    time_prepared(calls, || Ok(()), |()| call())
}

/// Like [`time`], with an untimed `prepare` before each call.
fn time_prepared<T>(
    calls: usize,
    mut prepare: impl FnMut() -> anyhow::Result<T>,
    mut call: impl FnMut(&T) -> anyhow::Result<()>,
) -> anyhow::Result<Timing> {
    // Warm up: the first calls fill the instance pool and the caches.
    for _ in 0..(calls / 10).max(10) {
        call(&prepare()?)?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls.max(1) {
        let prepared = prepare()?;
        let start = Instant::now();
        call(&prepared)?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Timing {
        p50_us: percentile(&mut samples, 0.5),
        p99_us: percentile(&mut samples, 0.99),
    })
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn us(timing: &Timing) -> String {
    format!("{:.2} / {:.2} µs", timing.p50_us, timing.p99_us)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// A gateway in zone `a` with one pool (`chat`, model `llama-3-8b`) of `n`
/// workers over three zones, two versions and two colours. The workers are
/// never contacted.
fn gateway(n: usize) -> anyhow::Result<(Config, Registry)> {
    gateway_with(n, "")
}

/// [`gateway`] with `policy` (a pool's `policy = ...` line) bound.
fn gateway_with(n: usize, policy: &str) -> anyhow::Result<(Config, Registry)> {
    let dir = if policy.is_empty() {
        ""
    } else {
        "dir = \"unused\"\n"
    };
    let mut text = format!(
        "zone = \"a\"\n[plugins]\n{dir}headers = [\"x-tenant\"]\n\
         [[pools]]\nname = \"chat\"\nmodels = [\"llama-3-8b\"]\n{policy}\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[pools.workers]]\nid = \"worker-{i:03}\"\nurl = \"http://127.0.0.1:1\"\n\
             zone = \"{}\"\nlabels = {{ version = \"{}\", colour = \"{}\" }}\n",
            ZONES[i % ZONES.len()],
            if i % 4 == 0 { "v2" } else { "v1" },
            if i % 2 == 0 { "blue" } else { "green" },
        ));
    }
    let config = Config::from_toml(&text)?;
    let registry = Registry::from_config(&config)?;
    Ok((config, registry))
}

/// The pool's candidates with varied load reports, in-flight counts and
/// overlaps: deterministic, so runs compare.
fn gather(pool: &Pool) -> Vec<Candidate> {
    let now = Instant::now();
    for (i, worker) in pool.workers.iter().enumerate() {
        worker.report_load(
            LoadReport {
                running: i * 5 % 17,
                waiting: i % 3,
                kv_blocks_used: i * 37 % 1000,
                kv_blocks_total: 1000,
                prefill_tokens_pending: 0,
                decode_tokens_per_s: 0.0,
            },
            now,
        );
    }
    let cached: Vec<Cached> = (0..pool.workers.len())
        .map(|i| Cached {
            overlap_blocks: (i * 11 % PROMPT_BLOCKS) as u32,
            held_blocks: i * 53 % 4096,
        })
        .collect();
    let mut candidates = candidates::gather(pool, &cached, "a", now, Duration::from_secs(3600));
    for (i, c) in candidates.iter_mut().enumerate() {
        c.in_flight = (i * 7 % 13) as u32;
    }
    candidates
}

fn headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
    headers
}

fn facts(headers: &http::HeaderMap) -> Facts<'_> {
    Facts {
        model: "llama-3-8b",
        stream: true,
        prompt_tokens: PROMPT_BLOCKS * BLOCK_SIZE,
        prompt_blocks: PROMPT_BLOCKS,
        session_key: Some("session-42".to_string()),
        headers,
        caller: gateway::plugin::nobody(),
    }
}

struct Swaps {
    count: usize,
    /// From the write to the first call that ran on the new version.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// From the write to the optimized build serving.
    optimized_p50_ms: f64,
    optimized_p99_ms: f64,
    calls: usize,
    /// Failed calls by [`PluginError::kind`](gateway::plugin::PluginError::kind).
    failures: BTreeMap<&'static str, usize>,
}

impl Swaps {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

/// Writes `args.swaps` versions into a watched directory, alternating the
/// two components, and times each from the write to the first call it
/// served and to its optimized build serving.
fn swaps(
    engine: &PluginEngine,
    plugins: &PluginsConfig,
    args: &Args,
    components: [Vec<u8>; 2],
) -> anyhow::Result<Swaps> {
    let dir = std::env::temp_dir().join(format!("llmgw-bench-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("routing"))?;
    let put = |version: usize, bytes: &[u8]| -> std::io::Result<()> {
        // Write then rename, as a deploy should: a poll never sees half a file.
        let staging = dir.join("routing").join(format!(".{version}.partial"));
        std::fs::write(&staging, bytes)?;
        // Versions are semantic versions: 0.0.0, 1.0.0, ...
        std::fs::rename(
            &staging,
            dir.join("routing").join(format!("{version}.0.0.wasm")),
        )
    };
    put(0, &components[0])?;
    let slot = Arc::new(PolicySlot::new("chat"));
    let mut watcher = PluginWatcher::new(engine.clone(), &dir);
    watcher.watch(
        "chat",
        PolicyBinding {
            plugin: "routing".to_string(),
            version: None,
            config: None,
            shadow: None,
        },
        slot.clone(),
    );
    anyhow::ensure!(watcher.poll_once() == 1, "the first version did not load");
    // Its optimizing compile would otherwise share the cores with the first swap.
    let start = Instant::now();
    while slot
        .current()
        .is_none_or(|p| p.info().tier != Tier::Optimized)
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the first version was not optimized within 30 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let handle = watcher.spawn(Duration::from_millis(plugins.poll_interval_ms));

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
    // When each version's first call returned: a swap is done once a request
    // was served by the new version, not when the slot switched.
    let first_calls = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let caller = {
        let (slot, stop, calls, failures, first_calls) = (
            slot.clone(),
            stop.clone(),
            calls.clone(),
            failures.clone(),
            first_calls.clone(),
        );
        let (config, registry) = gateway(SWAP_POOL)?;
        std::thread::spawn(move || {
            let pool = &registry.pools()[0];
            let candidates = gather(pool);
            let headers = headers();
            let facts = facts(&headers);
            let mut last_version = String::new();
            while !stop.load(Ordering::Relaxed) {
                let kind = match slot.current() {
                    None => Some("no policy"),
                    Some(policy) => {
                        let result = plugin_decide(&config, pool, &policy, &candidates, &facts);
                        let version = &policy.info().version;
                        if result.is_ok() && *version != last_version {
                            first_calls
                                .lock()
                                .expect("not poisoned")
                                .insert(version.clone(), Instant::now());
                            last_version.clone_from(version);
                        }
                        result.err().map(|e| e.kind())
                    }
                };
                if let Some(kind) = kind {
                    *failures
                        .lock()
                        .expect("not poisoned")
                        .entry(kind)
                        .or_default() += 1;
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut latencies = Vec::with_capacity(args.swaps);
    let mut optimized = Vec::with_capacity(args.swaps);
    for version in 1..=args.swaps {
        let start = Instant::now();
        put(version, &components[version % 2])?;
        let wanted = format!("{version}.0.0");
        let mut served: Option<Instant> = None;
        loop {
            served = served.or_else(|| {
                let first_calls = first_calls.lock().expect("not poisoned");
                first_calls.get(&wanted).copied()
            });
            let optimized_now = slot
                .current()
                .is_some_and(|p| p.info().version == wanted && p.info().tier == Tier::Optimized);
            if let Some(served) = served.filter(|_| optimized_now) {
                latencies.push((served - start).as_secs_f64() * 1e3);
                optimized.push(start.elapsed().as_secs_f64() * 1e3);
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "version {version} was not served optimized within 30 s: {:?}",
                slot.status().last_refusal
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // Old versions would pile up in the listing; a deploy removes them too.
        std::fs::remove_file(
            dir.join("routing")
                .join(format!("{}.0.0.wasm", version - 1)),
        )?;
    }
    stop.store(true, Ordering::Relaxed);
    caller
        .join()
        .map_err(|_| anyhow::anyhow!("the calling thread panicked"))?;
    handle.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let max_ms = latencies.iter().copied().fold(0.0, f64::max);
    let failures = failures.lock().expect("not poisoned").clone();
    Ok(Swaps {
        count: args.swaps,
        p50_ms: percentile(&mut latencies, 0.5),
        p99_ms: percentile(&mut latencies, 0.99),
        max_ms,
        optimized_p50_ms: percentile(&mut optimized, 0.5),
        optimized_p99_ms: percentile(&mut optimized, 0.99),
        calls: calls.load(Ordering::Relaxed),
        failures,
    })
}
