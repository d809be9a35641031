//! Log probabilities in OpenAI's two shapes: chat's `{"content": [{token,
//! logprob, bytes, top_logprobs}]}` and text completions' `{tokens,
//! token_logprobs, top_logprobs, text_offset}`. A token's text is its bytes
//! decoded leniently: a token holding part of a character says so in `bytes`.

use prompt::Tokenizer;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::scheduler::TokenLogprobs;

#[derive(Serialize)]
struct ChatLogprobs {
    content: Vec<ChatToken>,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct ChatToken {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<ChatToken>>,
}

/// Chat's `logprobs` of `tokens`.
pub fn chat(tokenizer: &Tokenizer, tokens: &[(u32, TokenLogprobs)]) -> Box<RawValue> {
    let entry = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id);
        ChatToken {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob,
            bytes,
            top_logprobs: None,
        }
    };
    let content = tokens
        .iter()
        .map(|(id, lp)| ChatToken {
            top_logprobs: Some(lp.top.iter().map(|&(t, l)| entry(t, l)).collect()),
            ..entry(*id, lp.logprob)
        })
        .collect();
    raw(&ChatLogprobs {
        content,
        refusal: None,
    })
}

#[derive(Serialize)]
struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Ordered>,
    text_offset: Vec<usize>,
}

/// A JSON object whose keys keep their order (most likely first).
struct Ordered(Vec<(String, f32)>);

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// Where each token's text starts in a choice's text, in characters: bytes
/// of a character split across tokens count once it is whole.
#[derive(Debug, Default)]
pub struct TextOffsets {
    chars: usize,
    /// Bytes of a character not yet whole.
    partial: Vec<u8>,
}

impl TextOffsets {
    /// The offset of a token of `bytes`, moving past it.
    fn next(&mut self, bytes: &[u8]) -> usize {
        let at = self.chars;
        self.partial.extend_from_slice(bytes);
        let whole = match std::str::from_utf8(&self.partial) {
            Ok(text) => text.len(),
            // Bytes that can never be a character are counted as one each.
            Err(e) if e.error_len().is_some() => self.partial.len(),
            Err(e) => e.valid_up_to(),
        };
        self.chars += String::from_utf8_lossy(&self.partial[..whole])
            .chars()
            .count();
        self.partial.drain(..whole);
        at
    }
}

/// Text completions' `logprobs` of `tokens`, which follow the text `offsets` has seen.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[(u32, TokenLogprobs)],
    offsets: &mut TextOffsets,
) -> Box<RawValue> {
    let text = |id: u32| String::from_utf8_lossy(&tokenizer.token_bytes(id)).into_owned();
    let mut out = CompletionLogprobs {
        tokens: Vec::new(),
        token_logprobs: Vec::new(),
        top_logprobs: Vec::new(),
        text_offset: Vec::new(),
    };
    for (id, lp) in tokens {
        out.text_offset
            .push(offsets.next(&tokenizer.token_bytes(*id)));
        out.tokens.push(text(*id));
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs
            .push(Ordered(lp.top.iter().map(|&(t, l)| (text(t), l)).collect()));
    }
    raw(&out)
}

fn raw(value: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("log probabilities serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_characters_once_whole() {
        let mut o = TextOffsets::default();
        let euro = "€".as_bytes();
        assert_eq!(o.next(b"a "), 0);
        assert_eq!(o.next(&euro[..1]), 2);
        assert_eq!(o.next(&euro[1..]), 2);
        assert_eq!(o.next(b"b"), 3);
        assert_eq!(o.next(b"c"), 4);
    }

    #[test]
    fn completion_alternatives_stay_most_likely_first() {
        let tok = Tokenizer::builtin().unwrap();
        let ids = tok.encode("zebra apple").unwrap();
        let lp = TokenLogprobs {
            logprob: -0.1,
            top: vec![(ids[1], -0.1), (ids[0], -2.5)],
        };
        let json = completion(&tok, &[(ids[0], lp)], &mut TextOffsets::default());
        let first = json.get().find(&text_of(&tok, ids[1])).unwrap();
        let second = json.get().rfind(&text_of(&tok, ids[0])).unwrap();
        assert!(first < second, "{json}");
    }

    fn text_of(tok: &Tokenizer, id: u32) -> String {
        format!("\"{}\":", String::from_utf8_lossy(&tok.token_bytes(id)))
    }
}
