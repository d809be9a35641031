//! Log probabilities in OpenAI's two shapes: chat's `{"content": [{token,
//! logprob, bytes, top_logprobs}]}` and text completions' `{tokens,
//! token_logprobs, top_logprobs, text_offset}`. A token's text is its bytes
//! decoded leniently: a token holding part of a character says so in `bytes`.

use prompt::Tokenizer;
use serde_json::{json, Map, Value};

use crate::scheduler::TokenLogprobs;

/// Chat's `logprobs` of `tokens`.
pub fn chat(tokenizer: &Tokenizer, tokens: &[(u32, TokenLogprobs)]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id);
        json!({
            "token": String::from_utf8_lossy(&bytes),
            "logprob": logprob,
            "bytes": bytes,
        })
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Text completions' `logprobs` of `tokens`, whose text starts `offset`
/// characters into the choice's text; `offset` moves past it.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[(u32, TokenLogprobs)],
    offset: &mut usize,
) -> Value {
    let text = |id: u32| String::from_utf8_lossy(&tokenizer.token_bytes(id)).into_owned();
    let (mut strings, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp) in tokens {
        let token = text(*id);
        offsets.push(*offset);
        *offset += token.chars().count();
        strings.push(token);
        logprobs.push(lp.logprob);
        let top: Map<String, Value> = lp.top.iter().map(|&(t, l)| (text(t), l.into())).collect();
        tops.push(Value::Object(top));
    }
    json!({
        "tokens": strings,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}
