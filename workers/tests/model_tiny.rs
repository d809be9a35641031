//! The `llama` engine on a tiny random model written as GGUF and as a Hugging
//! Face directory: tokenizer and chat template come back from either, logits
//! match an independent float64 NumPy implementation and agree across the two
//! formats, and the engine serves the model deterministically.

mod model_support;

use std::path::Path;
use std::process::Command;

use model_support::{plan_item, HfDtype};
use protocol::openai::ChatMessage;
use workers::engine::{BatchEngine, Engine, GenerateEvent, GenerateRequest};
use workers::model::{load_weights, Forward};
use workers::scheduler::{Phase, Sampling, StepPlan};
use workers::{EngineConfig, EngineKind};

fn message(role: &str, content: &str) -> ChatMessage<'static> {
    ChatMessage::new(role, content)
}

#[test]
fn tokenizer_and_template_come_from_the_metadata() {
    let trained = model_support::train_tokenizer();
    let path = model_support::write_tiny_model(&trained, "tiny-tokenizer");
    let tok = prompt::load(&path).unwrap();
    for text in [
        "The weather over the network, in 2024: 13 degrees.",
        "naïve café 🌧",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, trained.encode(text, true).unwrap().get_ids(), "{text}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert_eq!(tok.eos_token(), Some(2));
    let ids = prompt::chat_tokens(&[message("user", "rain")], &tok).unwrap();
    // Special tokens are single ids: <|im_start|> opens the prompt and the reply cue.
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 1);
    std::fs::remove_file(path).unwrap();
}

/// Every position's logits from `tests/reference/llama_ref.py`.
fn reference(path: &Path, tokens: &[u32]) -> Vec<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_ref.py");
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .arg(list.join(","))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the NumPy reference failed (it needs `pip install numpy`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn max_diff(ours: &[f32], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn logits_match_the_numpy_reference_through_paged_blocks() {
    let trained = model_support::train_tokenizer();
    let path = model_support::write_tiny_model(&trained, "tiny-logits");
    // A's first 9 tokens prefilled in blocks scattered over the store; then,
    // batched, A decodes its 10th token while B, sharing A's first two
    // blocks (8 tokens at 4 per block), prefills the rest.
    let (a, b) = prompts(&trained);
    let ours = two_steps(&path, &a, &b);
    let ref_a = reference(&path, &a);
    let ref_b = reference(&path, &b);
    let theirs = [&ref_a[8], &ref_a[9], &ref_b[12]];
    for (i, (ours, theirs)) in ours.iter().zip(theirs).enumerate() {
        let diff = max_diff(ours, theirs);
        let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        eprintln!("logits {i}: max |diff| {diff:.2e}, max |logit| {scale:.2}");
        assert!(diff < 1e-3 * scale.max(1.0), "logits {i} differ by {diff}");
    }
    std::fs::remove_file(path).unwrap();
}

async fn generate(engine: &BatchEngine, request: GenerateRequest) -> (Vec<u32>, usize) {
    let mut events = engine.submit(request);
    let (mut tokens, mut cached) = (Vec::new(), 0);
    while let Some(event) = events.recv().await {
        match event {
            GenerateEvent::Admitted { cached_tokens } => cached = cached_tokens,
            GenerateEvent::Token { id, .. } => tokens.push(id),
            GenerateEvent::Finished { .. } => break,
        }
    }
    (tokens, cached)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_serves_the_model_deterministically() {
    let trained = model_support::train_tokenizer();
    let path = model_support::write_tiny_model(&trained, "tiny-engine");
    let tok = prompt::load(&path).unwrap();
    let config = EngineConfig {
        kind: EngineKind::Llama,
        model_path: Some(path.clone()),
        block_size: 4,
        num_blocks: 256,
        max_model_len: 128,
        // Small enough that 8 prompts prefill over several steps, mixed with decodes.
        max_prefill_tokens_per_step: 24,
        ..EngineConfig::default()
    };
    let engine = BatchEngine::start(&config, &tok).unwrap();
    let request = |text: &str, temperature: f32| GenerateRequest {
        prompt: prompt::chat_tokens(&[message("user", text)], &tok).unwrap(),
        resumed: Vec::new(),
        max_tokens: 12,
        seed: Some(9),
        sampling: Sampling {
            temperature,
            top_p: 0.9,
            top_k: 20,
            ..Sampling::default()
        },
    };
    let texts = ["rain at noon", "the network is turning"];
    let mut alone = Vec::new();
    for t in texts {
        for temperature in [0.0, 0.8] {
            // Fewer than 12 tokens when the random model happens on its end-of-sequence token.
            let (tokens, cached) = generate(&engine, request(t, temperature)).await;
            assert!(!tokens.is_empty());
            if temperature > 0.0 {
                // The greedy run cached this prompt's full blocks.
                assert!(cached > 0);
            }
            alone.push(tokens);
        }
    }
    assert_ne!(
        alone[0], alone[1],
        "sampling at 0.8 should leave the greedy path"
    );
    let batch: Vec<_> = (0..8)
        .map(|i| engine.submit(request(texts[i / 2 % 2], [0.0, 0.8][i % 2])))
        .collect();
    for (i, mut events) in batch.into_iter().enumerate() {
        let mut tokens = Vec::new();
        while let Some(event) = events.recv().await {
            if let GenerateEvent::Token { id, .. } = event {
                tokens.push(id);
            }
        }
        assert_eq!(tokens, alone[i % 4], "request {i}");
    }
    // Resumed from any point (a stream migrated from another worker), greedy
    // or sampled, a sequence goes on with the tokens it would have had.
    for (i, whole) in alone.iter().enumerate() {
        for k in [1, whole.len() / 2, whole.len() - 1] {
            let mut resumed = request(texts[i / 2], [0.0, 0.8][i % 2]);
            resumed.resumed = whole[..k].to_vec();
            let (rest, _) = generate(&engine, resumed).await;
            assert_eq!(rest, whole[k..], "request {i} resumed after {k} tokens");
        }
    }
    drop(engine);
    std::fs::remove_file(path).unwrap();
}

/// The plans of the paged-blocks test: a prefill, then a decode batched with a
/// prefill that reuses two of its blocks; returns the three logits rows.
fn two_steps(model: &Path, a: &[u32], b: &[u32]) -> Vec<Vec<f32>> {
    let mut forward = Forward::new(load_weights(model).unwrap(), 8, 4);
    let a_blocks = [5, 2, 7];
    let step1 = StepPlan {
        items: vec![plan_item(1, Phase::Prefill, &a[..9], 0, &a_blocks, 1.0)],
    };
    let step2 = StepPlan {
        items: vec![
            plan_item(1, Phase::Decode, a, 9, &a_blocks, 1.0),
            plan_item(2, Phase::Prefill, b, 8, &[5, 2, 3, 6], 1.0),
        ],
    };
    [forward.run(&step1), forward.run(&step2)].concat()
}

fn prompts(trained: &tokenizers::Tokenizer) -> (Vec<u32>, Vec<u32>) {
    let ids = trained
        .encode("Rain fell on the quiet town at noon.", true)
        .unwrap();
    let a = ids.get_ids()[..10].to_vec();
    let mut b = a[..8].to_vec();
    b.extend([40, 41, 42, 43, 44]);
    (a, b)
}

/// A Hugging Face export of the tiny model: every tensor holds the GGUF file's
/// values after decoding, Q and K rows in Hugging Face's order. In f32 it
/// computes what the file does but for the 16-bit rounding of activations
/// before quantized products, which only the file has.
#[test]
fn hugging_face_exports_match_the_numpy_reference() {
    let trained = model_support::train_tokenizer();
    let (a, b) = prompts(&trained);
    for dtype in [HfDtype::F32, HfDtype::F16, HfDtype::BF16] {
        let dir = model_support::write_tiny_hf(&trained, "tiny-hf", dtype);
        let ours = two_steps(&dir, &a, &b);
        let (ref_a, ref_b) = (reference(&dir, &a), reference(&dir, &b));
        for (i, (ours, theirs)) in ours
            .iter()
            .zip([&ref_a[8], &ref_a[9], &ref_b[12]])
            .enumerate()
        {
            let diff = max_diff(ours, theirs);
            let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            eprintln!("{dtype:?} logits {i}: max |diff| {diff:.2e}, max |logit| {scale:.2}");
            assert!(
                diff < 1e-3 * scale.max(1.0),
                "{dtype:?} logits {i} differ by {diff}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_hugging_face_directory_brings_the_tokenizer_and_template_of_the_file() {
    let trained = model_support::train_tokenizer();
    let gguf = model_support::write_tiny_model(&trained, "tiny-vs-gguf");
    let hf = model_support::write_tiny_hf(&trained, "tiny-vs-hf", HfDtype::F32);
    // The tokenizer, EOS and chat template from tokenizer.json and tokenizer_config.json.
    let from_gguf = prompt::load(&gguf).unwrap();
    let from_hf = prompt::load(&hf).unwrap();
    let chat = [message("user", "rain at noon, 2024")];
    let prompt = prompt::chat_tokens(&chat, &from_hf).unwrap();
    assert_eq!(prompt, prompt::chat_tokens(&chat, &from_gguf).unwrap());
    assert_eq!(from_hf.eos_token(), Some(2));
    std::fs::remove_file(gguf).unwrap();
    std::fs::remove_dir_all(hf).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_serves_a_directory_like_the_file() {
    let trained = model_support::train_tokenizer();
    let gguf = model_support::write_tiny_model(&trained, "tiny-serve-gguf");
    let hf = model_support::write_tiny_hf(&trained, "tiny-serve-hf", HfDtype::F32);
    let mut outputs = Vec::new();
    for path in [&gguf, &hf] {
        let config = workers::WorkerConfig {
            engine: EngineConfig {
                kind: EngineKind::Llama,
                model_path: Some(path.clone()),
                block_size: 4,
                num_blocks: 64,
                max_model_len: 128,
                ..EngineConfig::default()
            },
            ..workers::WorkerConfig::default()
        };
        config.validate().unwrap();
        let tok = prompt::load(path).unwrap();
        let engine = BatchEngine::start(&config.engine, &tok).unwrap();
        assert_eq!(engine.info().backend, "cpu");
        let request = GenerateRequest {
            prompt: prompt::chat_tokens(&[message("user", "rain")], &tok).unwrap(),
            resumed: Vec::new(),
            max_tokens: 8,
            seed: Some(1),
            sampling: Sampling {
                temperature: 0.0,
                ..Sampling::default()
            },
        };
        outputs.push(generate(&engine, request).await.0);
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1]);
    std::fs::remove_file(gguf).unwrap();
    std::fs::remove_dir_all(hf).unwrap();
}

/// Log probabilities of `generated` after `prompt` from
/// `tests/reference/sampling_ref.py`: `(logprob, [(id, logprob)])` per token.
fn reference_logprobs(
    path: &Path,
    prompt: &[u32],
    generated: &[u32],
    params: serde_json::Value,
) -> Vec<(f64, Vec<(u32, f64)>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sampling_ref.py");
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .arg(list(prompt))
        .arg(list(generated))
        .arg(params.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the NumPy reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| {
            let top = r["top"].as_array().unwrap().iter();
            let top = top.map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()));
            (r["logprob"].as_f64().unwrap(), top.collect())
        })
        .collect()
}

/// Every token and its log probabilities, as the engine reports them.
async fn generate_with_logprobs(
    engine: &BatchEngine,
    request: GenerateRequest,
) -> Vec<(u32, workers::scheduler::TokenLogprobs)> {
    let mut events = engine.submit(request);
    let mut out = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerateEvent::Token { id, logprobs } => out.push((id, logprobs.unwrap())),
            GenerateEvent::Finished { .. } => break,
            GenerateEvent::Admitted { .. } => {}
        }
    }
    out
}

/// The sampler's adjustments and its log probabilities, against an
/// independent NumPy computation over the reference forward pass: greedy and
/// sampled, with and without penalties and bias. Penalties that were not
/// applied, or applied to the wrong tokens, would move the log probabilities.
#[tokio::test(flavor = "multi_thread")]
async fn logprobs_penalties_and_bias_match_the_numpy_reference() {
    let trained = model_support::train_tokenizer();
    let path = model_support::write_tiny_model(&trained, "tiny-logprobs");
    let tok = prompt::load(&path).unwrap();
    let config = EngineConfig {
        kind: EngineKind::Llama,
        model_path: Some(path.clone()),
        block_size: 4,
        num_blocks: 64,
        max_model_len: 128,
        ..EngineConfig::default()
    };
    let engine = BatchEngine::start(&config, &tok).unwrap();
    let prompt = prompt::chat_tokens(&[message("user", "rain at noon")], &tok).unwrap();
    let plain = || Sampling {
        temperature: 0.0,
        logprobs: Some(4),
        ..Sampling::default()
    };
    let greedy = generate_with_logprobs(&engine, request(&prompt, plain())).await;
    // A bias towards the greedy answer's first runner-up, which takes its place.
    let favoured = greedy[0].1.top[1].0;
    let cases = [
        (plain(), serde_json::json!({"temperature": 0.0, "top": 4})),
        (
            Sampling {
                presence_penalty: 1.5,
                frequency_penalty: 0.7,
                logit_bias: vec![(favoured, 2.5)].into(),
                ..plain()
            },
            serde_json::json!({"temperature": 0.0, "top": 4, "presence_penalty": 1.5,
                "frequency_penalty": 0.7, "logit_bias": {favoured.to_string(): 2.5}}),
        ),
        (
            Sampling {
                temperature: 0.7,
                top_k: 5,
                frequency_penalty: -0.5,
                ..plain()
            },
            serde_json::json!({"temperature": 0.7, "top": 4, "frequency_penalty": -0.5}),
        ),
    ];
    let mut answers = Vec::new();
    for (sampling, params) in cases {
        let greedy = sampling.temperature == 0.0;
        let ours = generate_with_logprobs(&engine, request(&prompt, sampling)).await;
        let ids: Vec<u32> = ours.iter().map(|t| t.0).collect();
        let theirs = reference_logprobs(&path, &prompt, &ids, params.clone());
        let mut worst = 0.0f64;
        for (i, ((id, lp), (ref_lp, ref_top))) in ours.iter().zip(&theirs).enumerate() {
            worst = worst.max((f64::from(lp.logprob) - ref_lp).abs());
            assert_eq!(lp.top.len(), 4);
            for ((t, l), (ref_t, ref_l)) in lp.top.iter().zip(ref_top) {
                worst = worst.max((f64::from(*l) - ref_l).abs());
                // Ids agree unless two alternatives are within rounding.
                assert!(
                    t == ref_t || (f64::from(*l) - ref_l).abs() < 1e-3,
                    "{i}: {lp:?}"
                );
            }
            if greedy {
                // The draw is the most likely token of the adjusted distribution.
                assert!(*id == ref_top[0].0 || (ref_lp - ref_top[0].1).abs() < 1e-3);
            }
            // The top alternatives are the most likely, so none beats them.
            assert!(lp.logprob <= lp.top[0].1 + 1e-6);
        }
        eprintln!(
            "{params}: {} tokens, max |logprob diff| {worst:.2e}",
            ours.len()
        );
        assert!(
            worst < 5e-3,
            "{params}: log probabilities differ by {worst}"
        );
        answers.push(ids);
    }
    assert_ne!(answers[0], answers[1], "penalties and bias changed nothing");
    drop(engine);
    std::fs::remove_file(path).unwrap();
}

fn request(prompt: &[u32], sampling: Sampling) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        resumed: Vec::new(),
        max_tokens: 12,
        seed: Some(5),
        sampling,
    }
}

/// A model's own sampling recommendation serves requests that leave sampling
/// out, ahead of the worker's `engine.default_sampling`, unless that says
/// `over_model`.
#[tokio::test(flavor = "multi_thread")]
async fn the_model_recommends_the_default_sampling() {
    let trained = model_support::train_tokenizer();
    let gguf = model_support::write_tiny_model(&trained, "tiny-defaults-gguf");
    let hf = model_support::write_tiny_hf(&trained, "tiny-defaults-hf", HfDtype::F32);
    let (temperature, top_p, top_k) = model_support::SAMPLING;
    let recommended = workers::DefaultSampling {
        temperature: Some(temperature),
        top_p: Some(top_p),
        top_k: Some(top_k),
        over_model: false,
    };
    for path in [&gguf, &hf] {
        assert_eq!(
            workers::model::sampling_defaults(path).unwrap(),
            recommended
        );
    }
    let table = serde_json::json!({"temperature": 1.9, "top_p": 0.7});
    let model = serde_json::json!({"temperature": temperature, "top_p": top_p, "top_k": top_k});
    for (over_model, expected) in [(false, &model), (true, &table)] {
        let engine = EngineConfig {
            kind: EngineKind::Llama,
            model_path: Some(hf.clone()),
            block_size: 4,
            num_blocks: 64,
            max_model_len: 128,
            default_sampling: workers::DefaultSampling {
                temperature: Some(1.9),
                top_p: Some(0.7),
                top_k: None,
                over_model,
            },
            ..EngineConfig::default()
        };
        let config = workers::WorkerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            engine,
            ..workers::WorkerConfig::default()
        };
        let worker = workers::start(config).await.unwrap();
        let ask = |extra: &serde_json::Value| {
            let mut body = serde_json::json!({
                "model": "sim-llama", "prompt": "rain at noon", "max_tokens": 16, "seed": 11,
            });
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        // A blocking client is fine: the worker serves on the runtime's other threads.
        let text = |body: serde_json::Value| {
            let out = Command::new("curl")
                .args(["-s", "-H", "content-type: application/json", "-d"])
                .arg(body.to_string())
                .arg(format!("{}/v1/completions", worker.url()))
                .output()
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            json["choices"][0]["text"].as_str().unwrap().to_string()
        };
        let left_out = text(ask(&serde_json::json!({})));
        let explicit = text(ask(expected));
        let greedy = text(ask(&serde_json::json!({"temperature": 0})));
        assert_eq!(left_out, explicit, "over_model = {over_model}");
        assert_ne!(left_out, greedy, "over_model = {over_model}");
        worker.shutdown(std::time::Duration::from_secs(1)).await;
    }
    std::fs::remove_file(gguf).unwrap();
    std::fs::remove_dir_all(hf).unwrap();
}

/// Prompts tokenized piece by piece (each distinct piece once, from a
/// cache) are the prompts tokenized whole, with the tiny model's ChatML
/// template and tokenizer from either format, over random conversations.
#[test]
fn pieces_tokenize_as_the_whole_prompt() {
    let trained = model_support::train_tokenizer();
    let gguf = model_support::write_tiny_model(&trained, "tiny-pieces-gguf");
    let hf = model_support::write_tiny_hf(&trained, "tiny-pieces-hf", HfDtype::F32);
    for path in [&gguf, &hf] {
        let tok = prompt::load(path).unwrap();
        assert!(
            tok.caches_pieces() && tok.has_fast_path(),
            "{}",
            path.display()
        );
        let template = tok.chat_template().unwrap();
        for pass in 0..2 {
            for messages in prompt::samples::conversations(11, 300) {
                let whole = tok.encode(&template.render(&messages).unwrap()).unwrap();
                let pieces = prompt::chat_tokens(&messages, &tok).unwrap();
                assert_eq!(pieces, whole, "pass {pass}: {messages:?}");
            }
        }
    }
    std::fs::remove_file(gguf).unwrap();
    std::fs::remove_dir_all(hf).unwrap();
}
