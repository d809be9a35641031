//! The OpenAI wire format: chat and text completion requests, their responses
//! and stream chunks, usage, and the model list. Unknown request fields are
//! ignored, as OpenAI-compatible servers do, so any client's extras pass.
//! A request's model, roles, message texts and text prompt borrow from the
//! body they are parsed from where JSON escapes allow: prompts are the bulk
//! of a body, and the gateway forwards the body itself, so copying them
//! would only cost. The rarer forms (content parts, lists of prompts) own
//! their strings.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;

/// The most stop sequences a request may carry (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// The most choices (`n`) a request may ask for (OpenAI's limit).
pub const MAX_CHOICES: u32 = 128;

/// The most alternatives `top_logprobs` (chat) or `logprobs` (completions)
/// may ask for: OpenAI's for chat, and vLLM's default for both.
pub const MAX_TOP_LOGPROBS: u32 = 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// The newer name of `max_tokens`; wins when both are set.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Return each generated token's log probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// With `logprobs`, also this many most likely tokens' at each position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub prompt: Prompt<'a>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Log probabilities of each token and of this many most likely ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
}

/// Fields chat and text completions share.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Not in OpenAI's API, but vLLM's and SGLang's; clients of those send it.
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias added to its logit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    #[serde(default)]
    pub user: Option<String>,
    /// vLLM's: requests with different salts never share cached prefix
    /// blocks (tenant isolation). The gateway hashes salted prompts apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
    /// The gateway continuing a stream that broke on another worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llmgw_resume: Option<crate::resume::Resume>,
}

impl SamplingFields {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.is_stream()
            && self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage)
    }

    fn validate(&self) -> Result<(), ApiError> {
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("temperature must be between 0 and 2, got {t}"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid(
                    "top_p",
                    format!("top_p must be in (0, 1], got {p}"),
                ));
            }
        }
        if let Some(n) = self.n.filter(|n| !(1..=MAX_CHOICES).contains(n)) {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_CHOICES}, got {n}"),
            ));
        }
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = value.filter(|v| !(-2.0..=2.0).contains(v)) {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be between -2 and 2, got {v}"),
                ));
            }
        }
        for (token, bias) in self.logit_bias.iter().flatten() {
            if token.parse::<u32>().is_err() {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias keys must be token ids, got {token:?}"),
                ));
            }
            if !(-100.0..=100.0).contains(bias) {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias values must be between -100 and 100, got {bias}"),
                ));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        if let Some(stop) = &self.stop {
            let stops = stop.to_vec();
            if stops.len() > MAX_STOP_SEQUENCES {
                return Err(ApiError::invalid(
                    "stop",
                    format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
                ));
            }
            if stops.iter().any(String::is_empty) {
                return Err(ApiError::invalid(
                    "stop",
                    "stop sequences must not be empty",
                ));
            }
        }
        if self.llmgw_resume.is_some() && !self.is_stream() {
            return Err(ApiError::invalid(
                "llmgw_resume",
                "llmgw_resume continues a stream; it needs stream set to true",
            ));
        }
        if self.stream_options.is_some() && !self.is_stream() {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(default, borrow)]
    pub content: Option<MessageContent<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A message's content: a string, or a list of typed parts of which we read the text ones.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum MessageContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<ContentPart<'a>>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPart<'a> {
    #[serde(borrow)]
    pub r#type: Cow<'a, str>,
    #[serde(default)]
    pub text: Option<String>,
}

/// By the JSON type, not by trying each variant in turn as `untagged` does:
/// a list of parts is read once rather than buffered first, and a wrong
/// type gets an error that says what was expected.
impl<'de: 'a, 'a> Deserialize<'de> for MessageContent<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Content<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for Content<'a> {
            type Value = MessageContent<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Cow::Owned(text.to_string())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Cow::Owned(text)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, parts: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(parts))
                    .map(MessageContent::Parts)
            }
        }

        deserializer.deserialize_any(Content(std::marker::PhantomData))
    }
}

impl ChatMessage<'_> {
    /// A message of `text` from `role`.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> ChatMessage<'static> {
        ChatMessage {
            role: Cow::Owned(role.into()),
            content: Some(MessageContent::Text(Cow::Owned(text.into()))),
            name: None,
        }
    }

    /// The message's text, parts joined; `None` if a part is not text.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match &self.content {
            None => Some(Cow::Borrowed("")),
            Some(MessageContent::Text(text)) => Some(Cow::Borrowed(text)),
            Some(MessageContent::Parts(parts)) => {
                if parts.iter().any(|p| p.r#type != "text") {
                    return None;
                }
                let mut texts = parts.iter().map(|p| p.text.as_deref().unwrap_or_default());
                Some(match parts.as_slice() {
                    [_] => Cow::Borrowed(texts.next().unwrap_or_default()),
                    _ => Cow::Owned(texts.collect()),
                })
            }
        }
    }

    /// The message with its texts copied out of the body it was parsed from.
    pub fn into_owned(self) -> ChatMessage<'static> {
        ChatMessage {
            role: Cow::Owned(self.role.into_owned()),
            content: self.content.map(|content| match content {
                MessageContent::Text(text) => MessageContent::Text(Cow::Owned(text.into_owned())),
                MessageContent::Parts(parts) => MessageContent::Parts(
                    parts
                        .into_iter()
                        .map(|p| ContentPart {
                            r#type: Cow::Owned(p.r#type.into_owned()),
                            text: p.text,
                        })
                        .collect(),
                ),
            }),
            name: self.name,
        }
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatCompletionRequest<'_> {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_model(&self.model)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if !ROLES.contains(&&*m.role) {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "unknown role `{}`; expected one of {}",
                        m.role,
                        ROLES.join(", ")
                    ),
                ));
            }
            if m.text().is_none() {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].content"),
                    "only text content parts are supported",
                ));
            }
        }
        if self.max_completion_tokens == Some(0) {
            return Err(ApiError::invalid(
                "max_completion_tokens",
                "max_completion_tokens must be at least 1",
            ));
        }
        if let Some(n) = self.top_logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
                ));
            }
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs set to true",
                ));
            }
        }
        self.sampling.validate()
    }

    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.sampling.max_tokens)
    }
}

/// `prompt`: a string, a one-string list, or token ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// A single prompt, as text or as token ids.
pub enum PromptInput<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

impl CompletionRequest<'_> {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_model(&self.model)?;
        self.prompt()?;
        if let Some(n) = self.logprobs.filter(|n| *n > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        self.sampling.validate()
    }

    /// The one prompt of the request; batched prompts are refused.
    pub fn prompt(&self) -> Result<PromptInput<'_>, ApiError> {
        self.prompt.single()
    }
}

impl Prompt<'_> {
    /// The prompt with its text copied out of the body it was parsed from.
    pub fn into_owned(self) -> Prompt<'static> {
        match self {
            Prompt::Text(text) => Prompt::Text(Cow::Owned(text.into_owned())),
            Prompt::Texts(texts) => Prompt::Texts(texts),
            Prompt::Tokens(ids) => Prompt::Tokens(ids),
            Prompt::TokenLists(lists) => Prompt::TokenLists(lists),
        }
    }

    /// The one prompt; batched prompts are refused.
    pub fn single(&self) -> Result<PromptInput<'_>, ApiError> {
        let batched = || {
            ApiError::invalid(
                "prompt",
                "batched prompts are not supported; send one prompt per request",
            )
        };
        match self {
            Prompt::Text(s) => Ok(PromptInput::Text(s)),
            Prompt::Texts(v) if v.len() == 1 => Ok(PromptInput::Text(&v[0])),
            Prompt::Tokens(t) if !t.is_empty() => Ok(PromptInput::Tokens(t)),
            Prompt::TokenLists(v) if v.len() == 1 && !v[0].is_empty() => {
                Ok(PromptInput::Tokens(&v[0]))
            }
            Prompt::Tokens(_) => Err(ApiError::invalid("prompt", "prompt must not be empty")),
            _ => Err(batched()),
        }
    }
}

fn validate_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "model must not be empty"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: Option<String>,
    /// As the engine wrote it (key order included: completions' `top_logprobs` is most likely first).
    pub logprobs: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// `null` on every chunk but the last when usage was asked for; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    /// As the engine wrote it (key order included: completions' `top_logprobs` is most likely first).
    pub logprobs: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<String>,
    /// As the engine wrote it (key order included: completions' `top_logprobs` is most likely first).
    pub logprobs: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelList {
    pub fn new(ids: impl IntoIterator<Item = String>, owned_by: &str) -> Self {
        ModelList {
            object: "list".to_string(),
            data: ids
                .into_iter()
                .map(|id| ModelCard {
                    id,
                    object: "model".to_string(),
                    created: 0,
                    owned_by: owned_by.to_string(),
                })
                .collect(),
        }
    }
}

/// The SSE line that ends an OpenAI stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// One SSE event carrying `value` as JSON.
pub fn sse_event<T: Serialize>(value: &T) -> String {
    format!(
        "data: {}\n\n",
        serde_json::to_string(value).expect("wire types serialize")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Result<ChatCompletionRequest<'_>, ApiError> {
        let r: ChatCompletionRequest =
            serde_json::from_str(json).map_err(|e| ApiError::invalid("body", e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    #[test]
    fn accepts_openai_sdk_extras() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"frequency_penalty":0,"logit_bias":{}}"#).unwrap();
        assert_eq!(r.messages[0].text().unwrap(), "hi");
    }

    #[test]
    fn text_parts_are_joined() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_eq!(r.messages[0].text().unwrap(), "ab");
    }

    #[test]
    fn rejects_bad_fields() {
        for (body, param) in [
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":129}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"a":1}}"#,
                "logit_bias",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"7":101}}"#,
                "logit_bias",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                "stop",
            ),
            (
                r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
                "model",
            ),
        ] {
            assert_eq!(
                chat(body).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
        assert!(chat(r#"{"messages":[]}"#).is_err());
        let fine = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":3,
            "logprobs":true,"top_logprobs":20,"frequency_penalty":-2,"logit_bias":{"7":-100}}"#;
        assert!(chat(fine).is_ok());
    }

    #[test]
    fn texts_borrow_from_the_body_unless_escaped() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"plain"},
            {"role":"user","content":"line\nbreak"},
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
        let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        assert!(matches!(r.model, Cow::Borrowed("m")));
        assert!(matches!(r.messages[0].role, Cow::Borrowed("system")));
        assert!(matches!(r.messages[0].text(), Some(Cow::Borrowed("plain"))));
        assert_eq!(r.messages[1].text().unwrap(), "line\nbreak");
        assert_eq!(r.messages[2].text().unwrap(), "ab");
        let owned = r.messages[1].clone().into_owned();
        assert_eq!(owned.text().unwrap(), "line\nbreak");
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":"p"}"#).unwrap();
        assert!(matches!(r.prompt, Prompt::Text(Cow::Borrowed("p"))));

        let wrong = r#"{"model":"m","messages":[{"role":"user","content":5}]}"#;
        let e = serde_json::from_str::<ChatCompletionRequest>(wrong).unwrap_err();
        assert!(
            e.to_string()
                .contains("a string or a list of content parts"),
            "{e}"
        );
    }

    #[test]
    fn completion_prompt_forms() {
        let ok = |p: &str| {
            let body = format!(r#"{{"model":"m","prompt":{p}}}"#);
            let r: CompletionRequest = serde_json::from_str(&body).unwrap();
            r.validate()
        };
        assert!(ok(r#""hello""#).is_ok());
        assert!(ok(r#"["hello"]"#).is_ok());
        assert!(ok(r#"[1,2,3]"#).is_ok());
        assert!(ok(r#"["a","b"]"#).is_err());
        assert!(ok(r#"[]"#).is_err());
    }

    #[test]
    fn usage_totals() {
        let u = Usage::new(10, 5, 8);
        assert_eq!(u.total_tokens, 15);
        let v = serde_json::to_value(u).unwrap();
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 8);
    }
}
