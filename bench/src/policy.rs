//! `bench policy`: what a routing decision by a WASM plugin costs next to the
//! built-in policy, with a recycled instance pool and with a fresh instance
//! per call, and how long a new plugin file takes to serve (swap latency, at
//! the baseline tier) and to be optimized, while another thread keeps calling
//! the policy. Decisions are timed on the optimized tier, the one that
//! serves once a version settled, and on the baseline tier for comparison.
//!
//! Needs the example components: `cargo build --release --target
//! wasm32-wasip2 -p policy-failover -p policy-zone-affinity`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::candidates::Candidate;
use gateway::config::{BreakerConfig, RoutingConfig, Strategy};
use gateway::plugin::{
    Health, Label, Load, LoadedPolicy, PluginEngine, PluginWatcher, PluginsConfig, PolicyBinding,
    PolicyCandidate, PolicySlot, RouteRequest, Tier,
};
use gateway::pools::Worker;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Where the `policy_*.wasm` components are.
    #[arg(long, default_value = "target/wasm32-wasip2/release")]
    wasm_dir: PathBuf,
    /// Candidate counts to time a decision over.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 64, 256])]
    candidates: Vec<usize>,
    /// Timed calls per candidate count, built-in and pooled plugin.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Timed calls per candidate count with a fresh instance per call (slower).
    #[arg(long, default_value_t = 2_000)]
    fresh_calls: usize,
    /// New versions written into the watched directory, one after another.
    #[arg(long, default_value_t = 100)]
    swaps: usize,
    /// The watcher's poll interval; default: the gateway's default.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
}

/// Tokens per KV block, as the workers' default.
const BLOCK_SIZE: usize = 16;
/// Prompt length of the timed request, in blocks.
const PROMPT_BLOCKS: usize = 32;
const ZONES: [&str; 3] = ["a", "b", "c"];

struct Timing {
    p50_us: f64,
    p99_us: f64,
}

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let failover = read_wasm(&args.wasm_dir, "failover")?;
    let zone_affinity = read_wasm(&args.wasm_dir, "zone_affinity")?;
    let mut config = PluginsConfig::default();
    if let Some(ms) = args.poll_interval_ms {
        config.poll_interval_ms = ms;
    }
    let engine = PluginEngine::with_seed(&config, 1)?;
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
    let request = route_request();

    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for &n in &args.candidates {
        let plugin_candidates = plugin_candidates(n);
        let builtin_candidates = builtin_candidates(n);
        let routing = RoutingConfig {
            strategy: Strategy::Kv,
            ..RoutingConfig::default()
        };
        let builtin_request = gateway::policy::Request {
            prompt_blocks: PROMPT_BLOCKS,
            block_size: BLOCK_SIZE,
        };
        let mut rng = StdRng::seed_from_u64(n as u64);
        // `order` takes its candidates by value, as the request path hands
        // them over; the clone of n `Arc`s is part of the built-in's cost.
        let builtin = time(args.calls, || {
            let order = gateway::policy::order(
                black_box(builtin_candidates.clone()),
                &builtin_request,
                &routing,
                &mut rng,
                0,
            );
            black_box(order.len());
            Ok(())
        })?;
        let pooled = time(args.calls, || {
            black_box(policy.route(&request, black_box(&plugin_candidates))?);
            Ok(())
        })?;
        let pooled_baseline = time(args.calls, || {
            black_box(baseline.route(&request, black_box(&plugin_candidates))?);
            Ok(())
        })?;
        let fresh = time(args.fresh_calls, || {
            black_box(policy.route_fresh(&request, black_box(&plugin_candidates))?);
            Ok(())
        })?;
        // What building the plugin's input costs the gateway per request
        // (strings and labels per candidate), approximated by a deep clone.
        let inputs = time(args.calls, || {
            black_box(black_box(&plugin_candidates).clone());
            Ok(())
        })?;
        rows.push(vec![
            n.to_string(),
            us(&builtin),
            us(&pooled),
            us(&pooled_baseline),
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
            "plugin_fresh": {"p50_us": fresh.p50_us, "p99_us": fresh.p99_us},
            "input_clone_p50_us": inputs.p50_us,
        }));
    }

    let failover_kb = failover.len() / 1024;
    anyhow::ensure!(args.swaps > 0, "--swaps must be at least 1");
    let swap = swaps(&engine, &config, &args, [failover, zone_affinity])?;

    let pooled_64 = figures
        .iter()
        .find(|f| f["candidates"] == 64)
        .map(|f| f["plugin_pooled"]["p50_us"].as_f64().unwrap_or(f64::NAN));
    println!(
        "## bench policy\n\nLoading the `failover` component ({} KB: compile, link, `init`, sample \
         decisions), median of 5, uncontended: {:.1} ms at the baseline tier (Winch), {:.1} ms \
         at the optimized tier (cranelift).\n\nOne routing decision, single thread, per-call time \
         over {} calls ({} with a fresh instance): the built-in policy (`kv` strategy) against the \
         `failover` example plugin called on a recycled, initialised instance (the gateway's way; \
         optimized tier, and baseline tier for comparison) and on a fresh instance that runs `init` \
         first (optimized). The last column is the cost of building the plugin's input, which the \
         gateway pays on top.\n\n{}\n\
         Swaps: {} new versions written (write + rename) into the watched directory, polled every \
         {} ms, alternating two plugins so each is compiled; latency from the write to the slot \
         serving it (baseline tier), and to its optimized build serving, while another thread calls \
         the policy in a loop. Each version is written once the previous one is optimized, as \
         deploys minutes apart would be.\n\n{}\n\
         Goals: pooled p50 with 64 candidates under 20 µs: {}; swap p50 under 100 ms: {}; \
         no failed call: {}.\n",
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
                "plugin fresh p50 / p99",
                "input build p50",
            ],
            &rows
        ),
        swap.count,
        config.poll_interval_ms,
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
        verdict(pooled_64.map(|p50| p50 < 20.0)),
        verdict(Some(swap.p50_ms < 100.0)),
        verdict(Some(swap.failed() == 0)),
    );

    report::write_json(
        &out.join("policy.json"),
        &json!({
            "load_ms_p50": load_ms,
            "baseline_load_ms_p50": baseline_load_ms,
            "decision": figures,
            "swap": {
                "swaps": swap.count,
                "poll_interval_ms": config.poll_interval_ms,
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
            ("plugin, fresh instance", series("plugin_fresh")),
        ],
    )?;
    Ok(())
}

fn read_wasm(dir: &Path, plugin: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("policy_{plugin}.wasm"));
    std::fs::read(&path).map_err(|error| {
        anyhow::anyhow!(
            "reading {}: {error}; build the examples first: cargo build --release --target \
             wasm32-wasip2 -p policy-failover -p policy-zone-affinity",
            path.display()
        )
    })
}

/// Times each call on its own: a call takes microseconds, far above the
/// clock's ~25 ns, and per-call samples give honest tails.
fn time(calls: usize, mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Timing> {
    // Warm up: the first calls fill the instance pool and the caches.
    for _ in 0..(calls / 10).max(10) {
        call()?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls.max(1) {
        let start = Instant::now();
        call()?;
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

fn route_request() -> RouteRequest {
    RouteRequest {
        model: "llama-3-8b".to_string(),
        pool: "chat".to_string(),
        stream: true,
        prompt_tokens: (PROMPT_BLOCKS * BLOCK_SIZE) as u32,
        block_size: BLOCK_SIZE as u32,
        session_key: Some("session-42".to_string()),
        headers: vec![("x-tenant".to_string(), "acme".to_string())],
        gateway_zone: "a".to_string(),
        attempt: 1,
    }
}

/// `n` workers over three zones, two versions and two colours, with varied
/// load, overlap and score: deterministic, so runs compare.
fn plugin_candidates(n: usize) -> Vec<PolicyCandidate> {
    (0..n)
        .map(|i| PolicyCandidate {
            id: worker_id(i),
            zone: ZONES[i % ZONES.len()].to_string(),
            labels: vec![
                Label {
                    key: "version".to_string(),
                    value: if i % 4 == 0 { "v2" } else { "v1" }.to_string(),
                },
                Label {
                    key: "colour".to_string(),
                    value: if i % 2 == 0 { "blue" } else { "green" }.to_string(),
                },
            ],
            health: Health::Healthy,
            load: Load {
                in_flight: (i * 7 % 13) as u32,
                running: Some((i * 5 % 17) as u32),
                waiting: Some((i % 3) as u32),
                kv_blocks_used: Some((i * 37 % 1000) as u32),
                kv_blocks_total: Some(1000),
            },
            overlap_blocks: (i * 11 % PROMPT_BLOCKS) as u32,
            score: (i * 31 % 97) as f64 / 7.0,
        })
        .collect()
}

fn builtin_candidates(n: usize) -> Vec<Candidate> {
    let breaker = BreakerConfig::default();
    (0..n)
        .map(|i| {
            let zone = ZONES[i % ZONES.len()];
            let labels = BTreeMap::from([
                ("version".to_string(), "v1".to_string()),
                ("colour".to_string(), "blue".to_string()),
            ]);
            let worker = Worker::new(
                worker_id(i),
                "chat".to_string(),
                "http://127.0.0.1:1".parse().expect("a valid URI"),
                zone.to_string(),
                labels,
                &breaker,
            );
            Candidate {
                worker: Arc::new(worker),
                local: zone == "a",
                in_flight: (i * 7 % 13) as u32,
                load: None,
                overlap_blocks: (i * 11 % PROMPT_BLOCKS) as u32,
                pending_prefill: 0,
            }
        })
        .collect()
}

fn worker_id(i: usize) -> String {
    format!("worker-{i:03}")
}

struct Swaps {
    count: usize,
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
/// two components, and times each from the write to the slot serving it and
/// to its optimized build serving.
fn swaps(
    engine: &PluginEngine,
    config: &PluginsConfig,
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
        std::fs::rename(
            &staging,
            dir.join("routing").join(format!("{version}.wasm")),
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
        },
        slot.clone(),
    );
    anyhow::ensure!(watcher.poll_once() == 1, "the first version did not load");
    let handle = watcher.spawn(Duration::from_millis(config.poll_interval_ms));

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
    let caller = {
        let (slot, stop, calls, failures) =
            (slot.clone(), stop.clone(), calls.clone(), failures.clone());
        std::thread::spawn(move || {
            let request = route_request();
            let candidates = plugin_candidates(64);
            while !stop.load(Ordering::Relaxed) {
                let kind = match slot.current() {
                    None => Some("no policy"),
                    Some(policy) => policy.route(&request, &candidates).err().map(|e| e.kind()),
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
        let wanted = version.to_string();
        let mut served = false;
        loop {
            let info = slot.current().map(|p| p.info().clone());
            if let Some(info) = info.filter(|info| info.version == wanted) {
                if !served {
                    served = true;
                    latencies.push(start.elapsed().as_secs_f64() * 1e3);
                }
                if info.tier == Tier::Optimized {
                    optimized.push(start.elapsed().as_secs_f64() * 1e3);
                    break;
                }
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "version {version} was not served optimized within 30 s: {:?}",
                slot.status().last_refusal
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // Old versions would pile up in the listing; a deploy removes them too.
        std::fs::remove_file(dir.join("routing").join(format!("{}.wasm", version - 1)))?;
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
