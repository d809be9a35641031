//! The request that continues a broken stream on another worker, in what its
//! engine understands:
//! - our workers take the token ids and the stream's identity
//!   (`llmgw_resume`), and continue exactly, sampled or greedy;
//! - vLLM and SGLang continue a final assistant message
//!   (`continue_final_message`), llama.cpp's server does so by default; a
//!   text completion's prompt is extended with the text so far.
//!
//! Engines other than ours resume from text, not tokens, and cannot resume a
//! seeded random stream, so a seeded request that samples is not continued
//! there. `max_tokens` shrinks by what was generated.

use bytes::Bytes;
use protocol::resume::Resume;
use serde_json::{json, Value};

use super::transcript::Transcript;
use crate::engine::EngineKind;
use crate::parse::Endpoint;

/// The continuation body for a worker of `kind`, or why there is none.
pub fn continuation(
    original: &Value,
    endpoint: Endpoint,
    transcript: &Transcript,
    kind: EngineKind,
) -> Result<Bytes, &'static str> {
    let mut body = original.clone();
    let object = body.as_object_mut().ok_or("the request is not an object")?;
    if object.get("n").and_then(Value::as_u64).unwrap_or(1) != 1 {
        return Err("an answer with several choices cannot be continued");
    }
    if transcript.beyond_text {
        return Err("an answer with tool calls, reasoning or logprobs cannot be continued");
    }
    let id = transcript.id.clone().ok_or("the stream had no id")?;
    let created = transcript.created.unwrap_or_default();
    match kind {
        EngineKind::Llmgw => {
            let tokens = transcript
                .tokens
                .as_ref()
                // Text without tokens: a worker that does not name them.
                .filter(|t| !t.is_empty() || transcript.text.is_empty())
                .ok_or("an earlier worker did not name its tokens")?;
            let resume = Resume {
                token_ids: tokens.clone(),
                id,
                created,
            };
            object.insert("llmgw_resume".into(), json!(resume));
        }
        EngineKind::Openai => return Err("a generic OpenAI server cannot continue an answer"),
        EngineKind::Vllm | EngineKind::Sglang | EngineKind::Llamacpp => {
            let samples = object
                .get("temperature")
                .and_then(Value::as_f64)
                .is_none_or(|t| t > 0.0);
            if object.get("seed").is_some_and(|s| !s.is_null()) && samples {
                return Err("a seeded sampled answer can be continued only by our workers");
            }
            // What a continuation from text would not reproduce.
            let asks_more =
                |key: &str| object.get(key).is_some_and(|v| !v.is_null() && *v != false);
            if ["tools", "functions", "echo", "logprobs"]
                .into_iter()
                .any(asks_more)
            {
                return Err(
                    "an answer with tools, echo or logprobs can be continued only by our workers",
                );
            }
            let text = transcript.text.as_str();
            match endpoint {
                Endpoint::Chat => {
                    let messages = object
                        .get_mut("messages")
                        .and_then(Value::as_array_mut)
                        .ok_or("the request has no messages")?;
                    messages.push(json!({"role": "assistant", "content": text}));
                    if kind != EngineKind::Llamacpp {
                        object.insert("continue_final_message".into(), true.into());
                        object.insert("add_generation_prompt".into(), false.into());
                    }
                }
                Endpoint::Completion => {
                    let prompt = object
                        .get_mut("prompt")
                        .ok_or("the request has no prompt")?;
                    let Value::String(prompt) = prompt else {
                        return Err("only a single text prompt can be continued as text");
                    };
                    prompt.push_str(text);
                }
            }
            for field in ["max_tokens", "max_completion_tokens"] {
                if let Some(n) = object.get(field).and_then(Value::as_u64) {
                    let left = n.saturating_sub(transcript.generated().into()).max(1);
                    object.insert(field.into(), left.into());
                }
            }
        }
    }
    Ok(serde_json::to_vec(&body)
        .expect("a JSON value serializes")
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        let mut t = Transcript::new(true, 1);
        t.id = Some("c1".into());
        t.created = Some(9);
        t.text = "The sky".into();
        t.tokens = Some(vec![5, 6]);
        t.text_events = 2;
        t
    }

    fn chat() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "max_tokens": 10, "temperature": 0})
    }

    fn body(b: Result<Bytes, &str>) -> Value {
        serde_json::from_slice(&b.unwrap()).unwrap()
    }

    #[test]
    fn our_workers_get_the_tokens_and_the_identity() {
        let b = body(continuation(
            &chat(),
            Endpoint::Chat,
            &transcript(),
            EngineKind::Llmgw,
        ));
        assert_eq!(
            b["llmgw_resume"],
            json!({"token_ids": [5, 6], "id": "c1", "created": 9})
        );
        assert_eq!(b["max_tokens"], 10);
        let mut unnamed = transcript();
        unnamed.tokens = None;
        assert!(continuation(&chat(), Endpoint::Chat, &unnamed, EngineKind::Llmgw).is_err());
        unnamed.tokens = Some(Vec::new());
        assert!(continuation(&chat(), Endpoint::Chat, &unnamed, EngineKind::Llmgw).is_err());
    }

    #[test]
    fn other_engines_continue_the_text() {
        let b = body(continuation(
            &chat(),
            Endpoint::Chat,
            &transcript(),
            EngineKind::Vllm,
        ));
        assert_eq!(
            b["messages"][1],
            json!({"role": "assistant", "content": "The sky"})
        );
        assert_eq!(
            (&b["continue_final_message"], &b["add_generation_prompt"]),
            (&json!(true), &json!(false))
        );
        assert_eq!(b["max_tokens"], 8);
        let b = body(continuation(
            &chat(),
            Endpoint::Chat,
            &transcript(),
            EngineKind::Llamacpp,
        ));
        assert!(b.get("continue_final_message").is_none());
        let completion = json!({"model": "m", "prompt": "Once,", "stream": true});
        let b = body(continuation(
            &completion,
            Endpoint::Completion,
            &transcript(),
            EngineKind::Sglang,
        ));
        assert_eq!(b["prompt"], "Once,The sky");
    }

    #[test]
    fn what_cannot_be_continued_faithfully_is_refused() {
        let mut seeded = chat();
        seeded["seed"] = json!(3);
        seeded["temperature"] = json!(0.7);
        let t = transcript();
        assert!(continuation(&seeded, Endpoint::Chat, &t, EngineKind::Vllm).is_err());
        // Our workers resume the random stream itself.
        assert!(continuation(&seeded, Endpoint::Chat, &t, EngineKind::Llmgw).is_ok());
        seeded["temperature"] = json!(0);
        assert!(continuation(&seeded, Endpoint::Chat, &t, EngineKind::Vllm).is_ok());
        assert!(continuation(&chat(), Endpoint::Chat, &t, EngineKind::Openai).is_err());
        let mut two = chat();
        two["n"] = json!(2);
        assert!(continuation(&two, Endpoint::Chat, &t, EngineKind::Llmgw).is_err());
        let batch = json!({"model": "m", "prompt": ["a", "b"]});
        assert!(continuation(&batch, Endpoint::Completion, &t, EngineKind::Vllm).is_err());
        let mut tools = chat();
        tools["tools"] = json!([{"type": "function"}]);
        assert!(continuation(&tools, Endpoint::Chat, &t, EngineKind::Sglang).is_err());
        let mut called = transcript();
        called.beyond_text = true;
        assert!(continuation(&chat(), Endpoint::Chat, &called, EngineKind::Llmgw).is_err());
    }
}
