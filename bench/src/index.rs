//! `bench index`: how fast the prefix index takes KV events and answers
//! "how many leading blocks of this prompt does each worker hold", exact and
//! approximate, on synthetic pools, and how much memory it holds. Events are
//! applied as our workers send them, and as vLLM sends them over ZeroMQ
//! (msgpack decoded and each block rehashed from its token ids first).
//! Workloads are built before the clock starts and seeded, so runs compare.

use std::collections::{HashSet, VecDeque};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use gateway::index::{Applied, ApproxIndex, IndexStats, PrefixIndex};
use gateway::rehash::Rehash;
use protocol::engine_kv::{self, EngineBatch, EngineHash};
use protocol::{BlockHash, KvEvent, KvEventBatch};
use serde_json::json;

use crate::memory;
use crate::report;
use crate::routing::zmq::vllm_event;

#[derive(clap::Args)]
pub struct Args {
    /// Block events (blocks stored plus blocks removed) in the apply workload.
    #[arg(long, default_value_t = 4_000_000)]
    events: usize,
    /// Workers publishing events in the apply workload.
    #[arg(long, default_value_t = 64)]
    event_workers: usize,
    /// KV capacity of each simulated worker in blocks; beyond it the oldest are removed.
    #[arg(long, default_value_t = 8192)]
    worker_blocks: usize,
    /// Rounds of the apply workload, each on a fresh index; the median rate is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Prompt length in blocks for lookups (256 blocks of 16 tokens: a 4k-token prompt).
    #[arg(long, default_value_t = 256)]
    prompt_blocks: usize,
    /// Pool sizes to time lookups over.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 64, 256])]
    worker_counts: Vec<usize>,
    /// Unrelated blocks each worker holds besides the prompts', so the index is cache-sized.
    #[arg(long, default_value_t = 4096)]
    background_blocks: usize,
    /// Lookups timed per pool size and index kind.
    #[arg(long, default_value_t = 40_000)]
    lookups: usize,
}

/// Lookups per clock reading: a lookup takes microseconds, so the timer's
/// ~25 ns stays under 1% while percentiles still see slow stretches.
const LOOKUPS_PER_SAMPLE: usize = 8;
/// Tokens per block, as the workers' default.
const BLOCK_SIZE: usize = 16;
/// Distinct prompts looked up in turn, so one prompt's blocks do not sit in L1.
const PROMPTS: usize = 64;
/// Blocks of the system prompts that begin every prompt.
const SYSTEM_BLOCKS: usize = 32;
const SYSTEMS: usize = 4;

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let (batches, events) = event_workload(&args);
    let payloads = zmq_workload(&batches, args.event_workers.max(1));
    let json: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| serde_json::to_vec(b).expect("a batch serializes"))
        .collect();
    let in_order = |applied: Applied| {
        anyhow::ensure!(
            matches!(applied, Applied::Ok | Applied::NewInstance),
            "a batch was not applied in order: {applied:?}"
        );
        Ok(())
    };
    let ours = time_apply(&args, events, |index| {
        for batch in &batches {
            in_order(index.apply(black_box(batch)))?;
        }
        Ok(())
    })?;
    let bus = time_apply(&args, events, |index| {
        for payload in &json {
            let batch: KvEventBatch = serde_json::from_slice(black_box(payload))?;
            in_order(index.apply(&batch))?;
        }
        Ok(())
    })?;
    let zmq = time_apply(&args, events, |index| {
        let mut rehash: Vec<Rehash> = (0..args.event_workers.max(1))
            .map(|w| Rehash::new(&format!("w{w}"), BLOCK_SIZE, 2 * args.worker_blocks, 1))
            .collect();
        for (w, payload) in &payloads {
            let batch = engine_kv::decode(black_box(payload))?;
            let rehashed = rehash[*w].rehash(&batch);
            in_order(index.apply(&rehashed.batch))?;
        }
        Ok(rehash)
    })?;
    let mut lookups = Vec::new();
    for &workers in &args.worker_counts {
        let pool = Pool::new(&args, workers);
        let exact = pool.exact(&args);
        let (approx, now) = pool.approx();
        lookups.push(time_lookups("exact", workers, &args, &pool, |p| {
            exact.overlaps(p).len()
        }));
        lookups.push(time_lookups("approx", workers, &args, &pool, |p| {
            approx.overlaps(p, now).len()
        }));
    }

    let apply_rows: Vec<Vec<String>> = [
        ("applied, decoded already", &ours),
        ("ours, JSON over the bus", &bus),
        ("vLLM's, msgpack over ZeroMQ, rehashed", &zmq),
    ]
    .iter()
    .map(|(path, a)| {
        vec![
            path.to_string(),
            format!("{} workers, {} batches", args.event_workers, batches.len()),
            events.to_string(),
            format!("**{:.2} M/s**", a.events_per_s / 1e6),
            a.stats.blocks.to_string(),
            a.stats.entries.to_string(),
            format!("{:.0} MiB", a.bytes as f64 / (1 << 20) as f64),
            format!("{:.0}", a.bytes as f64 / a.stats.entries.max(1) as f64),
        ]
    })
    .collect();
    let lookup_rows: Vec<Vec<String>> = lookups
        .iter()
        .map(|l| {
            vec![
                l.index.to_string(),
                l.workers.to_string(),
                format!("{:.2} µs", l.p50_us),
                format!("{:.2} µs", l.p99_us),
                format!("{:.1}", l.workers_found),
            ]
        })
        .collect();
    println!(
        "## bench index\n\nApply: one thread, median of {} rounds on a fresh index; an event is one block stored \
         or removed; batches of 1–16-block Stored events over {} shared system prompts and unique suffixes, \
         with each worker removing its oldest blocks beyond {} blocks. Memory: heap bytes the index holds \
         after the workload (over ZeroMQ, with the engine-to-gateway hash maps).\n\n{}\n\
         Lookups: a {}-block prompt ({} tokens), {} prompts in turn, per-lookup time over samples of {} lookups; \
         every worker holds {} background blocks, most hold the prompt's {}-block system prefix, \
         an eighth hold a longer prefix and one the whole prompt.\n\n{}",
        args.rounds.max(1),
        SYSTEMS * 8,
        args.worker_blocks,
        report::table(
            &[
                "events",
                "workload",
                "block events",
                "events/s",
                "blocks",
                "(block, worker) entries",
                "memory",
                "bytes per entry"
            ],
            &apply_rows
        ),
        args.prompt_blocks,
        args.prompt_blocks * BLOCK_SIZE,
        PROMPTS,
        LOOKUPS_PER_SAMPLE,
        args.background_blocks,
        SYSTEM_BLOCKS,
        report::table(
            &["index", "workers", "p50", "p99", "workers with overlap"],
            &lookup_rows
        ),
    );

    let figures = json!({
        "apply": {
            "events": events,
            "batches": batches.len(),
            "workers": args.event_workers,
            "worker_blocks": args.worker_blocks,
            "rounds": args.rounds.max(1),
            "events_per_s": ours.events_per_s,
            "blocks": ours.stats.blocks,
            "entries": ours.stats.entries,
            "bytes": ours.bytes,
        },
        "apply_bus_json": {
            "events_per_s": bus.events_per_s,
        },
        "apply_zmq": {
            "events_per_s": zmq.events_per_s,
            "entries": zmq.stats.entries,
            "bytes": zmq.bytes,
        },
        "prompt_blocks": args.prompt_blocks,
        "background_blocks": args.background_blocks,
        "lookups": lookups.iter().map(|l| json!({
            "index": l.index,
            "workers": l.workers,
            "p50_us": l.p50_us,
            "p99_us": l.p99_us,
            "workers_found": l.workers_found,
        })).collect::<Vec<_>>(),
    });
    report::write_json(&out.join("index.json"), &figures)?;
    let categories: Vec<String> = args
        .worker_counts
        .iter()
        .map(|w| format!("{w} workers"))
        .collect();
    let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
    let series = |index: &str, p99: bool| -> Vec<f64> {
        lookups
            .iter()
            .filter(|l| l.index == index)
            .map(|l| if p99 { l.p99_us } else { l.p50_us })
            .collect()
    };
    report::bar_chart(
        &out.join("index.png"),
        &format!(
            "Prefix index lookup, {}-token prompt",
            args.prompt_blocks * BLOCK_SIZE
        ),
        "lookup (µs)",
        &categories,
        &[
            ("exact p50", series("exact", false)),
            ("exact p99", series("exact", true)),
            ("approx p50", series("approx", false)),
            ("approx p99", series("approx", true)),
        ],
    )?;
    println!(
        "wrote {} and {}",
        out.join("index.json").display(),
        out.join("index.png").display()
    );
    Ok(())
}

struct Lookups {
    index: &'static str,
    workers: usize,
    p50_us: f64,
    p99_us: f64,
    /// Mean number of workers with a nonzero overlap: the answers are not empty.
    workers_found: f64,
}

/// Applying one event workload, `rounds` times on a fresh index.
struct Apply {
    /// The median round's rate.
    events_per_s: f64,
    stats: IndexStats,
    /// Heap bytes held after the first round: the index and what `apply` kept.
    bytes: usize,
}

fn time_apply<T>(
    args: &Args,
    events: usize,
    apply: impl Fn(&mut PrefixIndex) -> anyhow::Result<T>,
) -> anyhow::Result<Apply> {
    let (mut rates, mut bytes, mut stats) = (Vec::new(), None, None);
    for _ in 0..args.rounds.max(1) {
        let before = memory::live_bytes();
        let mut index = PrefixIndex::new(BLOCK_SIZE, 2 * args.worker_blocks);
        let start = Instant::now();
        let kept = apply(&mut index)?;
        let elapsed = start.elapsed();
        bytes.get_or_insert(memory::live_bytes().saturating_sub(before));
        drop(kept);
        rates.push(events as f64 / elapsed.as_secs_f64());
        stats = Some(index.stats());
    }
    Ok(Apply {
        events_per_s: percentile(&mut rates, 0.5),
        stats: stats.expect("at least one round"),
        bytes: bytes.expect("at least one round"),
    })
}

/// The workload's batches as a vLLM engine would publish them (worker,
/// msgpack payload): each block with its parent and 16 token ids.
fn zmq_workload(batches: &[KvEventBatch], workers: usize) -> Vec<(usize, Vec<u8>)> {
    let tokens = |h: &BlockHash| -> Vec<u32> {
        let mut rng = Rng(h.0);
        (0..BLOCK_SIZE)
            .map(|_| (rng.next() % 49_152) as u32)
            .collect()
    };
    let engine = |h: &BlockHash| EngineHash(h.0);
    batches
        .iter()
        .map(|batch| {
            let w: usize = batch.worker_id[1..].parse().expect("worker ids are w{n}");
            assert!(w < workers);
            let events = batch
                .events
                .iter()
                .filter_map(|e| vllm_event(e, BLOCK_SIZE, engine, |h| Some(tokens(h))))
                .collect();
            let batch = EngineBatch {
                ts: 0.0,
                events,
                data_parallel_rank: None,
            };
            (w, engine_kv::encode(&batch))
        })
        .collect()
}

fn time_lookups(
    index: &'static str,
    workers: usize,
    args: &Args,
    pool: &Pool,
    lookup: impl Fn(&[BlockHash]) -> usize,
) -> Lookups {
    // Warm caches and the allocator before the clock starts.
    for prompt in &pool.prompts {
        black_box(lookup(black_box(prompt)));
    }
    let samples = (args.lookups / LOOKUPS_PER_SAMPLE).max(1);
    let mut per_lookup_us = Vec::with_capacity(samples);
    let mut found = 0usize;
    for s in 0..samples {
        let start = Instant::now();
        for i in 0..LOOKUPS_PER_SAMPLE {
            let prompt = &pool.prompts[(s * LOOKUPS_PER_SAMPLE + i) % PROMPTS];
            found += lookup(black_box(prompt));
        }
        per_lookup_us.push(start.elapsed().as_secs_f64() * 1e6 / LOOKUPS_PER_SAMPLE as f64);
    }
    Lookups {
        index,
        workers,
        p50_us: percentile(&mut per_lookup_us, 0.5),
        p99_us: percentile(&mut per_lookup_us, 0.99),
        workers_found: found as f64 / (samples * LOOKUPS_PER_SAMPLE) as f64,
    }
}

/// A pool's caches for the lookup benchmark: what each worker holds, and the prompts.
struct Pool {
    prompts: Vec<Vec<BlockHash>>,
    /// Per worker, the block chains it holds.
    holds: Vec<Vec<Vec<BlockHash>>>,
}

impl Pool {
    fn new(args: &Args, workers: usize) -> Pool {
        let mut rng = Rng(workers as u64);
        let systems: Vec<Vec<BlockHash>> = (0..SYSTEMS)
            .map(|_| chain(&mut rng, None, SYSTEM_BLOCKS))
            .collect();
        let prompts: Vec<Vec<BlockHash>> = (0..PROMPTS)
            .map(|p| {
                let system = &systems[p % SYSTEMS];
                let mut prompt = system.clone();
                let rest = args.prompt_blocks.saturating_sub(SYSTEM_BLOCKS);
                prompt.extend(chain(&mut rng, system.last().copied(), rest));
                prompt.truncate(args.prompt_blocks);
                prompt
            })
            .collect();
        let mut holds: Vec<Vec<Vec<BlockHash>>> = (0..workers)
            .map(|_| {
                let mut held = vec![chain(&mut rng, None, args.background_blocks)];
                held.extend(systems.iter().filter(|_| rng.below(10) < 9).cloned());
                held
            })
            .collect();
        for prompt in &prompts {
            let longer = (workers / 8).max(1);
            for _ in 0..longer {
                let len = SYSTEM_BLOCKS + rng.below(prompt.len().saturating_sub(SYSTEM_BLOCKS) + 1);
                holds[rng.below(workers)].push(prompt[..len.min(prompt.len())].to_vec());
            }
            holds[rng.below(workers)].push(prompt.clone());
        }
        Pool { prompts, holds }
    }

    fn exact(&self, args: &Args) -> PrefixIndex {
        let cap = args.background_blocks + PROMPTS * args.prompt_blocks + SYSTEMS * SYSTEM_BLOCKS;
        let mut index = PrefixIndex::new(BLOCK_SIZE, cap);
        for (w, chains) in self.holds.iter().enumerate() {
            let mut events = vec![KvEvent::Cleared];
            events.extend(chains.iter().map(|hashes| KvEvent::Stored {
                parent: None,
                hashes: hashes.clone(),
            }));
            let applied = index.apply(&KvEventBatch {
                worker_id: format!("w{w}"),
                instance: 1,
                id: 1,
                events,
            });
            assert_eq!(applied, Applied::NewInstance, "setup batch of w{w}");
        }
        index
    }

    /// The same holdings as the gateway's own record of where it sent them.
    fn approx(&self) -> (ApproxIndex, Instant) {
        let now = Instant::now();
        let mut index = ApproxIndex::new(Duration::from_secs(3600), usize::MAX);
        for (w, chains) in self.holds.iter().enumerate() {
            for hashes in chains {
                index.record(&format!("w{w}"), hashes, now);
            }
        }
        (index, now)
    }
}

/// Event batches of `args.event_workers` simulated workers, interleaved as they
/// would arrive, and the number of block events in them.
fn event_workload(args: &Args) -> (Vec<KvEventBatch>, usize) {
    struct Sim {
        next_id: u64,
        /// Oldest first: the next to be removed when over capacity.
        order: VecDeque<BlockHash>,
        held: HashSet<BlockHash>,
    }
    let mut rng = Rng(42);
    let systems: Vec<Vec<BlockHash>> = (0..SYSTEMS * 8)
        .map(|_| {
            let len = 8 + rng.below(57);
            chain(&mut rng, None, len)
        })
        .collect();
    let mut sims: Vec<Sim> = (0..args.event_workers.max(1))
        .map(|_| Sim {
            next_id: 1,
            order: VecDeque::new(),
            held: HashSet::new(),
        })
        .collect();
    let (mut batches, mut events) = (Vec::new(), 0);
    while events < args.events {
        let w = rng.below(sims.len());
        let sim = &mut sims[w];
        // A request: a shared system prompt (most of the time) and a unique suffix.
        let mut blocks = if rng.below(10) < 7 {
            systems[rng.below(systems.len())].clone()
        } else {
            Vec::new()
        };
        let suffix = 1 + rng.below(48);
        blocks.extend(chain(&mut rng, blocks.last().copied(), suffix));
        // Each new block with the one before it in the prompt, which an
        // engine names as the parent of the first block of an event.
        let new: Vec<(Option<BlockHash>, BlockHash)> = blocks
            .iter()
            .enumerate()
            .filter(|(_, h)| sim.held.insert(**h))
            .map(|(i, h)| (i.checked_sub(1).map(|p| blocks[p]), *h))
            .collect();
        sim.order.extend(new.iter().map(|(_, h)| *h));
        let mut batch_events = if sim.next_id == 1 {
            vec![KvEvent::Cleared]
        } else {
            Vec::new()
        };
        for chunk in chunks(&mut rng, &new) {
            events += chunk.len();
            batch_events.push(KvEvent::Stored {
                parent: chunk[0].0,
                hashes: chunk.iter().map(|(_, h)| *h).collect(),
            });
        }
        let mut evicted = Vec::new();
        while sim.order.len() > args.worker_blocks {
            let oldest = sim.order.pop_front().expect("over capacity");
            sim.held.remove(&oldest);
            evicted.push(oldest);
        }
        for chunk in chunks(&mut rng, &evicted) {
            events += chunk.len();
            batch_events.push(KvEvent::Removed {
                hashes: chunk.to_vec(),
            });
        }
        batches.push(KvEventBatch {
            worker_id: format!("w{w}"),
            instance: 1,
            id: sim.next_id,
            events: batch_events,
        });
        sim.next_id += 1;
    }
    (batches, events)
}

/// Splits blocks into events of 1 to 16 hashes, as an engine storing a step's blocks would.
fn chunks<'a, T>(rng: &mut Rng, blocks: &'a [T]) -> Vec<&'a [T]> {
    let mut out = Vec::new();
    let mut rest = blocks;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at((1 + rng.below(16)).min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

/// `len` chained block hashes after `parent`. Random stand-ins for
/// `protocol::block_hashes`: the index only needs distinct, well-mixed values.
fn chain(rng: &mut Rng, parent: Option<BlockHash>, len: usize) -> Vec<BlockHash> {
    let mut last = parent.map_or(0, |p| p.0);
    (0..len)
        .map(|_| {
            last = Rng(last ^ rng.next()).next();
            BlockHash(last)
        })
        .collect()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// splitmix64: a seeded generator, so every run builds the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` for a workload (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
