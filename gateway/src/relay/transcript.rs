//! What the client of a stream has been sent, learned event by event as the
//! relay forwards them: enough to continue the same answer elsewhere (its
//! `id`, its text, and from our workers its token ids) and to tell a stream
//! that ended from one that broke.
//!
//! After a continuation on an engine that cannot take the stream's identity
//! (every engine but ours), its events are rewritten on the way: the
//! stream's `id` and `created`, no second role chunk, and usage counting the
//! prompt once and every generated token.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use protocol::resume::parse_tokens_comment;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::sse;

#[derive(Debug, Default)]
pub struct Transcript {
    pub id: Option<String>,
    pub created: Option<u64>,
    /// The answer's text so far.
    pub text: String,
    /// The token ids the text came from, while every worker so far named them.
    pub tokens: Option<Vec<u32>>,
    /// Events that carried text: a token count where ids are unknown, as
    /// engines send one token per event.
    pub text_events: u32,
    /// The stream said how it finished (every choice of it).
    pub finished: bool,
    /// Choices the request asked for (`n`), and how many said how they finished.
    choices: u32,
    finishes: u32,
    /// The answer carries more than text (tool calls, reasoning, logprobs),
    /// which a continuation from its text would lose.
    pub beyond_text: bool,
    /// `data: [DONE]` arrived: nothing is missing.
    pub done: bool,
    /// The usage the stream reported (asked by `stream_options.include_usage`).
    pub usage: Option<Reported>,
}

/// Usage as an engine reports it: prompt, cached and completion tokens.
pub type Reported = (u64, Option<u64>, u64);

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl Usage {
    fn reported(&self) -> Reported {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens);
        (self.prompt_tokens, cached, self.completion_tokens)
    }
}

/// The usage of a whole (not streamed) answer.
pub fn usage_of(body: &[u8]) -> Option<Reported> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Option<Usage>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer.usage.map(|u| u.reported())
}

/// What one event turned out to be.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Forward these bytes (empty: nothing to forward).
    Forward(Bytes),
    /// The upstream reported an error: the answer broke here.
    Error,
}

/// How a continuation's events are made to read as the first stream's.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub id: String,
    pub created: u64,
    /// Tokens generated before the continuation: its prompt held them, its
    /// usage did not.
    pub before: u32,
    /// What of the text so far the continuation repeats before going on
    /// (llama.cpp's server answers a prefilled message whole).
    pub echo: String,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    /// Text completions' field.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    logprobs: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
    #[serde(default)]
    reasoning_content: Option<IgnoredAny>,
}

impl Transcript {
    /// A transcript of an answer of `choices` choices that learns token ids
    /// when the worker names them.
    pub fn new(with_tokens: bool, choices: u32) -> Self {
        Transcript {
            tokens: with_tokens.then(Vec::new),
            choices: choices.max(1),
            ..Transcript::default()
        }
    }

    /// Whether the answer is whole: nothing to continue.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Tokens generated so far, exact where ids are known.
    pub fn generated(&self) -> u32 {
        match &self.tokens {
            Some(ids) => ids.len() as u32,
            None => self.text_events,
        }
    }

    /// Learns from one whole event and says what to forward of it.
    pub fn see(&mut self, event: Bytes, rewrite: Option<&mut Rewrite>) -> Seen {
        let mut comment = None;
        for line in sse::lines(&event) {
            if let Some(ids) = parse_tokens_comment(line) {
                comment = Some((line.as_ptr() as usize - event.as_ptr() as usize, ids));
            }
        }
        let data = sse::data(&event);
        let json = match data.as_deref() {
            Some(b"[DONE]") => {
                self.done = true;
                None
            }
            Some(json) => Some(json),
            None => None,
        };
        // Not ours to judge when it is not a chunk: the client gets it as sent.
        let Some(chunk) = json.and_then(|j| serde_json::from_slice::<Chunk>(j).ok()) else {
            return Seen::Forward(without_comment(event, comment.map(|(at, _)| at)));
        };
        if chunk.error.is_some() {
            return Seen::Error;
        }
        if let (Some((_, ids)), Some(tokens)) = (&comment, &mut self.tokens) {
            tokens.extend(ids);
        }
        let Some(rewrite) = rewrite else {
            self.learn(&chunk);
            return Seen::Forward(without_comment(event, comment.map(|(at, _)| at)));
        };
        let Some(out) = json.and_then(|j| rewrite.apply(j)) else {
            return Seen::Forward(Bytes::new());
        };
        if let Some(chunk) = sse::data(&out)
            .as_deref()
            .and_then(|j| serde_json::from_slice::<Chunk>(j).ok())
        {
            self.learn(&chunk);
        }
        Seen::Forward(out)
    }

    fn learn(&mut self, chunk: &Chunk<'_>) {
        if self.id.is_none() {
            self.id = chunk.id.as_deref().map(str::to_string);
            self.created = chunk.created;
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.reported());
        }
        // Only an answer of one choice is continued (`resume` refuses
        // others), so choice 0 is the text to continue; every choice counts.
        for choice in &chunk.choices {
            let more = choice.delta.as_ref().is_some_and(|d| {
                d.tool_calls.is_some() || d.function_call.is_some() || d.reasoning_content.is_some()
            });
            self.beyond_text |= more || choice.logprobs.is_some();
            let text = choice
                .delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .or(choice.text.as_deref())
                .unwrap_or_default();
            if !text.is_empty() {
                if choice.index == 0 {
                    self.text.push_str(text);
                }
                self.text_events += 1;
            }
            if choice.finish_reason.is_some() {
                self.finishes += 1;
            }
        }
        self.finished = self.finishes >= self.choices.max(1);
    }
}

/// `event` without the token comment starting at byte `at`.
fn without_comment(event: Bytes, at: Option<usize>) -> Bytes {
    let Some(at) = at else {
        return event;
    };
    let end = event[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(event.len(), |i| at + i + 1);
    if at == 0 {
        return event.slice(end..);
    }
    let mut out = BytesMut::with_capacity(event.len() - (end - at));
    out.put_slice(&event[..at]);
    out.put_slice(&event[end..]);
    out.freeze()
}

impl Rewrite {
    /// Cuts from `content` what it repeats of the text the client has.
    fn skip_echo(&mut self, content: &mut String) {
        if self.echo.is_empty() {
            return;
        }
        if let Some(rest) = content.strip_prefix(self.echo.as_str()) {
            *content = rest.to_string();
            self.echo.clear();
        } else if let Some(rest) = self.echo.strip_prefix(content.as_str()) {
            self.echo = rest.to_string();
            content.clear();
        } else {
            // Not an echo after all: pass it on as it is.
            self.echo.clear();
        }
    }

    /// The continuation's event as the client's stream goes on; `None` for
    /// a chunk that only opens the assistant's turn again.
    fn apply(&mut self, json: &[u8]) -> Option<Bytes> {
        let mut chunk: Value = serde_json::from_slice(json).ok()?;
        let object = chunk.as_object_mut()?;
        object.insert("id".into(), self.id.clone().into());
        object.insert("created".into(), self.created.into());
        if let Some(choice) = object
            .get_mut("choices")
            .and_then(|c| c.get_mut(0))
            .and_then(Value::as_object_mut)
        {
            let finishes = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                delta.remove("role");
                if let Some(Value::String(content)) = delta.get_mut("content") {
                    self.skip_echo(content);
                }
                let empty = delta
                    .get("content")
                    .is_none_or(|c| c.is_null() || c.as_str().is_some_and(str::is_empty));
                if empty && delta.len() <= 1 && !finishes {
                    return None;
                }
            }
        }
        if let Some(usage) = object.get_mut("usage").and_then(Value::as_object_mut) {
            let before = u64::from(self.before);
            let get = |u: &serde_json::Map<String, Value>, k: &str| {
                u.get(k).and_then(Value::as_u64).unwrap_or(0)
            };
            let (prompt, completion) =
                (get(usage, "prompt_tokens"), get(usage, "completion_tokens"));
            usage.insert("prompt_tokens".into(), prompt.saturating_sub(before).into());
            usage.insert("completion_tokens".into(), (completion + before).into());
        }
        if let Some(Value::String(text)) = object
            .get_mut("choices")
            .and_then(|c| c.get_mut(0))
            .and_then(|c| c.get_mut("text"))
        {
            self.skip_echo(text);
        }
        let mut out = b"data: ".to_vec();
        serde_json::to_writer(&mut out, &chunk).ok()?;
        out.extend_from_slice(b"\n\n");
        Some(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn learns_identity_text_tokens_and_the_end() {
        let mut t = Transcript::new(true, 1);
        let opening = ": tokens 5 6\ndata: {\"id\":\"c1\",\"created\":9,\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        let Seen::Forward(out) = t.see(event(opening), None) else {
            panic!()
        };
        assert!(out.starts_with(b"data: {") && !out.windows(6).any(|w| w == b"tokens"));
        t.see(
            event("data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi \\\"you\\\"\"}}]}\n\n"),
            None,
        );
        t.see(
            event("data: {\"id\":\"c1\",\"choices\":[{\"text\":\"!\",\"finish_reason\":\"stop\"}]}\n\n"),
            None,
        );
        assert_eq!((t.id.as_deref(), t.created), (Some("c1"), Some(9)));
        assert_eq!(t.text, "Hi \"you\"!");
        assert_eq!(t.tokens, Some(vec![5, 6]));
        assert_eq!(
            (t.generated(), t.finished, t.is_complete()),
            (2, true, false)
        );
        assert_eq!(
            t.see(event("data: [DONE]\n\n"), None),
            Seen::Forward(event("data: [DONE]\n\n"))
        );
        assert!(t.is_complete());
    }

    #[test]
    fn an_answer_of_several_choices_finishes_with_its_last() {
        let mut t = Transcript::new(false, 2);
        let chunk = |i: u32, text: &str, finish: &str| {
            event(&format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":{finish}}}]}}\n\n"
            ))
        };
        t.see(chunk(1, "b", "null"), None);
        t.see(chunk(0, "a", "null"), None);
        t.see(chunk(1, "", "\"stop\""), None);
        assert!(!t.finished, "one of two choices finished");
        t.see(chunk(0, "", "\"length\""), None);
        assert!(t.finished);
        assert_eq!((t.text.as_str(), t.text_events), ("a", 2));
    }

    #[test]
    fn an_error_event_breaks_the_answer_and_is_not_forwarded() {
        let mut t = Transcript::new(false, 1);
        let seen = t.see(
            event("data: {\"error\":{\"message\":\"engine died\"}}\n\n"),
            None,
        );
        assert_eq!(seen, Seen::Error);
        // Events that are not JSON pass as they are.
        let odd = event("event: ping\ndata: hello\n\n");
        assert_eq!(t.see(odd.clone(), None), Seen::Forward(odd));
    }

    #[test]
    fn an_answer_with_more_than_text_is_marked() {
        let mut t = Transcript::new(false, 1);
        t.see(event("data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"},\"logprobs\":null}]}\n\n"), None);
        assert!(!t.beyond_text);
        t.see(event("data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n"), None);
        assert!(t.beyond_text);
    }

    #[test]
    fn a_comment_after_the_first_line_is_cut_out() {
        let out = without_comment(event("id: 1\n: tokens 3\ndata: x\n\n"), Some(6));
        assert_eq!(out, event("id: 1\ndata: x\n\n"));
    }

    #[test]
    fn a_continuation_reads_as_the_first_stream() {
        let mut rewrite = Rewrite {
            id: "c1".into(),
            created: 9,
            before: 4,
            echo: String::new(),
        };
        let mut t = Transcript::new(false, 1);
        let role = "data: {\"id\":\"x\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
        assert_eq!(
            t.see(event(role), Some(&mut rewrite)),
            Seen::Forward(Bytes::new())
        );
        let text = "data: {\"id\":\"x\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"on\"},\"finish_reason\":null}]}\n\n";
        let Seen::Forward(out) = t.see(event(text), Some(&mut rewrite)) else {
            panic!()
        };
        let json: Value = serde_json::from_slice(&sse::data(&out).unwrap()).unwrap();
        assert_eq!(json["id"], "c1");
        assert_eq!(json["created"], 9);
        assert_eq!(
            json["choices"][0]["delta"],
            serde_json::json!({"content": "on"})
        );
        let usage = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":3,\"total_tokens\":17}}\n\n";
        let Seen::Forward(out) = t.see(event(usage), Some(&mut rewrite)) else {
            panic!()
        };
        let json: Value = serde_json::from_slice(&sse::data(&out).unwrap()).unwrap();
        assert_eq!(
            json["usage"],
            serde_json::json!({"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17})
        );
    }

    #[test]
    fn an_echo_of_the_text_so_far_is_cut() {
        let mut rewrite = Rewrite {
            id: "c1".into(),
            created: 9,
            before: 2,
            echo: "The sky is".into(),
        };
        let mut t = Transcript::new(false, 1);
        let mut text = String::new();
        for piece in ["The sky", " is blue", " today"] {
            let event = format!(
                "data: {}\n\n",
                serde_json::json!({"id": "x", "choices": [{"delta": {"content": piece}}]})
            );
            if let Seen::Forward(out) = t.see(event.into(), Some(&mut rewrite)) {
                if let Some(data) = sse::data(&out) {
                    let json: Value = serde_json::from_slice(&data).unwrap();
                    text.push_str(json["choices"][0]["delta"]["content"].as_str().unwrap());
                }
            }
        }
        assert_eq!(text, " blue today");
        assert_eq!(t.text, " blue today");
    }
}
