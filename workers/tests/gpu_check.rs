//! The CUDA backend against the CPU one, packed by `scripts/gpu-check.sh pack`
//! into a kit that runs on a bare CUDA machine (`scripts/gpu-check.sh run`):
//! the kit's models are written here (`kit_models`), the checks that need a
//! device are ignored by default (they show as such without one).
//!
//! - Parity: the scheduler drives both backends through the same steps
//!   (chunked prefills of prompts past 128 positions, so attention runs over
//!   several tiles; prefix-cache sharing; batched decodes) and every sampled
//!   row's logits are compared.
//! - Greedy text: the engine on each backend answers the same prompts.
//! - Throughput: prefill and decode tokens/s at batch 1 and 8 on a random
//!   model of SmolLM2-135M's shape, on both backends.
#![cfg(feature = "cuda")]

// The shared generator; this file needs neither its f32 export nor all its helpers.
#[allow(dead_code)]
mod model_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use model_support::HfDtype;
use workers::engine::{BatchEngine, Engine, GenerateEvent, GenerateRequest};
use workers::kv_cache::{KvCache, SeqId};
use workers::model::cuda::CudaCompute;
use workers::model::{load_weights, Forward};
use workers::scheduler::{
    Compute, NewSequence, Output, Phase, Sampled, Sampling, Scheduler, SchedulerConfig, StepPlan,
};
use workers::{Backend, EngineConfig, EngineKind};

/// The kit's models: the tiny model as quantized GGUF, f16 and bf16.
const MODELS: [&str; 3] = ["tiny-q.gguf", "tiny-f16", "tiny-bf16"];

/// Where the kit keeps its models: `$LLMGW_GPU_KIT/models`, else a fresh
/// temporary folder.
fn models_dir() -> PathBuf {
    match std::env::var_os("LLMGW_GPU_KIT") {
        Some(kit) => PathBuf::from(kit).join("models"),
        None => std::env::temp_dir().join(format!("gpu-kit-{}", std::process::id())),
    }
}

/// Writes the kit's models into `dir`, unless they are there.
fn write_models(dir: &Path) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = MODELS.iter().map(|m| dir.join(m)).collect();
    if paths.iter().all(|p| p.exists()) {
        return paths;
    }
    std::fs::create_dir_all(dir).unwrap();
    let trained = model_support::train_tokenizer();
    let gguf = model_support::write_tiny_model(&trained, "kit");
    std::fs::copy(&gguf, &paths[0]).unwrap();
    std::fs::remove_file(gguf).unwrap();
    for (dtype, to) in [(HfDtype::F16, &paths[1]), (HfDtype::BF16, &paths[2])] {
        let written = model_support::write_tiny_hf(&trained, "kit-hf", dtype);
        std::fs::create_dir_all(to).unwrap();
        for file in std::fs::read_dir(&written).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
        std::fs::remove_dir_all(written).unwrap();
    }
    paths
}

/// Prompts past 128 positions that share their first 192 tokens, so a later
/// one finds twelve of its blocks in the prefix cache.
fn long_prompts(model: &Path) -> Vec<Vec<u32>> {
    let text = prompt::load(model).unwrap().encode(prompt::CORPUS).unwrap();
    assert!(text.len() > 700, "the corpus is long enough");
    (0..4)
        .map(|i| {
            let mut p = text[..192].to_vec();
            p.extend(&text[192 + i * 100..300 + i * 100]);
            p
        })
        .collect()
}

/// The kit's models load and compute on the CPU over a prompt past 128 positions.
#[test]
fn kit_models() {
    let dir = models_dir();
    let paths = write_models(&dir);
    let mut rows = Vec::new();
    for path in &paths {
        let weights = load_weights(path).unwrap();
        let prompt = &long_prompts(path)[0];
        let blocks: Vec<u32> = (0..prompt.len().div_ceil(16) as u32).collect();
        let step = StepPlan {
            items: vec![model_support::plan_item(
                1,
                Phase::Prefill,
                prompt,
                0,
                &blocks,
                0.0,
            )],
        };
        let logits = Forward::new(weights, blocks.len(), 16).run(&step).remove(0);
        assert!(logits.iter().all(|l| l.is_finite()), "{}", path.display());
        rows.push(logits);
    }
    // The f16 and bf16 exports hold the same values, rounded differently.
    let diff = rows[1]
        .iter()
        .zip(&rows[2])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = rows[1].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(diff < 0.1 * scale.max(1.0), "f16 and bf16 differ by {diff}");
    if std::env::var_os("LLMGW_GPU_KIT").is_none() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Fails with the driver's own reason when CUDA cannot run here.
fn require_cuda() {
    if let Err(why) = workers::model::cuda::available() {
        let mut why: &dyn std::error::Error = &why;
        let mut reason = why.to_string();
        while let Some(source) = why.source() {
            reason = format!("{reason}: {source}");
            why = source;
        }
        panic!("CUDA unavailable: {reason}");
    }
}

/// Both backends through the same steps: the CPU's logits pick the greedy
/// token, and every sampled row of the GPU's is compared with them.
struct Twin {
    cpu: Forward,
    gpu: CudaCompute,
    /// Largest |difference| over the largest |logit| of its row.
    worst: f32,
    rows: usize,
}

impl Compute for Twin {
    fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
        let cpu = self.cpu.run(plan);
        let gpu = self.gpu.run(plan).unwrap();
        assert_eq!(cpu.len(), gpu.len());
        cpu.iter()
            .zip(&gpu)
            .map(|(c, g)| {
                let diff = c
                    .iter()
                    .zip(g)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
                self.worst = self.worst.max(diff / scale);
                self.rows += 1;
                let token = (0..c.len()).max_by(|&a, &b| c[a].total_cmp(&c[b]).then(b.cmp(&a)));
                Sampled {
                    token: token.unwrap() as u32,
                    logprobs: None,
                }
            })
            .collect()
    }
}

fn scheduler(num_blocks: usize, prefill_budget: usize, max_model_len: usize) -> Scheduler {
    Scheduler::new(
        SchedulerConfig {
            max_running: 8,
            max_prefill_tokens_per_step: prefill_budget,
            max_model_len,
            eos_token: None,
        },
        KvCache::new(num_blocks, 16),
    )
}

fn greedy() -> Sampling {
    Sampling {
        temperature: 0.0,
        ..Sampling::default()
    }
}

/// One row of the printed table.
fn row(check: &str, model: &str, value: String) {
    println!("| {check} | {model} | {value} |");
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_check() {
    require_cuda();
    let started = Instant::now();
    let paths = write_models(&models_dir());
    println!("| check | model | result |\n|---|---|---|");
    for (path, name) in paths.iter().zip(MODELS) {
        parity(path, name);
        greedy_text(path, name);
    }
    throughput();
    println!("\nall checks in {:.1} s", started.elapsed().as_secs_f64());
}

/// Logits of both backends over chunked prefills past 128 positions, a
/// prefix shared through the cache, and batched decodes.
fn parity(path: &Path, name: &str) {
    let weights = load_weights(path).unwrap();
    let prompts = long_prompts(path);
    let blocks = 128;
    let mut twin = Twin {
        cpu: Forward::new(load_weights(path).unwrap(), blocks, 16),
        gpu: CudaCompute::new(&weights, blocks, 16).unwrap(),
        worst: 0.0,
        rows: 0,
    };
    // 96 prompt tokens a step: each prompt prefills over several steps.
    let mut s = scheduler(blocks, 96, 512);
    for (i, prompt) in prompts.iter().enumerate() {
        s.add(NewSequence {
            id: SeqId(i as u64),
            prompt: prompt.clone(),
            resumed: Vec::new(),
            max_tokens: 24,
            seed: 0,
            sampling: greedy(),
            after: None,
        });
    }
    let mut cached = 0;
    while !s.is_idle() {
        for out in s.step(&mut twin) {
            if let Output::Admitted { cached_tokens, .. } = out {
                cached += cached_tokens;
            }
        }
    }
    assert!(cached >= 192, "the shared prefix came from the cache");
    row(
        "logits: max abs diff / max abs logit",
        name,
        format!("{:.2e} over {} rows", twin.worst, twin.rows),
    );
    // f16 weights and activations against f32: a few parts in a thousand.
    assert!(twin.worst < 2e-2, "{name}: logits differ by {}", twin.worst);
}

/// The engine on each backend answers the same chat prompts, greedily, with
/// the same text: plainly (an argmax on the device), and with penalties, a
/// bias and log probabilities (the logits copied to the host's sampler).
fn greedy_text(path: &Path, name: &str) {
    let tok = prompt::load(path).unwrap();
    let adjusted = Sampling {
        presence_penalty: 0.5,
        frequency_penalty: 0.3,
        logit_bias: vec![(40, 1.5)].into(),
        logprobs: Some(4),
        ..greedy()
    };
    for (how, sampling) in [("plain", greedy()), ("penalties, bias, logprobs", adjusted)] {
        let answers = |backend: Backend| {
            let config = EngineConfig {
                kind: EngineKind::Llama,
                backend,
                model_path: Some(path.to_path_buf()),
                num_blocks: 128,
                max_model_len: 512,
                ..EngineConfig::default()
            };
            let engine = BatchEngine::start(&config, &tok).unwrap();
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let questions = [
                "rain at noon",
                "the network is turning",
                "a quiet town",
                "2024",
            ];
            let receivers: Vec<_> = questions
                .iter()
                .map(|q| {
                    let message = protocol::openai::ChatMessage::new("user", *q);
                    engine.submit(GenerateRequest {
                        prompt: prompt::chat_tokens(&[message], &tok).unwrap(),
                        resumed: Vec::new(),
                        max_tokens: 32,
                        seed: None,
                        sampling: sampling.clone(),
                    })
                })
                .collect();
            runtime.block_on(async {
                let mut out = Vec::new();
                for mut events in receivers {
                    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
                    while let Some(event) = events.recv().await {
                        if let GenerateEvent::Token { id, logprobs: lp } = event {
                            ids.push(id);
                            logprobs.extend(lp.map(|lp| lp.logprob));
                        }
                    }
                    out.push((tok.decode(&ids).unwrap(), logprobs));
                }
                out
            })
        };
        let (cpu, gpu) = (answers(Backend::Cpu), answers(Backend::Cuda));
        let same = cpu.iter().zip(&gpu).filter(|(a, b)| a.0 == b.0).count();
        let worst = cpu
            .iter()
            .zip(&gpu)
            .flat_map(|(a, b)| a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()))
            .fold(0.0f32, f32::max);
        row(
            &format!("greedy text ({how}) equal to the CPU's"),
            name,
            format!("{same} of {}; max abs logprob diff {worst:.1e}", cpu.len()),
        );
        assert_eq!(same, cpu.len(), "{name} ({how}): greedy answers differ");
        assert!(
            worst < 2e-2,
            "{name} ({how}): log probabilities differ by {worst}"
        );
    }
}

/// A random model of SmolLM2-135M's shape as an f16 Hugging Face directory
/// (weights only: throughput needs no tokenizer).
fn smollm2_shaped() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpu-kit-smollm2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (dim, layers, heads, kv_heads, ffn, vocab) = (576, 30, 9, 3, 1536, 49152);
    let hd = dim / heads;
    let mut noise = model_support::Noise(11);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, mean: f32, std: f32| {
        let n = shape.iter().product();
        let bytes = noise
            .vec(n, mean, std)
            .into_iter()
            .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![vocab, dim],
        0.0,
        0.02,
    );
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        for (name, rows, cols) in [
            ("self_attn.q_proj", heads * hd, dim),
            ("self_attn.k_proj", kv_heads * hd, dim),
            ("self_attn.v_proj", kv_heads * hd, dim),
            ("self_attn.o_proj", dim, heads * hd),
            ("mlp.gate_proj", ffn, dim),
            ("mlp.up_proj", ffn, dim),
            ("mlp.down_proj", dim, ffn),
        ] {
            push(p(name), vec![rows, cols], 0.0, 1.0 / (cols as f32).sqrt());
        }
        push(p("input_layernorm"), vec![dim], 1.0, 0.1);
        push(p("post_attention_layernorm"), vec![dim], 1.0, 0.1);
    }
    push("model.norm.weight".into(), vec![dim], 1.0, 0.1);
    let views = tensors.iter().map(|(name, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), bytes);
        (name.clone(), view.unwrap())
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": dim, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": ffn, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
        "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float16",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// Prefill and decode tokens/s at batch 1 and 8, each backend alone.
fn throughput() {
    let dir = smollm2_shaped();
    let (prompt_len, decode): (usize, usize) = (512, 64);
    for backend in ["cuda", "cpu"] {
        for batch in [1, 8] {
            let blocks = batch * (prompt_len + decode).div_ceil(16) + 8;
            let weights = load_weights(&dir).unwrap();
            let mut compute: Box<dyn Compute> = match backend {
                "cuda" => Box::new(CudaCompute::new(&weights, blocks, 16).unwrap()),
                _ => Box::new(workers::model::LlamaCompute::new(weights, blocks, 16)),
            };
            let mut s = scheduler(blocks, batch * prompt_len, prompt_len + decode + 1);
            for i in 0..batch {
                s.add(NewSequence {
                    id: SeqId(i as u64),
                    // Distinct prompts: nothing comes from the prefix cache.
                    prompt: (0..prompt_len as u32)
                        .map(|t| (t * 7 + i as u32 * 131) % 49152)
                        .collect(),
                    resumed: Vec::new(),
                    max_tokens: decode,
                    seed: 0,
                    sampling: greedy(),
                    after: None,
                });
            }
            let (mut prefill, mut decoding) = (Duration::ZERO, Duration::ZERO);
            let mut first = true;
            while !s.is_idle() {
                let t = Instant::now();
                s.step(compute.as_mut());
                if first {
                    prefill = t.elapsed();
                    first = false;
                } else {
                    decoding += t.elapsed();
                }
            }
            let prefill_rate = (batch * prompt_len) as f64 / prefill.as_secs_f64();
            let decode_rate = (batch * (decode - 1)) as f64 / decoding.as_secs_f64();
            let model = format!("SmolLM2 shape, f16, {backend}");
            row(
                &format!("prefill tokens/s, batch {batch} x {prompt_len}"),
                &model,
                format!("{prefill_rate:.0}"),
            );
            row(
                &format!("decode tokens/s, batch {batch}"),
                &model,
                format!("{decode_rate:.0}"),
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
