//! `bench engine`: the `llama` engine on the real model (SmolLM2-135M-Instruct
//! by default): decode tokens/s at batch 1 and 8, prefill tokens/s, and the
//! time to first token of a prompt whose first 90% is in the prefix cache
//! against one with nothing cached. The machine's memory bandwidth is measured
//! in the same run, and batch-1 decode is shown against the bound it sets:
//! decode reads every weight and the sequence's KV once per token.
//!
//! The scheduler and compute are driven directly, step by step, as the engine
//! thread does, without end-of-sequence (so every run decodes exactly as many
//! tokens as asked) and without HTTP.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use workers::kv_cache::{KvCache, SeqId};
use workers::model::{load_weights, LlamaCompute};
use workers::scheduler::{NewSequence, Output, Sampling, Scheduler, SchedulerConfig};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or Hugging Face directory. Default: SmolLM2-135M-Instruct in
    /// `${LLMGW_MODELS:-~/.cache/llmgw/models}` (scripts/fetch-model.sh fetches it).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens generated per sequence in the decode runs.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Prompt length of the prefill and time-to-first-token runs. The default's
    /// first 90% is whole KV blocks (36 of 16 tokens), so exactly 90% is cached.
    #[arg(long, default_value_t = 640)]
    prompt_tokens: usize,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Size of the buffer the bandwidth is measured over: far beyond any cache.
    #[arg(long, default_value_t = 1024)]
    bandwidth_mib: usize,
}

const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 1024;
/// The batch-1 decode runs start from a prompt this long.
const DECODE_PROMPT: usize = 32;

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeats > 0, "--repeats must be > 0");
    let path = match args.model.clone() {
        Some(path) => path,
        None => default_model()?,
    };
    let weights = load_weights(&path).with_context(|| format!("loading {}", path.display()))?;
    let h = weights.hyper.clone();
    let weight_bytes = weights.decode_bytes();
    // f16 K and V, every layer.
    let kv_bytes_per_token = h.layers * 2 * h.kv_dim() * 2;
    // The most tokens held at once: a long prompt alone, or eight decoding sequences.
    let peak = (args.prompt_tokens + 1).max(8 * (DECODE_PROMPT + args.decode_tokens));
    anyhow::ensure!(
        peak <= NUM_BLOCKS * BLOCK_SIZE
            && args.prompt_tokens.max(DECODE_PROMPT + args.decode_tokens) < h.context_len,
        "--prompt-tokens or --decode-tokens is too large for this bench's KV cache"
    );
    anyhow::ensure!(args.decode_tokens >= 2, "--decode-tokens must be >= 2");
    let mut bench = Bench {
        scheduler: Scheduler::new(
            SchedulerConfig {
                max_running: 8,
                max_prefill_tokens_per_step: 8 * args.prompt_tokens.max(DECODE_PROMPT),
                max_model_len: h.context_len,
                eos_token: None,
            },
            KvCache::new(NUM_BLOCKS, BLOCK_SIZE),
        ),
        compute: LlamaCompute::new(weights, NUM_BLOCKS, BLOCK_SIZE),
        next_seq: 0,
    };
    let mut text = Text::new(&path, h.vocab)?;

    // Time to first token, on fresh prompts that share no block with earlier ones.
    let n = args.prompt_tokens;
    let (mut uncached, mut cached, mut cached_share) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..args.repeats {
        let prompt = text.prompt(n);
        uncached.push(bench.run(&[prompt], 1)[0].ttft);
        let prompt = text.prompt(n);
        bench.run(&[prompt[..n * 9 / 10].to_vec()], 1);
        let run = &bench.run(&[prompt], 1)[0];
        cached_share = run.cached as f64 / n as f64;
        cached.push(run.ttft);
    }
    let (uncached, cached) = (median(uncached), median(cached));
    let prefill_rate = n as f64 / uncached.as_secs_f64();

    let mut decode = |bench: &mut Bench, batch: usize| {
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| text.prompt(DECODE_PROMPT)).collect();
        let runs = bench.run(&prompts, args.decode_tokens);
        // From the last first token (every sequence decoding) to the last token.
        let start = runs.iter().map(|r| r.first_token_at).max().unwrap();
        let end = runs.iter().map(|r| r.last_token_at).max().unwrap();
        let tokens = (args.decode_tokens - 1) * batch;
        tokens as f64 / (end - start).as_secs_f64()
    };
    // Mean context over a batch-1 decode run: its KV read per token.
    let mean_context = DECODE_PROMPT + args.decode_tokens / 2;
    let bytes_per_token = weight_bytes + mean_context * kv_bytes_per_token;
    // The bandwidth is measured right before each batch-1 run and each run is
    // set against its own bound: on a shared machine the bandwidth a core
    // gets moves from minute to minute (31-57 GB/s seen on one VM).
    let (mut rates, mut bandwidths, mut fractions) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        let bandwidth = bandwidth_bytes_per_s(args.bandwidth_mib << 20);
        let rate = decode(&mut bench, 1);
        fractions.push(rate * bytes_per_token as f64 / bandwidth);
        rates.push(rate);
        bandwidths.push(bandwidth);
    }
    let (decode_1, bandwidth) = (median_f64(rates), median_f64(bandwidths));
    let fraction = median_f64(fractions);
    let decode_8 = median_f64((0..args.repeats).map(|_| decode(&mut bench, 8)).collect());
    let bound = bandwidth / bytes_per_token as f64;
    let ratio = cached.as_secs_f64() / uncached.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rows = vec![
        vec![
            "memory bandwidth (streaming read, all cores; before each batch-1 run)".into(),
            format!("{:.1} GB/s", bandwidth / 1e9),
            String::new(),
        ],
        vec![
            "bytes read per decode token (weights + KV)".into(),
            format!(
                "{:.1} MB ({:.1} + {:.1})",
                bytes_per_token as f64 / 1e6,
                weight_bytes as f64 / 1e6,
                (mean_context * kv_bytes_per_token) as f64 / 1e6
            ),
            String::new(),
        ],
        vec![
            "decode, batch 1".into(),
            format!("{decode_1:.1} tokens/s"),
            format!(
                "{:.0}% of the bandwidth bound (each run against its own; \
                 {bound:.0} tokens/s at the median bandwidth); goal ≥ 50%",
                100.0 * fraction
            ),
        ],
        vec![
            "decode, batch 8".into(),
            format!("{decode_8:.1} tokens/s"),
            format!("{:.2}x batch 1", decode_8 / decode_1),
        ],
        vec![
            format!("prefill, {n}-token prompt"),
            format!("{prefill_rate:.0} tokens/s"),
            String::new(),
        ],
        vec![
            "time to first token, nothing cached".into(),
            format!("{:.1} ms", ms(uncached)),
            String::new(),
        ],
        vec![
            format!("time to first token, {:.0}% cached", 100.0 * cached_share),
            format!("{:.1} ms", ms(cached)),
            format!("{:.0}% of uncached; goal ≤ 20%", 100.0 * ratio),
        ],
    ];
    println!(
        "## bench engine\n\n{} ({} layers, width {}), CPU backend, {} threads; median of {} runs; \
         decode runs generate {} tokens per sequence\n\n{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        h.layers,
        h.dim,
        threads(),
        args.repeats,
        args.decode_tokens,
        report::table(&["measure", "value", "against"], &rows)
    );
    report::write_json(
        &out.join("engine.json"),
        &json!({
            "model": path.display().to_string(),
            "threads": threads(),
            "bandwidth_gb_per_s": bandwidth / 1e9,
            "weight_bytes_per_token": weight_bytes,
            "kv_bytes_per_token_of_context": kv_bytes_per_token,
            "decode_bytes_per_token": bytes_per_token,
            "decode_batch1_tokens_per_s": decode_1,
            "decode_batch1_bound_tokens_per_s": bound,
            "decode_batch1_fraction_of_bound": fraction,
            "decode_batch8_tokens_per_s": decode_8,
            "prefill_tokens_per_s": prefill_rate,
            "prompt_tokens": n,
            "ttft_uncached_ms": ms(uncached),
            "ttft_cached_ms": ms(cached),
            "cached_share": cached_share,
            "ttft_cached_over_uncached": ratio,
        }),
    )?;
    report::bar_chart(
        &out.join("engine.png"),
        "Decode speed against the memory-bandwidth bound",
        "tokens/s",
        &["batch 1", "batch 8"],
        &[
            ("measured", vec![decode_1, decode_8]),
            ("bandwidth bound (batch 1)", vec![bound, 0.0]),
        ],
    )?;
    Ok(())
}

pub fn default_model() -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("LLMGW_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/llmgw/models"),
    };
    let path = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(
        path.is_file(),
        "{} is absent: run scripts/fetch-model.sh, or pass --model",
        path.display()
    );
    Ok(path)
}

/// One per core, as rayon's pool, which runs the model's matrix products, has.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Bytes per second of a streaming read over `bytes` of memory, split across
/// one thread per core: the best of several passes after one that faults the
/// pages in.
fn bandwidth_bytes_per_s(bytes: usize) -> f64 {
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let threads = threads();
    let chunk = buf.len().div_ceil(threads);
    let pass = || {
        let start = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(chunk) {
                s.spawn(move || {
                    // Eight independent sums, so the loop is load-bound, not add-bound.
                    let mut acc = [0u64; 8];
                    let (lanes, _) = part.as_chunks::<8>();
                    for lane in lanes {
                        for i in 0..8 {
                            acc[i] = acc[i].wrapping_add(lane[i]);
                        }
                    }
                    black_box(acc);
                });
            }
        });
        start.elapsed()
    };
    pass();
    let best = (0..10).map(|_| pass()).min().expect("ten passes");
    bytes as f64 / best.as_secs_f64()
}

/// Prompt tokens: the model's tokenization of the embedded English corpus,
/// read round and round from a different start for each prompt.
struct Text {
    tokens: Vec<u32>,
    prompts: usize,
}

/// Prompt `i` starts this many tokens after prompt `i - 1` (mod the corpus): a
/// prime, so starts repeat only after as many prompts as the corpus has tokens.
const STRIDE: usize = 97;

impl Text {
    fn new(model: &Path, vocab: usize) -> anyhow::Result<Text> {
        let tokenizer = prompt::load(model)?;
        let tokens = tokenizer.encode(prompt::CORPUS)?;
        anyhow::ensure!(
            tokens.len() > STRIDE && tokens.iter().all(|&t| (t as usize) < vocab),
            "the model's tokenizer does not fit its vocabulary"
        );
        Ok(Text { tokens, prompts: 0 })
    }

    /// The next prompt of `len` tokens. Its first block differs from every
    /// earlier prompt's, so none of it is in the prefix cache.
    fn prompt(&mut self, len: usize) -> Vec<u32> {
        let n = self.tokens.len();
        let start = self.prompts * STRIDE % n;
        self.prompts += 1;
        (start..start + len).map(|i| self.tokens[i % n]).collect()
    }
}

/// One sequence's timings.
struct Run {
    ttft: Duration,
    first_token_at: Instant,
    last_token_at: Instant,
    cached: usize,
}

struct Bench {
    scheduler: Scheduler,
    compute: LlamaCompute,
    next_seq: u64,
}

impl Bench {
    /// Runs `prompts` together, greedy, `max_tokens` each, to completion.
    fn run(&mut self, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Run> {
        let start = Instant::now();
        let mut ids = Vec::new();
        for prompt in prompts {
            let id = SeqId(self.next_seq);
            self.next_seq += 1;
            self.scheduler.add(NewSequence {
                id,
                prompt: prompt.clone(),
                resumed: Vec::new(),
                max_tokens,
                seed: 0,
                sampling: Sampling {
                    temperature: 0.0,
                    ..Sampling::default()
                },
                after: None,
            });
            ids.push(id);
        }
        let mut first: HashMap<SeqId, Instant> = HashMap::new();
        let mut last: HashMap<SeqId, Instant> = HashMap::new();
        let mut cached: HashMap<SeqId, usize> = HashMap::new();
        while !self.scheduler.is_idle() {
            let outputs = self.scheduler.step(&mut self.compute);
            let now = Instant::now();
            for output in outputs {
                match output {
                    Output::Admitted { seq, cached_tokens } => {
                        cached.insert(seq, cached_tokens);
                    }
                    Output::Token { seq, .. } => {
                        first.entry(seq).or_insert(now);
                        last.insert(seq, now);
                    }
                    Output::Finished { .. } => {}
                }
            }
        }
        ids.iter()
            .map(|id| Run {
                ttft: first[id] - start,
                first_token_at: first[id],
                last_token_at: last[id],
                cached: cached.get(id).copied().unwrap_or(0),
            })
            .collect()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
