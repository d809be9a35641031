//! The real model: SmolLM2-135M-Instruct (GGUF, Q4_1) through the `llama`
//! engine. Ignored by default: they need the model (`scripts/fetch-model.sh`)
//! and an optimised build, since in a debug build one answer takes minutes.
//! `scripts/test.sh` runs them with
//! `cargo test -p workers --release --test model_smollm2 -- --ignored`.

use std::path::PathBuf;

use prompt::Tokenizer;
use protocol::openai::ChatMessage;
use tokio::sync::mpsc::UnboundedReceiver;
use workers::engine::{BatchEngine, Engine, GenerateEvent, GenerateRequest};
use workers::scheduler::Sampling;
use workers::{EngineConfig, EngineKind};

/// Where `scripts/fetch-model.sh` puts the model. Asked for (`--ignored`),
/// these tests fail rather than pass without running.
fn model() -> PathBuf {
    if cfg!(debug_assertions) {
        panic!("the real-model tests run only in release builds (cargo test --release)");
    }
    let cache = std::env::var_os("LLMGW_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/llmgw/models")
        });
    let path = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is absent; run scripts/fetch-model.sh",
        path.display()
    );
    path
}

fn engine(path: PathBuf, max_running: usize) -> (BatchEngine, Tokenizer) {
    let tokenizer = prompt::load(&path).unwrap();
    let config = EngineConfig {
        kind: EngineKind::Llama,
        model_path: Some(path),
        num_blocks: 512,
        max_running,
        max_model_len: 2048,
        ..EngineConfig::default()
    };
    (BatchEngine::start(&config, &tokenizer).unwrap(), tokenizer)
}

fn user(text: &str) -> ChatMessage<'static> {
    ChatMessage::new("user", text)
}

fn greedy(tokenizer: &Tokenizer, question: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt::chat_tokens(&[user(question)], tokenizer).unwrap(),
        resumed: Vec::new(),
        max_tokens,
        seed: None,
        sampling: Sampling {
            temperature: 0.0,
            ..Sampling::default()
        },
    }
}

/// The generated tokens and how many prompt tokens came from the prefix cache.
async fn run(mut events: UnboundedReceiver<GenerateEvent>) -> (Vec<u32>, usize) {
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

const QUESTIONS: [&str; 3] = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "What is 2 + 2?",
];

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the real model (scripts/fetch-model.sh) and --release"]
async fn answers_sensibly_the_same_with_prefix_cache_and_batching() {
    let (engine, tok) = engine(model(), 8);
    let started = std::time::Instant::now();
    let (paris, cached) = run(engine.submit(greedy(&tok, QUESTIONS[0], 24))).await;
    let text = tok.decode(&paris).unwrap();
    eprintln!("{text:?} in {:?}", started.elapsed());
    assert_eq!(cached, 0);
    assert!(text.contains("Paris"), "{text}");
    // The same prompt again: its full blocks come from the prefix cache.
    let (again, cached) = run(engine.submit(greedy(&tok, QUESTIONS[0], 24))).await;
    assert!(cached >= 16, "cached {cached}");
    assert_eq!(again, paris);
    // Batch 1, each question alone, against all of them at once.
    let mut alone = Vec::new();
    for q in QUESTIONS {
        alone.push(run(engine.submit(greedy(&tok, q, 16))).await.0);
    }
    let batch: Vec<_> = (0..8)
        .map(|i| engine.submit(greedy(&tok, QUESTIONS[i % 3], 16)))
        .collect();
    for (i, events) in batch.into_iter().enumerate() {
        let (tokens, _) = run(events).await;
        assert_eq!(
            tokens,
            alone[i % 3],
            "request {i}: {:?}",
            tok.decode(&tokens)
        );
    }
    for tokens in &alone {
        eprintln!("{:?}", tok.decode(tokens).unwrap());
    }
}

/// A stream migrated mid-answer continues on a fresh engine from the tokens
/// so far (prefilled at once, where the first engine decoded them one by
/// one) with exactly the greedy tokens the unbroken answer had.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the real model (scripts/fetch-model.sh) and --release"]
async fn a_resumed_answer_is_the_rest_of_the_unbroken_one() {
    let path = model();
    let (first, tok) = engine(path.clone(), 8);
    let mut wholes = Vec::new();
    for q in QUESTIONS {
        wholes.push(run(first.submit(greedy(&tok, q, 40))).await.0);
    }
    drop(first);
    let (second, _) = engine(path, 8);
    for (q, whole) in QUESTIONS.iter().zip(&wholes) {
        for k in [1, whole.len() / 3, whole.len() * 2 / 3] {
            let mut request = greedy(&tok, q, 40);
            request.resumed = whole[..k].to_vec();
            let (rest, _) = run(second.submit(request)).await;
            assert_eq!(
                rest,
                whole[k..],
                "{q:?} resumed after {k} tokens: {:?} then {:?}",
                tok.decode(&whole[..k]),
                tok.decode(&rest)
            );
        }
    }
}

/// Prints decode speed at batch 1 (the bench measures it properly; this is a smoke figure).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the real model (scripts/fetch-model.sh) and --release"]
async fn decode_rate_at_batch_1() {
    let (engine, tok) = engine(model(), 1);
    let mut events = engine.submit(greedy(&tok, "Write a long story about a dragon.", 128));
    let mut stamps = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerateEvent::Token { .. } => stamps.push(std::time::Instant::now()),
            GenerateEvent::Finished { .. } => break,
            GenerateEvent::Admitted { .. } => {}
        }
    }
    assert!(stamps.len() > 32, "{} tokens", stamps.len());
    // From the first token on, so prefill is left out.
    let elapsed = stamps.last().unwrap().duration_since(stamps[0]);
    let rate = (stamps.len() - 1) as f64 / elapsed.as_secs_f64();
    eprintln!(
        "decode at batch 1: {rate:.1} tokens/s over {} tokens",
        stamps.len()
    );
}

/// A new user's first requests with the official `openai` client
/// (`tests/clients/openai_first_requests.py`), against a worker configured as
/// the demo's (`config/worker-smollm2.toml`): a plain question about France
/// answers about Paris, log probabilities are real, `n = 2` gives two
/// choices, penalties act, and `response_format` or `tools` get a 400 naming them.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the real model (scripts/fetch-model.sh) and --release"]
async fn the_demo_configuration_answers_a_new_users_first_requests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut config = workers::WorkerConfig::load(&root.join("config/worker-smollm2.toml")).unwrap();
    config.engine.model_path = Some(model());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let model_name = config.model.clone();
    let worker = workers::start(config).await.unwrap();
    let script = root.join("workers/tests/clients/openai_first_requests.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("{}/v1", worker.url()))
        .arg(model_name)
        .output()
        .await
        .expect("python3 runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "the openai client's requests failed (it needs `pip install openai`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    worker.shutdown(std::time::Duration::from_secs(1)).await;
}

/// SmolLM2's tokenizer and template: prompts tokenized piece by piece (each
/// distinct piece once, from a cache) are the prompts tokenized whole.
#[test]
#[ignore = "needs the real model (scripts/fetch-model.sh) and --release"]
fn pieces_tokenize_as_the_whole_prompt() {
    let tok = prompt::load(&model()).unwrap();
    assert!(tok.caches_pieces() && tok.has_fast_path());
    let template = tok.chat_template().unwrap();
    for pass in 0..2 {
        for messages in prompt::samples::conversations(13, 2000) {
            let whole = tok.encode(&template.render(&messages).unwrap()).unwrap();
            let pieces = prompt::chat_tokens(&messages, &tok).unwrap();
            assert_eq!(pieces, whole, "pass {pass}: {messages:?}");
        }
    }
}
