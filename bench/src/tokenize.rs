//! `bench tokenize`: what the gateway pays to tokenize and hash a prompt
//! before routing it, by prompt length, against the time to serialize the
//! same request to JSON (a cost every proxy pays) measured in the same run.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use gateway::parse::Prompt;
use protocol::openai::ChatMessage;
use serde_json::json;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Prompts tokenized per length.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
}

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let tokenizer = gateway::tokenize::load("builtin")?;
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    let (mut tokenize_us, mut json_us) = (Vec::new(), Vec::new());
    let words = "the network carries packets across the wide valley while the weather turns ";
    for target_tokens in [256usize, 1024, 4096] {
        // Grow the text until the tokenizer says it is long enough.
        let mut text = String::new();
        while prompt::chat_tokens(&[user(&text)], &tokenizer)?.len() < target_tokens {
            text.push_str(words);
        }
        let messages = vec![user(&text)];
        let tokens = prompt::chat_tokens(&messages, &tokenizer)?.len();
        let prompt = Prompt::Chat(messages.clone());
        let per_call = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            for _ in 0..args.iterations {
                f();
            }
            start.elapsed() / args.iterations as u32
        };
        let tokenize = per_call(&mut || {
            black_box(
                gateway::tokenize::prompt_blocks(&tokenizer, 16, black_box(&prompt), None).unwrap(),
            );
        });
        let body = json!({"model": "m", "messages": messages});
        let serialize = per_call(&mut || {
            black_box(serde_json::to_vec(black_box(&body)).unwrap());
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        rows.push(vec![
            tokens.to_string(),
            format!("{:.1} µs", us(tokenize)),
            format!("{:.2} µs", us(tokenize) / tokens as f64),
            format!("{:.1} µs", us(serialize)),
        ]);
        figures.push(json!({"prompt_tokens": tokens, "tokenize_and_hash_us": us(tokenize), "json_serialize_us": us(serialize)}));
        tokenize_us.push(us(tokenize));
        json_us.push(us(serialize));
    }
    println!(
        "## bench tokenize\n\nbuilt-in BPE tokenizer, chat template, block hashing (block size 16); mean of {} runs per length\n\n{}",
        args.iterations,
        report::table(&["prompt tokens", "tokenize + hash", "per token", "JSON serialize (baseline)"], &rows)
    );
    report::write_json(&out.join("tokenize.json"), &json!(figures))?;
    report::bar_chart(
        &out.join("tokenize.png"),
        "Cost of tokenizing and hashing a prompt in the gateway",
        "µs per prompt",
        &["256 tokens", "1k tokens", "4k tokens"],
        &[
            ("tokenize + hash", tokenize_us),
            ("JSON serialize", json_us),
        ],
    )?;
    Ok(())
}

fn user(text: &str) -> ChatMessage {
    serde_json::from_value(json!({"role": "user", "content": text})).expect("valid message")
}
