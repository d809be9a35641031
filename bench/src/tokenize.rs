//! `bench tokenize`: what the gateway pays for a prompt between the request's
//! arrival and its upstream write: parsing the body, rendering the chat
//! template, tokenizing and hashing the blocks. Measured for prompts of 256,
//! 1k and 4k tokens on the built-in tokenizer and SmolLM2's: whole through
//! the `tokenizers` crate's pipeline (no piece cache, no fast path: the
//! baseline), seen for the first time (every piece tokenized, on the fast
//! path), and with a 3.5k-token system prompt (7/8 of the prompt) seen
//! before; against the time to serialize the same request to JSON (a cost
//! every proxy pays) measured in the same run.

use std::hint::black_box;

use anyhow::Context;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::parse::{parse, Endpoint};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Prompts per measurement.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
}

/// The gateway's work on one request body, up to its block hashes.
fn prompt_work(tokenizer: &prompt::Tokenizer, body: &[u8]) -> usize {
    let parsed = parse(Endpoint::Chat, body).expect("a valid request");
    let blocks = gateway::tokenize::prompt_blocks(tokenizer, 16, &parsed.prompt, None)
        .expect("a prompt that tokenizes");
    blocks.tokens
}

/// The same work with the whole prompt through the `tokenizers` crate's
/// pipeline, as before pieces were cached: the baseline.
fn whole_prompt_work(tokenizer: &prompt::Tokenizer, body: &[u8]) -> usize {
    let parsed = parse(Endpoint::Chat, body).expect("a valid request");
    let gateway::parse::Prompt::Chat(messages) = &parsed.prompt else {
        unreachable!("a chat request")
    };
    let text = match tokenizer.chat_template() {
        Some(template) => template.render(messages).expect("a template that renders"),
        None => prompt::chat_pieces(messages).text().to_string(),
    };
    let tokens = tokenizer.encode(&text).expect("a prompt that tokenizes");
    protocol::block_hashes(&tokens, 16).len()
}

pub fn run(args: Args, out: &Path) -> anyhow::Result<()> {
    let mut specs = vec![("built-in", "builtin".to_string())];
    match crate::engine::default_model() {
        Ok(path) => specs.push(("SmolLM2", path.to_string_lossy().into_owned())),
        Err(e) => println!("SmolLM2's tokenizer left out: {e}"),
    }
    let tokenizers = specs
        .iter()
        .map(|(name, spec)| Ok((*name, gateway::tokenize::load(spec)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let words = "the network carries packets across the wide valley while the weather turns ";
    let (mut rows, mut figures) = (Vec::new(), Vec::new());
    let mut chart: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, tokenizer) in &tokenizers {
        let tokens_of = |text: &str| prompt_work(tokenizer, &body(text, "x", 0, 0));
        let mut series = [Vec::new(), Vec::new(), Vec::new()];
        for target in [256usize, 1024, 4096] {
            // Grow the text until the tokenizer says it is long enough; the
            // system prompt holds 7/8 of it.
            let mut system = String::new();
            while tokens_of(&system) < target * 7 / 8 {
                system.push_str(words);
            }
            let mut user = String::new();
            while tokens_of(&format!("{system}{user}")) < target {
                user.push_str(words);
            }
            let mut i = 0;
            // Every request's user message is new; a new number makes the
            // system prompt new too, for first sight.
            let mut per_call =
                |fresh_system: bool, work: fn(&prompt::Tokenizer, &[u8]) -> usize| {
                    let bodies: Vec<Bytes> = (0..args.iterations)
                        .map(|_| {
                            i += 1;
                            body(&system, &user, if fresh_system { i } else { 0 }, i)
                        })
                        .collect();
                    let start = Instant::now();
                    for b in &bodies {
                        black_box(work(tokenizer, black_box(b)));
                    }
                    start.elapsed() / args.iterations as u32
                };
            let whole = per_call(true, whole_prompt_work);
            let first_sight = per_call(true, prompt_work);
            per_call(false, prompt_work); // the system prompt is seen once
            let repeated = per_call(false, prompt_work);
            let tokens = prompt_work(tokenizer, &body(&system, &user, 0, 0));
            let request: serde_json::Value = serde_json::from_slice(&body(&system, &user, 0, 0))?;
            let serialize = {
                let start = Instant::now();
                for _ in 0..args.iterations {
                    black_box(serde_json::to_vec(black_box(&request))?);
                }
                start.elapsed() / args.iterations as u32
            };
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            rows.push(vec![
                name.to_string(),
                tokens.to_string(),
                format!("{:.1} µs", us(whole)),
                format!("{:.1} µs", us(first_sight)),
                format!("{:.1} µs", us(repeated)),
                format!("{:.1}x", us(whole) / us(repeated)),
                format!("{:.1} µs", us(serialize)),
            ]);
            figures.push(json!({"tokenizer": name, "prompt_tokens": tokens,
                "whole_prompt_us": us(whole), "first_sight_us": us(first_sight),
                "system_prompt_cached_us": us(repeated), "json_serialize_us": us(serialize)}));
            series[0].push(us(whole));
            series[1].push(us(first_sight));
            series[2].push(us(repeated));
        }
        let [whole, first, cached] = series;
        chart.push((format!("{name}, whole prompt"), whole));
        chart.push((format!("{name}, first sight"), first));
        chart.push((format!("{name}, system prompt cached"), cached));
    }
    println!(
        "## bench tokenize\n\nthe gateway's prompt work per request (parse, chat template, tokenize, block hashes); \
         the system prompt is 7/8 of the prompt; mean of {} requests\n\n{}",
        args.iterations,
        report::table(
            &["tokenizer", "prompt tokens", "whole prompt, tokenizers crate", "first sight", "system prompt cached", "cached vs whole", "JSON serialize (baseline)"],
            &rows
        )
    );
    let engines: Vec<Vec<String>> = tokenizers
        .iter()
        .zip(&specs)
        .map(|((name, tokenizer), (_, spec))| bpe_engines(name, tokenizer, spec))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "\nBPE merges alone, on the words of 2,000 random conversations (each distinct word once, caches cold), against the gateway's whole path (split, merges, cache lookups) on the same messages\n\n{}",
        report::table(
            &["tokenizer", "words", "tokens", "tokenizers crate's BPE", "GitHub's bpe (backtracking)", "identical tokens",
                "the gateway's path, every message first seen", "the same, word cache full of other words",
                "bpe's tables built in"],
            &engines
        )
    );
    report::write_json(&out.join("tokenize.json"), &json!(figures))?;
    let series: Vec<(&str, Vec<f64>)> =
        chart.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    report::bar_chart(
        &out.join("tokenize.png"),
        "The gateway's prompt work per request",
        "µs per request",
        &["256 tokens", "1k tokens", "4k tokens"],
        &series,
    )?;
    Ok(())
}

/// A chat request of a system prompt and a user message, each made its own
/// by a number (none for 0).
fn body(system: &str, user: &str, system_tag: usize, user_tag: usize) -> Bytes {
    let tagged = |text: &str, tag: usize| match tag {
        0 => text.to_string(),
        n => format!("{n} {text}"),
    };
    Bytes::from(
        json!({"model": "m", "messages": [
            {"role": "system", "content": tagged(system, system_tag)},
            {"role": "user", "content": tagged(user, user_tag)},
        ]})
        .to_string(),
    )
}

/// The `tokenizers` crate's BPE model against GitHub's linear-time `bpe`
/// crate, built from the same vocabulary, on the same words: time per token
/// and whether they agree.
fn bpe_engines(
    name: &str,
    tokenizer: &prompt::Tokenizer,
    spec: &str,
) -> anyhow::Result<Vec<String>> {
    use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let pipeline = tokenizer.pipeline();
    let pre = pipeline.get_pre_tokenizer().context("no pre-tokenizer")?;
    let texts: Vec<String> = prompt::samples::conversations(5, 2000)
        .into_iter()
        .flatten()
        .filter_map(|m| Some(m.text()?.into_owned()))
        .collect();
    // The gateway's own path on the same text: each message seen for the
    // first time (piece cache cold), split and merged on the fast path, the
    // BPE model's word cache as the process left it (its cap is 10k words).
    let start = Instant::now();
    let mut path_tokens = 0;
    for text in &texts {
        path_tokens += black_box(tokenizer.encode_pieces(&[text])?).len();
    }
    let path = start.elapsed();
    // The same on a tokenizer whose word cache other words filled first, as
    // a long-running gateway's does: the `tokenizers` BPE model stops
    // caching at 10,000 words rather than evicting.
    // Loaded afresh: `gateway::tokenize::load("builtin")` shares one instance.
    let full = match spec {
        "builtin" => prompt::Tokenizer::builtin()?,
        path => prompt::load(Path::new(path))?,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..150 {
        let other: String = (0..100)
            .map(|_| {
                let len = rng.random_range(3..9);
                let word: String = (0..len).map(|_| rng.random_range('a'..='z')).collect();
                format!(" {word}")
            })
            .collect();
        full.encode_pieces(&[&other])?;
    }
    let start = Instant::now();
    let mut full_tokens = 0;
    for text in &texts {
        full_tokens += black_box(full.encode_pieces(&[text])?).len();
    }
    let path_full = start.elapsed();
    let mut seen = std::collections::HashSet::new();
    // Each word as the model sees it (GPT-2's alphabet) and as bytes.
    let mut words: Vec<(String, Vec<u8>)> = Vec::new();
    for text in &texts {
        let mut split = PreTokenizedString::from(text.as_str());
        pre.pre_tokenize(&mut split)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (word, (start, end), _) in
            split.get_splits(OffsetReferential::Original, OffsetType::Byte)
        {
            if seen.insert(word.to_string()) {
                words.push((word.to_string(), text.as_bytes()[start..end].to_vec()));
            }
        }
    }
    // Added tokens never meet the merges (they are cut out first), and the
    // bpe crate requires every token to encode to itself: left out, ids mapped.
    let added = pipeline.get_added_tokens_decoder();
    let ids: Vec<u32> = (0..tokenizer.vocab_size() as u32)
        .filter(|id| !added.contains_key(id))
        .collect();
    let vocab: Vec<Vec<u8>> = ids.iter().map(|&id| tokenizer.token_bytes(id)).collect();
    let start = Instant::now();
    let factor = bpe::byte_pair_encoding::find_hash_factor_for_dictionary(vocab.clone());
    let fast = bpe::byte_pair_encoding::BytePairEncoding::from_dictionary(vocab, Some(factor));
    let built = start.elapsed();
    // A clone starts with an empty word cache: merges, not lookups.
    let model = pipeline.get_model().clone();
    let start = Instant::now();
    let theirs: Vec<Vec<u32>> = words
        .iter()
        .map(|(w, _)| model.tokenize(w).map(|t| t.iter().map(|t| t.id).collect()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hf = start.elapsed();
    let start = Instant::now();
    let ours: Vec<Vec<u32>> = words
        .iter()
        .map(|(_, b)| fast.encode_via_backtracking(b))
        .collect();
    let github = start.elapsed();
    let ours: Vec<Vec<u32>> = ours
        .into_iter()
        .map(|t| t.into_iter().map(|i| ids[i as usize]).collect())
        .collect();
    let tokens: usize = theirs.iter().map(Vec::len).sum();
    let same = theirs.iter().zip(&ours).filter(|(a, b)| a == b).count();
    let per = |d: Duration, tokens: usize| d.as_secs_f64() * 1e6 / tokens as f64;
    Ok(vec![
        name.to_string(),
        words.len().to_string(),
        tokens.to_string(),
        format!("{:.3} µs/token", per(hf, tokens)),
        format!("{:.3} µs/token", per(github, tokens)),
        format!("{same} of {} words", words.len()),
        format!("{:.3} µs/token", per(path, path_tokens)),
        format!("{:.3} µs/token", per(path_full, full_tokens)),
        format!("{:.0} ms", built.as_secs_f64() * 1e3),
    ])
}
