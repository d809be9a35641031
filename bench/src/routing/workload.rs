//! The workload, scaled down from llm-d's prefix-cache benchmark (150
//! customers x 6000-token contexts): customers with their own long system
//! prompt, each holding multi-turn chat sessions whose prompts grow turn by
//! turn. Pure and seeded: every strategy replays exactly these requests at
//! exactly these times.

use std::time::Duration;

use bytes::Bytes;
use prompt::{Tokenizer, CORPUS};
use protocol::openai::ChatMessage;
use protocol::{block_hashes, BlockHash};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The shape of the workload.
pub struct Shape {
    pub customers: usize,
    pub sessions: usize,
    pub turns: usize,
    /// Sessions running at once; each arrival continues one of them.
    pub active_sessions: usize,
    pub rate: f64,
    pub system_tokens: (usize, usize),
    pub max_tokens: usize,
    pub seed: u64,
}

/// One request of the replay.
pub struct Request {
    /// When it is sent, from the start of the run.
    pub at: Duration,
    /// The JSON body, streaming, usage requested.
    pub body: Bytes,
    /// Block hashes of the rendered prompt, as the workers compute them; only
    /// the oracle reads them (the gateway tokenizes the body itself).
    pub hashes: Vec<BlockHash>,
    /// The rendered prompt's tokens: the `kv_zmq` run's publishers send
    /// each block's, as vLLM's events do.
    pub tokens: Vec<u32>,
}

pub const MODEL: &str = "sim-llama";

/// Builds the whole replay: `customers * sessions * turns` requests.
pub fn build(
    shape: &Shape,
    tokenizer: &Tokenizer,
    block_size: usize,
) -> anyhow::Result<Vec<Request>> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let text = Text::new(tokenizer);
    let systems: Vec<String> = (0..shape.customers)
        .map(|c| {
            let target = rng.random_range(shape.system_tokens.0..=shape.system_tokens.1);
            let name = text.name(&mut rng);
            text.passage(
                &mut rng,
                format!("You are the assistant of customer {c}, {name}. Follow its guide:"),
                target,
            )
        })
        .collect::<anyhow::Result<_>>()?;

    // Sessions start in a shuffled order, so customers come and go over the run
    // and a cache has to let some of them go.
    let mut queue: Vec<usize> = (0..shape.customers)
        .flat_map(|c| std::iter::repeat_n(c, shape.sessions))
        .collect();
    shuffle(&mut queue, &mut rng);
    let mut queue = queue.into_iter();
    let mut active: Vec<Session> = Vec::new();
    let mut requests = Vec::new();
    let mut at = 0.0;
    loop {
        while active.len() < shape.active_sessions {
            let Some(customer) = queue.next() else { break };
            active.push(Session {
                history: vec![message("system", &systems[customer])],
                turns_left: shape.turns,
            });
        }
        if active.is_empty() {
            break;
        }
        // Open loop, Poisson at a fixed mean rate: users do not wait for other
        // users, and a closed loop would let a bad router slow its own arrivals,
        // hiding the queueing it causes.
        at += -(1.0 - rng.random::<f64>()).ln() / shape.rate;
        let i = rng.random_range(0..active.len());
        let session = &mut active[i];
        if session.turns_left < shape.turns {
            // The previous turn's answer, as recorded in the conversation; fixed, so
            // the replay does not depend on what a worker generated.
            let len = rng.random_range(40..=100);
            let answer = text.passage(&mut rng, String::new(), len)?;
            session.history.push(message("assistant", &answer));
        }
        let len = rng.random_range(20..=80);
        let question = text.passage(&mut rng, String::new(), len)?;
        session
            .history
            .push(message("user", &format!("{question} Why?")));
        session.turns_left -= 1;
        let tokens = prompt::chat_tokens(&session.history, tokenizer)?;
        requests.push(Request {
            at: Duration::from_secs_f64(at),
            body: body(&session.history, shape.max_tokens),
            hashes: block_hashes(&tokens, block_size),
            tokens,
        });
        if session.turns_left == 0 {
            active.swap_remove(i);
        }
    }
    Ok(requests)
}

struct Session {
    history: Vec<ChatMessage<'static>>,
    turns_left: usize,
}

fn message(role: &str, text: &str) -> ChatMessage<'static> {
    ChatMessage::new(role, text)
}

fn body(history: &[ChatMessage], max_tokens: usize) -> Bytes {
    Bytes::from(
        json!({
            "model": MODEL,
            "messages": history,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string(),
    )
}

fn shuffle<T>(items: &mut [T], rng: &mut StdRng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
}

/// Prose from the words of the sim's corpus: the built-in tokenizer learned
/// them, so token counts come out like real text's (about one per word),
/// while random word order keeps every customer's text its own.
struct Text<'a> {
    words: Vec<String>,
    tokenizer: &'a Tokenizer,
}

impl<'a> Text<'a> {
    fn new(tokenizer: &'a Tokenizer) -> Text<'a> {
        let mut words: Vec<String> = CORPUS
            .split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect();
        words.sort();
        words.dedup();
        Text { words, tokenizer }
    }

    fn name(&self, rng: &mut StdRng) -> String {
        (0..2)
            .map(|_| capitalize(&self.words[rng.random_range(0..self.words.len())]))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `lead` and then sentences until about `tokens` tokens.
    fn passage(&self, rng: &mut StdRng, lead: String, tokens: usize) -> anyhow::Result<String> {
        let mut count = self.tokenizer.encode(&lead)?.len();
        let mut text = lead;
        while count < tokens {
            let n = rng.random_range(6..=18);
            let mut sentence = capitalize(&self.words[rng.random_range(0..self.words.len())]);
            for _ in 1..n {
                sentence.push(' ');
                sentence.push_str(&self.words[rng.random_range(0..self.words.len())]);
            }
            sentence.push('.');
            // Counted sentence by sentence: close to the whole text's count, and linear.
            count += self.tokenizer.encode(&sentence)?.len() + 1;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&sentence);
        }
        Ok(text)
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            customers: 3,
            sessions: 2,
            turns: 3,
            active_sessions: 2,
            rate: 10.0,
            system_tokens: (200, 300),
            max_tokens: 8,
            seed: 7,
        }
    }

    #[test]
    fn turns_extend_their_session_and_replays_repeat() {
        let tok = Tokenizer::builtin().unwrap();
        let a = build(&shape(), &tok, 16).unwrap();
        let b = build(&shape(), &tok, 16).unwrap();
        assert_eq!(a.len(), 3 * 2 * 3);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.body == y.body && x.at == y.at));
        assert!(a.windows(2).all(|w| w[0].at < w[1].at));
        // Each customer's requests share its system prompt's blocks; customers share
        // only the opening words (the template and "You are the assistant of").
        let mut by_customer: std::collections::HashMap<_, Vec<&Request>> = Default::default();
        for r in &a {
            by_customer.entry(r.hashes[8]).or_default().push(r);
        }
        assert_eq!(by_customer.len(), 3);
        for requests in by_customer.values() {
            assert_eq!(requests.len(), 2 * 3);
            assert!(requests
                .iter()
                .all(|r| r.hashes[..10] == requests[0].hashes[..10]));
        }
        assert!(a.iter().all(|r| (190..1000).contains(&r.tokens.len())));
    }
}
